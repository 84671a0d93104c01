"""End-to-end helpers: free ports, subprocesses that are always killed, Redis, and the client's whole flow."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
JOB_TIMEOUT_SECONDS = 150


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def required_or_skip(reason: str) -> None:
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{reason} — CI requires it")
    pytest.skip(reason)


def redis_db_or_skip(db: int) -> str:
    """A flushed Redis database number as a broker URL; skip locally, fail in CI, when Redis is down."""
    import redis

    client = redis.Redis(REDIS_HOST, REDIS_PORT, db=db, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.RedisError as e:
        required_or_skip(f"Redis at {REDIS_HOST}:{REDIS_PORT} is unreachable: {e}")
    finally:
        client.close()
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


class Processes:
    """Subprocesses started in their own session, so the whole group (e.g. Celery's children) is killed."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            argv, env=env, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started.append((proc, log_path))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for _, p in self.started)

    def stop_all(self) -> None:
        for proc, _ in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc, _ in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (Celery children)
            proc.wait(timeout=10)


@pytest.fixture
def processes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(procs.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def service_env(**dskd: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSKD_")}
    env.update({f"DSKD_{k.upper()}": v for k, v in dskd.items()})
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="2"
    )
    return env


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def tiny_dskd_job(dataset_id: str) -> dict[str, Any]:
    """DSKD with cross-model attention on the cross-vocabulary toy pair, models named relative to the
    models root (the toy world), a few steps."""
    return {
        "name": "e2e dskd",
        "teacher": {"name_or_path": "teacher"},
        "student": {"name_or_path": "cross_student"},
        "data": {"dataset_id": dataset_id},
        "distill": {"method": "dskd_cma"},
        "training": {"max_steps": 4, "batch_size": 4, "max_length": 48, "max_prompt_length": 32, "lr": 1e-3},
    }


def sse_events(client: httpx.Client, path: str, timeout: float) -> list[dict[str, Any]]:
    """Read the job's SSE stream until it ends (the server closes it after the terminal status event)."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    with client.stream("GET", path, headers={"Accept": "text/event-stream"}, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no terminal event within {timeout} s; got {events[-3:]}")
            if line.startswith(":"):
                continue  # keep-alive
            if line:
                key, _, value = line.partition(":")
                fields[key] = value.removeprefix(" ")
                continue
            if "data" in fields:
                event = json.loads(fields["data"])
                assert fields["event"] == event["type"] and int(fields["id"]) == event["seq"]
                events.append(event)
            fields = {}
    return events


def client_flow(base_url: str, api_key: str, world: Any, out_dir: Path) -> dict[str, Any]:
    """What a user does: upload data, submit, follow events to the end, download, load and generate."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        upload = client.post(
            "/v1/datasets", files={"file": ("train.jsonl", world.train.read_bytes(), "application/jsonl")}
        )
        assert upload.status_code == 201, upload.text
        submitted = client.post("/v1/jobs", json=tiny_dskd_job(upload.json()["id"]))
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]

        events = sse_events(client, f"/v1/jobs/{job_id}/events", JOB_TIMEOUT_SECONDS)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        final = events[-1]
        assert final["type"] == "status" and final["payload"]["status"] == "succeeded", events[-3:]
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded"

        artifacts = client.get(f"/v1/jobs/{job_id}/artifacts").json()
        names = {a["name"]: a for a in artifacts["items"]}
        assert {"student.tar", "config.json", "model.safetensors"} <= set(names)
        tar_bytes = client.get(names["student.tar"]["download_url"]).content
        assert len(tar_bytes) == names["student.tar"]["size_bytes"]
        config = names["config.json"]
        ranged = client.get(config["download_url"], headers={"Range": "bytes=0-9"})
        assert ranged.status_code == 206
        assert ranged.headers["content-range"] == f"bytes 0-9/{config['size_bytes']}"
        whole = client.get(config["download_url"]).content
        assert ranged.content == whole[:10] and len(ranged.content) == 10

    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        tar.extractall(out_dir, filter="data")
    export_dir = next(p.parent for p in out_dir.rglob("config.json"))
    generated = generate(export_dir)
    return {"job_id": job_id, "events": events, "generated": generated}


def generate(export_dir: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    model = AutoModelForCausalLM.from_pretrained(export_dir)
    inputs = tokenizer("Reverse the words: red blue", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]  # at least one new token
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
