"""The demo's client side, written with the project's Python client (`dskd_client`) as a user would.

Uploads the toy world's training data, submits a DSKD job (models by path under the service's models root),
follows its progress live, downloads the distilled student (resumable, sha256-checked), loads it with plain
`transformers` and lets it answer a few held-out prompts. Used by `make demo` (scripts/demo.sh).
"""

from __future__ import annotations

import argparse
import json
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


def job_spec(world: Path, dataset_id: str, steps: int) -> dict[str, Any]:
    """The world's demo spec, pointed at the uploaded dataset and the models under the models root."""
    demo = yaml.safe_load((world / "demo.yaml").read_text())
    training = dict(demo.get("training", {}))
    training.update(max_steps=steps, eval_interval=max(steps // 3, 1), checkpoint_interval=max(steps // 3, 1))
    return {
        "name": "demo: toy teacher → student with DSKD",
        "teacher": {"name_or_path": "teacher"},
        "student": {"name_or_path": "student"},
        "data": {
            "dataset_id": dataset_id,
            "prompt_template": demo["data"].get("prompt_template", "none"),
            "dev_ratio": 0.05,
            "dev_max_examples": 200,
        },
        "distill": demo.get("distill", {"method": "dskd"}),
        "training": training,
    }


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
        scores = ", ".join(f"{k} {v:.3f}" for k, v in payload.get("metrics", {}).items())
        print(f"  eval @ step {payload.get('step')}: {scores}", flush=True)
    elif event.type == "status":
        error = payload.get("error")
        print(f"  status: {payload['status']}" + (f" — {error}" if error else ""), flush=True)
    elif payload.get("message"):
        print(f"  {payload['message']}", flush=True)


def answer(export_dir: Path, world: Path, n: int = 3) -> None:
    """Loads the downloaded student with plain transformers and answers held-out prompts greedily."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    model = AutoModelForCausalLM.from_pretrained(export_dir).eval()
    template = yaml.safe_load((world / "demo.yaml").read_text())["data"].get("prompt_template", "{prompt}")
    records = [json.loads(line) for line in (world / "test.jsonl").read_text().splitlines()[:n]]
    for record in records:
        prompt = template.format(prompt=record["prompt"]) if "{prompt}" in template else record["prompt"]
        ids = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        reply = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        print(
            f"\n  prompt:    {record['prompt'].strip()}\n  student:   {reply}\n  reference: {record['response'].strip()}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("runs/demo-service"))
    args = parser.parse_args()

    wait_ready(args.url)
    try:
        with Client(args.url, args.key, timeout=60) as client:
            print("== uploading the training data")
            dataset = client.datasets.upload(args.world / "train.jsonl")
            print(f"  dataset {dataset.id}: {dataset.row_count} rows")

            print(f"== submitting a DSKD job ({args.steps} steps)")
            job = client.jobs.create(job_spec(args.world, dataset.id, args.steps))
            print(f"  job {job.id}: {job.status} (dashboard: {args.url}/ui/#/jobs/{job.id})")

            print("== following its progress (Server-Sent Events)")
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

            print("== downloading the distilled student")
            args.out.mkdir(parents=True, exist_ok=True)
            tar_path = client.artifacts.download(job.id, "student.tar", args.out)
            tar_entry = client.artifacts.get(job.id, "student.tar")
            print(
                f"  {tar_path} ({tar_entry.size_bytes / 1e6:.1f} MB, sha256 {tar_entry.sha256[:12]}… verified)"
            )
    except ApiError as e:
        sys.exit(f"the service refused: {e}")

    export_dir = args.out / "student"
    with tarfile.open(tar_path) as tar:
        tar.extractall(export_dir, filter="data")
    root = next(p.parent for p in export_dir.rglob("config.json"))
    print(f"== the student loads with AutoModelForCausalLM.from_pretrained('{root}') and answers:")
    answer(root, args.world)


if __name__ == "__main__":
    main()
