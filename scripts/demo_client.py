"""The demo's client side: everything a user does over REST against a running `dskd serve`.

Uploads the toy world's training data, submits a DSKD job (models by path under the service's models root),
streams its progress over Server-Sent Events, downloads the distilled student as one tar, loads it with plain
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

import httpx
import yaml


def wait_ready(client: httpx.Client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
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


def stream_events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Follows the job's SSE stream until its terminal status event, printing progress as it comes."""
    events: list[dict[str, Any]] = []
    headers = {"Accept": "text/event-stream"}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=None) as response:
        response.raise_for_status()
        kind = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                event = json.loads(line.split(":", 1)[1])  # {seq, type, payload, created_at}
                payload = event.get("payload", {})
                events.append({"type": event.get("type", kind), **payload})
                show(event.get("type", kind), payload)
    return events


def show(kind: str | None, payload: dict[str, Any]) -> None:
    if kind == "progress":
        m = payload.get("metrics", {})
        eta = payload.get("eta_seconds")
        print(
            f"  step {payload['step']:>4}/{payload['total_steps']}  loss {m.get('loss', float('nan')):.3f}"
            f"  ce {m.get('ce', float('nan')):.3f}  kd {m.get('kd', float('nan')):.3f}"
            + (f"  eta {eta:.0f}s" if eta is not None else ""),
            flush=True,
        )
    elif kind == "eval":
        m = payload.get("metrics", {})
        print(
            f"  eval @ step {payload.get('step')}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()),
            flush=True,
        )
    elif kind == "status":
        print(
            f"  status: {payload['status']}" + (f" — {payload['error']}" if payload.get("error") else ""),
            flush=True,
        )
    elif kind in ("log", "checkpoint", "artifact") and payload.get("message"):
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

    with httpx.Client(
        base_url=args.url, headers={"Authorization": f"Bearer {args.key}"}, timeout=60
    ) as client:
        wait_ready(client)
        print("== uploading the training data")
        upload = client.post(
            "/v1/datasets",
            files={"file": ("train.jsonl", (args.world / "train.jsonl").read_bytes(), "application/jsonl")},
        )
        upload.raise_for_status()
        dataset = upload.json()
        print(f"  dataset {dataset['id']}: {dataset['row_count']} rows")

        print(f"== submitting a DSKD job ({args.steps} steps)")
        created = client.post("/v1/jobs", json=job_spec(args.world, dataset["id"], args.steps))
        if created.status_code >= 400:
            sys.exit(f"job refused: {created.status_code} {created.text}")
        job_id = created.json()["id"]
        print(f"  job {job_id} at {created.headers['Location']}")

        print("== streaming progress (Server-Sent Events)")
        events = stream_events(client, job_id)
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] != "succeeded":
            sys.exit(f"the job ended {job['status']}: {job.get('error')}")

        evals = [e["metrics"] for e in events if e["type"] == "eval" and e.get("metrics")]
        if evals:
            before, after = evals[0], evals[-1]
            teacher = before.get("teacher_dev_ce")
            print(
                f"== student dev loss: {before.get('dev_ce', float('nan')):.3f} before → "
                f"{after.get('dev_ce', float('nan')):.3f} after"
                + (f" (teacher {teacher:.3f})" if teacher else "")
            )

        print("== downloading the distilled student")
        listing = client.get(f"/v1/jobs/{job_id}/artifacts").json()
        tar_entry = next(a for a in listing["items"] if a["kind"] == "tar")
        args.out.mkdir(parents=True, exist_ok=True)
        tar_path = args.out / tar_entry["name"]
        with client.stream("GET", f"/v1/jobs/{job_id}/artifacts/{tar_entry['name']}") as response:
            response.raise_for_status()
            with tar_path.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        print(f"  {tar_path} ({tar_entry['size_bytes'] / 1e6:.1f} MB, sha256 {tar_entry['sha256'][:12]}…)")
        export_dir = args.out / "student"
        with tarfile.open(tar_path) as tar:
            tar.extractall(export_dir, filter="data")

    root = next(p.parent for p in export_dir.rglob("config.json"))
    print(f"== the student loads with AutoModelForCausalLM.from_pretrained('{root}') and answers:")
    answer(root, args.world)


if __name__ == "__main__":
    main()
