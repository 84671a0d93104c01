"""The demo's client side, written with the project's Python client (`dskd_client`) as a user would.

Uploads the toy world's training data (the student's small instruction set) and its dev set, submits a DSKD job
(models by path under the service's models root) and an SFT job with the same budget for contrast, follows the
DSKD job live, downloads both students (resumable, sha256-checked), loads them with plain `transformers` and puts
them next to the teacher on a fixed sample of held-out test prompts: every answer with its Rouge-L
(`dskd_core.evaluate`), the means, and the distilled student's ratio to the teacher. Used by `make demo`
(scripts/demo.sh).
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import yaml

from dskd_client import ApiError, Client, Event


def wait_ready(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit("the service did not become ready in time (see the server log above)")


def job_spec(
    world: Path, dataset_id: str, dev_dataset_id: str, steps: int | None, method: str | None = None
) -> dict[str, Any]:
    """The world's demo spec (its method and budget, chosen on dev), pointed at the uploaded training and dev
    datasets and the models under the models root; `method` swaps the method and keeps the budget."""
    demo = yaml.safe_load((world / "demo.yaml").read_text())
    training = dict(demo.get("training", {}))
    if steps is not None:
        training["max_steps"] = steps
    total = int(training.get("max_steps") or 1)
    training.update(eval_interval=max(total // 3, 1), checkpoint_interval=max(total // 3, 1))
    distill = dict(demo.get("distill", {"method": "dskd"}))
    if method is not None:
        distill = {"method": method}
    spec = {
        "name": f"demo: toy teacher → student with {distill['method']}",
        "teacher": {"name_or_path": "teacher"},
        "student": {"name_or_path": "student"},
        "data": {
            "dataset_id": dataset_id,
            "dev_dataset_id": dev_dataset_id,
            "prompt_template": demo["data"].get("prompt_template", "none"),
            "dev_max_examples": 200,
        },
        "distill": distill,
        # The benchmark's protocol (demo.yaml): dev Rouge-L every epoch, the best epoch's checkpoint exported.
        "evaluation": dict(demo.get("evaluation", {})),
        "training": training,
    }
    if distill["method"] == "sft":
        del spec["teacher"]  # SFT learns from the references only: no teacher to load
    return spec


def show(event: Event) -> None:
    payload = event.payload
    if event.type == "progress":
        m, eta = payload.get("metrics", {}), payload.get("eta_seconds")
        print(
            f"  step {payload['step']:>4}/{payload['total_steps']}  loss {m.get('loss', float('nan')):.3f}"
            f"  ce {m.get('ce', float('nan')):.3f}  kd {m.get('kd', float('nan')):.3f}"
            + (f"  eta {eta:.0f}s" if eta is not None else ""),
            flush=True,
        )
    elif event.type == "eval":
        # Greedy decoding: the spread over decoding seeds (`*_std`) is always 0, left out.
        metrics = {k: v for k, v in payload.get("metrics", {}).items() if not k.endswith("_std")}
        scores = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        print(f"  eval @ step {payload.get('step')}: {scores}", flush=True)
    elif event.type == "status":
        error = payload.get("error")
        print(f"  status: {payload['status']}" + (f" — {error}" if error else ""), flush=True)
    elif payload.get("message"):
        print(f"  {payload['message']}", flush=True)


def download_student(client: Client, job_id: str, out: Path) -> Path:
    """The job's student.tar, downloaded and unpacked; returns the directory AutoModelForCausalLM loads."""
    out.mkdir(parents=True, exist_ok=True)
    tar_path = client.artifacts.download(job_id, "student.tar", out)
    entry = client.artifacts.get(job_id, "student.tar")
    print(f"  {tar_path} ({entry.size_bytes / 1e6:.1f} MB, sha256 {entry.sha256[:12]}… verified)")
    export_dir = out / "student"
    with tarfile.open(tar_path) as tar:
        tar.extractall(export_dir, filter="data")
    return next(p.parent for p in export_dir.rglob("config.json"))


def compare(models: dict[str, Path], world: Path, n: int, target: float = 0.8) -> float:
    """Greedy answers of every model on the world's held-out test split, with Rouge-L.

    Prints, for a fixed task-balanced sample of `n` test prompts, each prompt with each model's answer and score,
    then the means on that sample and on the whole test split, and the first student's ratio to the teacher (the
    first entry of `models`) on both. Returns the ratio on the sample (the demo's target).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # Quiet loading bars, and transformers' padding warning, which fires when a finished row of a batch is padded
    # during greedy decoding (batched answers equal one-by-one ones: tests/core/test_evaluate.py).
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    from dskd_core.evaluate import evaluate_model
    from dskd_core.spec import EvalSpec
    from dskd_core.toy.tasks import balanced_sample, read_jsonl

    template = yaml.safe_load((world / "demo.yaml").read_text())["data"].get("prompt_template", "{prompt}")
    test = read_jsonl(world / "test.jsonl")
    # The sample's positions in the test split: each model decodes the split once and the sample is read from it.
    position = {id(r): i for i, r in enumerate(test)}
    sample_at = [position[id(r)] for r in balanced_sample(test, n)]  # grouped by task
    rendered = [{**r, "prompt": template.format(prompt=r["prompt"])} for r in test]
    settings = EvalSpec(do_sample=False, max_new_tokens=48, no_repeat_ngram_size=0, batch_size=32)
    scores: dict[str, list[float]] = {}
    answers: dict[str, list[str]] = {}
    for name, path in models.items():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        result = evaluate_model(model, tokenizer, rendered, settings=settings, keep_generations=True)
        generations = result.generations or []
        scores[name] = [g.rougeL for g in generations]
        answers[name] = [g.prediction.strip() for g in generations]
    width = max(len(name) for name in models)
    for i in sample_at:
        print(f"\n  [{test[i]['task']}] {test[i]['prompt']!r}")
        for name in models:
            print(f"    {name:<{width}}  {scores[name][i]:5.1f}  {answers[name][i]!r}")
    teacher, student = list(models)[:2]

    def means(indices: list[int]) -> dict[str, float]:
        return {name: sum(scores[name][i] for i in indices) / len(indices) for name in models}

    def ratio(m: dict[str, float]) -> float:
        return m[student] / m[teacher] if m[teacher] > 0 else float("nan")

    on_sample, on_split = means(sample_at), means(list(range(len(test))))
    print()
    for label, m in (
        (f"the {len(sample_at)} prompts above", on_sample),
        (f"all {len(test)} test prompts", on_split),
    ):
        figures = ", ".join(f"{name} {value:.1f}" for name, value in m.items())
        print(f"== mean Rouge-L on {label} (greedy): {figures}; {student}/teacher {ratio(m):.2f}×")
    verdict = "reaches" if ratio(on_sample) >= target else "does NOT reach"
    print(
        f"== the {student} student scores {ratio(on_sample):.2f}× the teacher's Rouge-L on the sample: it {verdict}"
        f" the demo's target of {target:.1f}×"
    )
    return ratio(on_sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument(
        "--steps", type=int, default=None, help="Optimizer steps (default: the world's demo.yaml)."
    )
    parser.add_argument("--sft", action=argparse.BooleanOptionalAction, default=True, help="Also train SFT.")
    parser.add_argument("--sample", type=int, default=30, help="Held-out test prompts in the comparison.")
    parser.add_argument("--out", type=Path, default=Path("runs/demo-service"))
    args = parser.parse_args()

    wait_ready(args.url)
    students: dict[str, Path] = {}
    try:
        with Client(args.url, args.key, timeout=60) as client:
            print("== uploading the student's training and dev data")
            dataset = client.datasets.upload(args.world / "train.jsonl")
            dev_dataset = client.datasets.upload(args.world / "dev.jsonl")
            print(f"  dataset {dataset.id}: {dataset.row_count} rows")
            print(f"  dev dataset {dev_dataset.id}: {dev_dataset.row_count} rows")

            spec = job_spec(args.world, dataset.id, dev_dataset.id, args.steps)
            method, steps = spec["distill"]["method"], spec["training"]["max_steps"]
            print(f"== submitting a {method} job ({steps} steps, distill: {spec['distill']})")
            job = client.jobs.create(spec)
            print(f"  job {job.id}: {job.status} (dashboard: {args.url}/ui/#/jobs/{job.id})")
            sft_job = None
            if args.sft:
                sft_job = client.jobs.create(
                    job_spec(args.world, dataset.id, dev_dataset.id, args.steps, method="sft")
                )
                print(f"  and an SFT job with the same budget for contrast: {sft_job.id} (queued behind it)")

            print(f"== following the {method} job (Server-Sent Events)")
            job = client.jobs.wait(job.id, on_event=show)
            if job.status != "succeeded":
                sys.exit(f"the job ended {job.status}: {job.error}")

            history = client.jobs.metrics(job.id)
            dev, teacher = history.get("dev_ce", "eval"), history.get("teacher_dev_ce", "eval")
            if dev is not None and dev.values:
                print(
                    f"== student dev loss: {dev.values[0]:.3f} before → {dev.values[-1]:.3f} after"
                    + (f" (teacher {teacher.values[0]:.3f})" if teacher and teacher.values else "")
                )
            print(f"== downloading the {method} student")
            students[method] = download_student(client, job.id, args.out / method)
            if sft_job is not None:
                print("== waiting for the SFT job")
                sft_job = client.jobs.wait(sft_job.id)
                if sft_job.status == "succeeded":
                    students["sft"] = download_student(client, sft_job.id, args.out / "sft")
                else:
                    print(f"  the SFT job ended {sft_job.status}: {sft_job.error} (shown without it)")
    except ApiError as e:
        sys.exit(f"the service refused: {e}")

    print(
        f"== the students load with AutoModelForCausalLM.from_pretrained('{students[method]}'); "
        "next to the teacher on held-out prompts:"
    )
    compare({"teacher": args.world / "teacher", **students}, args.world, args.sample)


if __name__ == "__main__":
    main()
