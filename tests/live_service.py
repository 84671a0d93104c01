"""A live service for the client, CLI and browser tests: the real app under uvicorn on a free port, PostgreSQL,
and the real worker code (`worker.tasks.execute_job`: claim, lease, progress sink, events, artifacts) run in a
thread per job, with only the engine replaced by a script, so a job takes seconds instead of a training run.

The script reads the job's name: `[slow]` makes steps take 0.25 s (for live curves and cancel), `[nan]` makes the
loss NaN at step 3 (the worker fails the job with `non_finite_loss`); otherwise steps take 0.01 s.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from api.db.session import session_factory, session_scope
from api.main import create_app
from api.services.keys import create_api_key
from api.settings import Settings
from dskd_core.progress import ProgressEvent, RunResult
from tests.e2e.conftest import free_port, wait_http
from tests.e2e.test_service_e2e import ThreadedServer
from worker import tasks

TRAIN_LINES = [f'{{"prompt": "Reverse: a{i} b{i}", "response": "b{i} a{i}"}}' for i in range(40)]


def scripted_engine(
    spec: dict[str, Any], run_dir: Path, sink: Any, lease: Any, device: str | None
) -> RunResult:
    """Emits what the engine emits (started, evals, steps with the loss and its parts, export), checking the
    cancel token every step like the real loop."""
    name = spec.get("name") or ""
    total = int(spec["training"]["max_steps"])
    pause = 0.25 if "[slow]" in name else 0.01

    def emit(kind: str, step: int, metrics: dict[str, float]) -> None:
        sink.emit(ProgressEvent(kind, step=step, total_steps=total, epoch=step / total, metrics=metrics))

    emit("started", 0, {})
    emit("eval", 0, {"dev_ce": 4.0, "teacher_dev_ce": 1.5})
    for step in range(1, total + 1):
        time.sleep(pause)
        if lease.cancelled():
            emit("checkpoint", step - 1, {})
            return RunResult("cancelled", step - 1, total, None, {})
        loss = float("nan") if "[nan]" in name and step == 3 else 4.0 / (1 + 0.3 * step)
        emit(
            "step", step, {"loss": loss, "ce": loss * 0.6, "kd": loss * 0.4, "lr": 1e-3 * (1 - step / total)}
        )
        if step % 5 == 0 or step == total:
            emit("eval", step, {"dev_ce": 4.0 - 2.0 * step / total})
    export = run_dir / "export"
    export.mkdir(parents=True, exist_ok=True)
    (export / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    (export / "model.safetensors").write_bytes(os.urandom(300_000))
    final = {"dev_ce": 2.0, "loss": 4.0 / (1 + 0.3 * total)}
    emit("exported", total, final)
    return RunResult("completed", total, total, export, final)


class ThreadQueue:
    """The API's queue: runs each job at once in a thread with the real worker function."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.threads: list[threading.Thread] = []
        self.outcomes: dict[str, str] = {}

    def enqueue_job(self, job_id: str) -> None:
        def run() -> None:
            self.outcomes[job_id] = tasks.execute_job(
                job_id,
                settings=self.settings,
                session_factory=lambda: session_scope(self.settings.database_url),
            )

        thread = threading.Thread(target=run, name=f"job-{job_id[:8]}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def revoke(self, job_id: str) -> None:
        return None

    def ping(self, timeout: float) -> None:
        return None

    def join(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))


@dataclass
class LiveService:
    url: str
    key: str
    owner: str
    settings: Settings
    queue: ThreadQueue
    data_file: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def new_key(self, owner: str) -> str:
        with session_factory(self.settings.database_url)() as session:
            return create_api_key(session, owner, owner)[1]

    def spec(self, dataset_id: str, *, name: str = "toy", steps: int = 12) -> dict[str, Any]:
        return {
            "name": name,
            "teacher": {"name_or_path": "org/tiny-teacher"},
            "student": {"name_or_path": "org/tiny-student"},
            "data": {"dataset_id": dataset_id},
            "distill": {"method": "vanilla_kd", "divergence": "fkl"},
            "training": {"max_steps": steps, "batch_size": 2, "max_length": 64, "max_prompt_length": 32},
        }


@pytest.fixture
def live(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveService]:
    monkeypatch.setattr(tasks, "_run_engine", scripted_engine)
    settings = Settings(
        data_dir=tmp_path / "service",
        database_url=db_url,
        broker_url="memory://",
        sse_keepalive_seconds=1.0,
        sse_poll_interval_seconds=0.05,
        event_min_interval_seconds=0.0,
        lease_seconds=4,  # the lease keeper polls for cancel requests every second
    )
    queue = ThreadQueue(settings)
    data_file = tmp_path / "train.jsonl"
    data_file.write_text("\n".join(TRAIN_LINES) + "\n")
    with session_factory(db_url)() as session:
        _, secret = create_api_key(session, "live", "live-owner")
    port = free_port()
    with ThreadedServer(create_app(settings, queue=queue), port):
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", timeout=15)
        service = LiveService(url, secret, "live-owner", settings, queue, data_file)
        try:
            yield service
        finally:
            _cancel_unfinished(db_url)
            queue.join()


def _cancel_unfinished(db_url: str) -> None:
    """Slow jobs a test left running stop at their next step, before the database is emptied."""
    from sqlalchemy import update

    from api.db.models import Job

    with session_factory(db_url)() as session:
        session.execute(update(Job).where(Job.status == "running").values(status="cancel_requested"))
        session.commit()
