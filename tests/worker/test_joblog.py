"""The worker's log: start, throttled progress, end, each with the job id; user errors one warning line; a
failed job is a failed Celery task; no library progress bars."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dskd_core.errors import PreflightError
from dskd_core.progress import ProgressEvent
from tests.worker.test_tasks import completed, fake_engine
from worker import tasks
from worker.joblog import ProgressLogSink, quiet_progress_bars


class Recorder:
    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self.logs: list[str] = []

    def emit(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def emit_log(self, message: str) -> None:
        self.logs.append(message)


def test_progress_is_logged_every_interval_with_rate_and_eta(caplog) -> None:
    now = [0.0]
    inner = Recorder()
    sink = ProgressLogSink(inner, "job42", interval=30, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="dskd.worker.job")
    sink.emit(ProgressEvent("started", step=0, total_steps=100))
    for step in range(1, 101):
        now[0] = float(step)  # one step per second
        sink.emit(ProgressEvent("step", step=step, total_steps=100, metrics={"loss": 1.0 / step}))
    sink.emit(ProgressEvent("eval", step=100, total_steps=100, metrics={"dev_ce": 1.25}))
    sink.emit_log("note")
    assert len(inner.events) == 102 and inner.logs == ["note"]
    lines = [r.getMessage() for r in caplog.records]
    assert all(line.startswith("job job42: ") for line in lines)
    steps = [line for line in lines if ": step " in line]
    # The first step, then every 30 s, and always the last one.
    assert [line.split()[3] for line in steps] == ["1/100", "31/100", "61/100", "91/100", "100/100"]
    assert "steps/s" not in steps[0]  # the rate is measured from the first step on
    assert "1.00 steps/s" in steps[1] and "eta 69 s" in steps[1] and "loss 0.0323" in steps[1]
    assert "evaluation at step 100: dev_ce 1.25" in lines[-2] and lines[-1] == "job job42: note"


def test_a_user_error_is_one_warning_line(monkeypatch, worker_settings, sessions, make_job, caplog) -> None:
    job_id = make_job()

    def body(spec, run_dir, sink, cancel):
        raise PreflightError("student.name_or_path: no such model 'studnet'")

    fake_engine(monkeypatch, body)
    caplog.set_level(logging.INFO)
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "failed"
    mine = [r for r in caplog.records if job_id in r.getMessage()]
    messages = [r.getMessage() for r in mine]
    assert messages[0].startswith(f"job {job_id}: started (attempt 1/3, sft")
    failure = [r for r in mine if "failed [" in r.getMessage()]
    assert len(failure) == 1 and failure[0].levelno == logging.WARNING and failure[0].exc_info is None
    assert "no such model 'studnet'" in failure[0].getMessage()
    assert messages[-1].startswith(f"job {job_id}: failed after ")
    assert all(r.levelno < logging.ERROR for r in caplog.records)


def test_a_bug_is_an_error_with_its_traceback(
    monkeypatch, worker_settings, sessions, make_job, caplog
) -> None:
    job_id = make_job()

    def body(spec, run_dir, sink, cancel):
        raise KeyError("unexpected")

    fake_engine(monkeypatch, body)
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "failed"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and job_id in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "failed [internal_error]" in errors[0].getMessage()


def test_progress_lines_of_a_real_execution(monkeypatch, worker_settings, sessions, make_job, caplog) -> None:
    job_id = make_job()

    def body(spec, run_dir: Path, sink, cancel):
        sink.emit(ProgressEvent("started", step=0, total_steps=2))
        sink.emit(ProgressEvent("step", step=1, total_steps=2, metrics={"loss": 2.0}))
        sink.emit(ProgressEvent("step", step=2, total_steps=2, metrics={"loss": 1.0}))
        return completed(run_dir)

    fake_engine(monkeypatch, body)
    caplog.set_level(logging.INFO)
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "succeeded"
    messages = [r.getMessage() for r in caplog.records if r.name == "dskd.worker.job"]
    assert f"job {job_id}: step 2/2 (100%), loss 1.0000" in "\n".join(messages)


def test_a_failed_job_is_a_failed_celery_task(monkeypatch) -> None:
    monkeypatch.setattr(tasks, "execute_job", lambda job_id: "failed")
    result = tasks.run_job.apply(args=["abc"])
    assert result.state == "FAILURE" and isinstance(result.result, tasks.JobFailed)
    assert tasks.JobFailed in tasks.run_job.throws  # logged by Celery as expected: one line, no traceback
    monkeypatch.setattr(tasks, "execute_job", lambda job_id: "succeeded")
    assert tasks.run_job.apply(args=["abc"]).state == "SUCCESS"


def test_library_progress_bars_are_off_in_the_worker(monkeypatch) -> None:
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    try:
        quiet_progress_bars()
        assert not hf_logging.is_progress_bar_enabled()
        import os

        assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    finally:
        hf_logging.enable_progress_bar()
        pytest.importorskip("datasets").enable_progress_bars()
