"""The worker's engine launch: the GPUs it owns, a two-process job run to the end, the service's teacher cache."""

from __future__ import annotations

import pytest

from tests.worker.conftest import events_of, get_job, tiny_spec
from worker import tasks
from worker.engine_launch import worker_gpus


def test_worker_gpus_come_from_the_settings(monkeypatch):
    from api.settings import Settings

    monkeypatch.delenv("DSKD_WORKER_GPUS", raising=False)
    assert worker_gpus(Settings()) is None
    monkeypatch.setenv("DSKD_WORKER_GPUS", "2, 3")
    assert worker_gpus(Settings()) == [2, 3]
    with pytest.raises(ValueError, match="DSKD_WORKER_GPUS='two'"):
        worker_gpus(Settings(worker_gpus="two"))


def test_a_two_process_kd_job_runs_in_the_worker(
    worker_settings, sessions, make_job, toy_world, monkeypatch, request
):
    """On a machine without GPUs the worker runs the processes on CPUs (gloo); events still reach the database,
    and the teacher cache lives under the data directory."""
    from api.settings import get_settings

    # The worker's engine launch reads the process's settings (the Celery task's own): point them at this test's.
    monkeypatch.setenv("DSKD_DATA_DIR", str(worker_settings.data_dir))
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    spec = tiny_spec(toy_world, num_processes=2, max_steps=3)
    spec["teacher"] = {"name_or_path": str(toy_world.teacher)}
    spec["distill"] = {"method": "vanilla_kd"}
    job_id = make_job(spec)
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "succeeded"
    job = get_job(sessions, job_id)
    assert job.status == "succeeded"
    events = events_of(sessions, job_id)
    steps = [e.payload["step"] for e in events if e.type == "progress"]
    assert steps == [1, 2, 3]  # from the main process only, once each
    messages = [e.payload.get("message", "") for e in events if e.type == "log"]
    assert any(m.startswith("teacher cache built") for m in messages)
    assert (worker_settings.data_dir / "teacher-cache").is_dir()
