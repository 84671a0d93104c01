"""Real tiny toy runs through execute_job: a success, a cancel mid-run, a resume after the worker died, and a job
evaluated on a separate dev dataset."""

from __future__ import annotations

import json
import time

from api.db.models import Job
from api.services import jobs as job_service
from api.services.datasets import store_upload
from api.services.reaper import Reaper
from tests.worker.conftest import events_of, expire_lease, get_job, tiny_spec
from worker import tasks


def wrap_sink(monkeypatch, on_emit):
    """Let the test act on each engine event (after the worker's own sink wrote it), seeing the lease."""
    real = tasks._run_engine

    def run(spec_dict, run_dir, sink, lease, device):
        class Tap:
            def emit(self, event):
                sink.emit(event)
                on_emit(event, lease)

            def emit_log(self, message):
                sink.emit_log(message)

        return real(spec_dict, run_dir, Tap(), lease, device)

    monkeypatch.setattr(tasks, "_run_engine", run)


def test_cancel_while_running_stops_at_a_step_and_keeps_a_checkpoint(
    monkeypatch, worker_settings, sessions, make_job
):
    job_id = make_job(max_steps=50)
    worker_settings.lease_seconds = 2  # the keeper polls every 0.5 s

    def on_emit(event, lease):
        if event.type == "step" and event.step == 2:
            with sessions() as s:
                job_service.request_cancel(s, s.get(Job, job_id))  # what DELETE /v1/jobs/{id} does
            deadline = time.monotonic() + 10
            while not lease.cancelled() and time.monotonic() < deadline:
                time.sleep(0.05)

    wrap_sink(monkeypatch, on_emit)
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "cancelled"
    job = get_job(sessions, job_id)
    assert job.status == "cancelled" and job.error is None
    events = events_of(sessions, job_id)
    statuses = [e.payload["status"] for e in events if e.type == "status"]
    assert statuses == ["queued", "running", "cancel_requested", "cancelled"]
    checkpoints = [e for e in events if e.type == "checkpoint"]
    assert [e.payload["step"] for e in checkpoints] == [2]  # saved at the step where the token fired
    assert list((worker_settings.runs_dir / job_id / "checkpoints").iterdir())


def test_a_dead_worker_is_resumed_from_its_newest_checkpoint(
    monkeypatch, worker_settings, sessions, make_job, toy_world, tmp_path
):
    spec = tiny_spec(toy_world, max_steps=6, checkpoint_interval=2, keep_checkpoints=2)
    spec["student"]["name_or_path"] = "student"  # as the API stores it: relative to the models root
    job_id = make_job(spec)

    def die_at_step_5(event, lease):
        if event.type == "step" and event.step == 5:
            raise SystemExit("killed")  # the process dies after step 5; step 4 is checkpointed

    wrap_sink(monkeypatch, die_at_step_5)
    try:
        tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions)
    except SystemExit:
        pass
    else:
        raise AssertionError("the simulated death did not propagate")
    dead = get_job(sessions, job_id)
    assert (dead.status, dead.attempt) == ("running", 1)
    first_run = dead.last_seq

    monkeypatch.undo()
    # A redelivery while the dead worker's lease still looks alive does nothing...
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "skipped"
    # ...until the lease expires and the reaper re-sends the job.
    expire_lease(sessions, job_id)
    sent: list[str] = []
    assert Reaper(sessions, worker_settings, sent.append).reap_once()["requeued"] == [job_id]
    assert tasks.execute_job(sent[0], settings=worker_settings, session_factory=sessions) == "succeeded"

    job = get_job(sessions, job_id)
    assert (job.status, job.attempt, job.progress["step"]) == ("succeeded", 2, 6)
    second_run = [e for e in events_of(sessions, job_id) if e.seq > first_run]
    resumed = [e for e in second_run if e.type == "log" and "resumed from" in e.payload.get("message", "")]
    assert resumed and resumed[0].payload["step"] == 4
    steps = [e.payload["step"] for e in second_run if e.type == "progress"]
    assert steps == [5, 6]  # not restarted from step 0
    artifacts = next(e for e in second_run if e.type == "artifact").payload["artifacts"]
    assert "student.tar" in artifacts and "model.safetensors" in artifacts
    # No server path in any event or in the manifest users download (the spec is the one they submitted).
    server_paths = [str(worker_settings.data_dir), str(worker_settings.models_root)]
    for event in events_of(sessions, job_id):
        assert not any(path in json.dumps(event.payload) for path in server_paths), event.payload
    assert resumed[0].payload["message"] == "resumed from checkpoints/step-000004"
    manifest_text = (worker_settings.runs_dir / job_id / "export" / "manifest.json").read_text()
    assert not any(path in manifest_text for path in server_paths)
    manifest = json.loads(manifest_text)
    assert manifest["student"] == "student" and manifest["spec"]["student"]["name_or_path"] == "student"


def test_a_job_evaluates_on_its_dev_dataset(monkeypatch, worker_settings, sessions, session, toy_world):
    stored = {}
    for role, path in (("train", toy_world.train), ("dev", toy_world.dev)):
        with path.open("rb") as source:
            stored[role] = store_upload(
                session,
                owner="alice",
                name=path.name,
                source=source,
                datasets_dir=worker_settings.datasets_dir,
                max_bytes=10**8,
            )
    spec = tiny_spec(toy_world, max_steps=2)
    spec["student"]["name_or_path"] = "student"  # as the API stores it
    spec["data"] = {
        "dataset_id": stored["train"].id,
        "dev_dataset_id": stored["dev"].id,
        "dev_max_examples": 8,
    }
    job = job_service.create_job(
        session,
        owner="alice",
        spec=spec,
        max_attempts=3,
        dataset_id=stored["train"].id,
        dev_dataset_id=stored["dev"].id,
    )
    session.commit()
    seen = []
    real = tasks._run_engine

    def run(spec_dict, *rest):
        seen.append(spec_dict)  # the spec the engine gets, after the worker resolved it
        return real(spec_dict, *rest)

    monkeypatch.setattr(tasks, "_run_engine", run)
    assert tasks.execute_job(job.id, settings=worker_settings, session_factory=sessions) == "succeeded"
    [resolved] = seen
    assert resolved["data"]["dev_path"] == str(worker_settings.datasets_dir / stored["dev"].stored_path)
    assert resolved["data"]["path"] == str(worker_settings.datasets_dir / stored["train"].stored_path)
    evals = [e for e in events_of(sessions, job.id) if e.type == "eval"]
    assert [e.payload["step"] for e in evals] == [0, 2]  # before training and at the end
    assert all(e.payload["metrics"]["dev_ce"] > 0 for e in evals)
