"""Faults around a running job: a database outage shorter than the lease does not end the attempt (progress is
kept and written later, the outcome is recorded once the database is back), and a full disk fails the job as
`disk_full` with no partial checkpoint left and no server path in the message."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from dskd_core.progress import ProgressEvent, RunResult
from tests.worker.conftest import events_of, get_job, tiny_spec
from tests.worker.test_tasks import completed, fake_engine
from worker import tasks
from worker.faults import hide_paths, storage_fault
from worker.progress import DbProgressSink


class Outage:
    """A session factory whose database can be switched off (every use fails as a dropped connection does)."""

    def __init__(self, sessions) -> None:
        self.sessions = sessions
        self.down = False
        self.refused = 0

    def __call__(self):
        if self.down:
            self.refused += 1
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("database restarting"))
        return self.sessions()


def test_the_sink_keeps_progress_through_an_outage(sessions, make_job) -> None:
    job_id = make_job()
    outage = Outage(sessions)
    sink = DbProgressSink(job_id, outage, min_interval=0.0)
    sink.emit(ProgressEvent("step", step=1, total_steps=5, metrics={"loss": 3.0}))
    outage.down = True
    for step in (2, 3):
        sink.emit(ProgressEvent("step", step=step, total_steps=5, metrics={"loss": 3.0 - step}))
    sink.emit(ProgressEvent("checkpoint", step=3, total_steps=5))
    assert sink.pending == 3 and sink.outages == 1  # nothing raised: the step loop goes on
    outage.down = False
    assert sink.flush()
    sink.emit(ProgressEvent("step", step=4, total_steps=5, metrics={"loss": 0.5}))
    events = events_of(sessions, job_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [(e.type, e.payload["step"]) for e in events[1:]] == [
        ("progress", 1),
        ("progress", 2),
        ("progress", 3),
        ("checkpoint", 3),
        ("progress", 4),
    ]
    assert get_job(sessions, job_id).progress["step"] == 4


def test_an_outage_mid_run_does_not_end_the_attempt(monkeypatch, worker_settings, sessions, make_job) -> None:
    job_id = make_job()
    outage = Outage(sessions)

    def body(spec, run_dir, sink, cancel):
        for step in range(1, 7):
            if step == 3:
                outage.down = True  # a database restart while training
            if step == 5:
                threading.Timer(1.5, lambda: setattr(outage, "down", False)).start()
            sink.emit(ProgressEvent("step", step=step, total_steps=6, metrics={"loss": 1.0 / step}))
            time.sleep(0.05)
        return completed(run_dir)  # returns while the database is still down: the outcome must wait

    fake_engine(monkeypatch, body)
    outcome = tasks.execute_job(job_id, settings=worker_settings, session_factory=outage, worker_id="w1")
    assert outcome == "succeeded" and outage.refused > 0
    job = get_job(sessions, job_id)
    assert (job.status, job.attempt) == ("succeeded", 1)
    steps = [e.payload["step"] for e in events_of(sessions, job_id) if e.type == "progress"]
    assert steps == [1, 2, 3, 4, 5, 6]


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_fails_cleanly(worker_settings, sessions, make_job, toy_world, tmp_path) -> None:
    # A real run whose checkpoint does not fit: torch reports it as "unexpected pos", with no errno.
    job_id = make_job(tiny_spec(toy_world, max_steps=4, checkpoint_interval=2))
    with tiny_filesystem(tmp_path / "runs", "600k") as runs:
        settings = worker_settings.model_copy(update={"runs_dir": runs})
        outcome = tasks.execute_job(job_id, settings=settings, session_factory=sessions)
        checkpoints = runs / job_id / "checkpoints"
        leftovers = sorted(p.name for p in checkpoints.iterdir()) if checkpoints.is_dir() else []
    assert outcome == "failed"
    error = get_job(sessions, job_id).error
    assert error["code"] == "disk_full", error
    assert "partial checkpoint was removed" in error["message"] and str(runs) not in error["message"]
    assert not [name for name in leftovers if name.startswith(".tmp-")], leftovers


def test_storage_faults_are_recognised(tmp_path: Path) -> None:
    assert storage_fault(tmp_path, OSError(28, "No space left on device")) == "disk_full"
    assert storage_fault(tmp_path, OSError(30, "Read-only file system")) == "storage_unwritable"
    assert storage_fault(tmp_path, RuntimeError("unrelated")) is None  # the probe write succeeds here
    try:
        raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos") from OSError(
            28, "full"
        )
    except RuntimeError as chained:
        assert storage_fault(tmp_path, chained) == "disk_full"


def test_no_server_path_in_messages(worker_settings) -> None:
    run_dir = worker_settings.runs_dir / "abc"
    text = (
        f"resumed from {run_dir}/checkpoints/step-000016; "
        f"no file {worker_settings.models_root}/teacher/config.json; "
        f"'{worker_settings.datasets_dir}/x.jsonl' and /usr/lib/python3/site.py, https://hf.co/org/name"
    )
    hidden = hide_paths(text, worker_settings, run_dir)
    assert hidden == (
        "resumed from checkpoints/step-000016; no file teacher/config.json; "
        "'x.jsonl' and …/site.py, https://hf.co/org/name"
    )
    assert json.dumps(hidden).count("/data") == 0


def test_result_is_recorded_even_if_the_export_is_followed_by_an_outage(
    monkeypatch, worker_settings, sessions, make_job
) -> None:
    job_id = make_job()
    outage = Outage(sessions)

    def body(spec, run_dir, sink, cancel) -> RunResult:
        outage.down = True
        threading.Timer(1.0, lambda: setattr(outage, "down", False)).start()
        return completed(run_dir)

    fake_engine(monkeypatch, body)
    assert (
        tasks.execute_job(job_id, settings=worker_settings, session_factory=outage, worker_id="w1")
        == "succeeded"
    )
    assert get_job(sessions, job_id).status == "succeeded"


def test_checkpoints_are_on_by_default_by_time(worker_settings, sessions, make_job, toy_world) -> None:
    from dskd_core.spec import TrainingSpec

    assert TrainingSpec().checkpoint_interval is None and TrainingSpec().checkpoint_minutes == 10.0
    # No step interval: the time rule alone (made tiny here) writes resumable checkpoints during the run.
    job_id = make_job(tiny_spec(toy_world, max_steps=4, checkpoint_minutes=0.0001))
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "succeeded"
    saved = [e.payload["step"] for e in events_of(sessions, job_id) if e.type == "checkpoint"]
    assert saved == [1, 2, 3]  # after every step but the last (the export follows it)


def test_dev_evaluation_is_on_by_default_by_time(worker_settings, sessions, make_job, toy_world) -> None:
    from dskd_core.spec import TrainingSpec

    assert TrainingSpec().eval_interval is None and TrainingSpec().eval_minutes == 10.0
    # No step interval: the time rule alone (made tiny here) evaluates the dev loss during the run.
    spec = tiny_spec(toy_world, max_steps=4, eval_minutes=0.0001)
    spec["data"]["dev_ratio"] = 0.2
    job_id = make_job(spec)
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "succeeded"
    evals = [e.payload for e in events_of(sessions, job_id) if e.type == "eval"]
    # At the start (with the teacher's CE when there is one), after steps 1-3 by time, and at the end.
    assert [e["step"] for e in evals] == [0, 1, 2, 3, 4]
    assert all("dev_loss" in e["metrics"] and "rouge_l" not in e["metrics"] for e in evals)
