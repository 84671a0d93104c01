"""execute_job with the engine replaced where a real run is not needed: claims, duplicates, cancel, failures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from api.db.models import Job
from api.services import jobs as job_service
from api.services.reaper import Reaper
from dskd_core.errors import NonFiniteLossError, PreflightError
from dskd_core.progress import ProgressEvent, RunResult
from dskd_core.spec import JobSpec
from tests.worker.conftest import events_of, expire_lease, get_job, tiny_spec
from worker import tasks


def fake_engine(monkeypatch, body):
    """Replace the engine call (after pre-flight) with body(spec, run_dir, sink, cancel)."""

    def run(spec, run_dir, *, sink, cancel, device=None, **engine_options):
        return body(spec, Path(run_dir), sink, cancel)

    monkeypatch.setattr("dskd_core.train.run_job", run)


def completed(run_dir: Path) -> RunResult:
    export = run_dir / "export"
    export.mkdir(parents=True, exist_ok=True)
    (export / "config.json").write_text("{}")
    return RunResult("completed", 2, 2, export, {"loss": 0.5})


def test_a_second_delivery_under_a_live_lease_does_nothing(monkeypatch, worker_settings, sessions, make_job):
    job_id = make_job()
    seen = {}

    def body(spec, run_dir, sink, cancel):
        before = get_job(sessions, job_id)
        seen["duplicate"] = tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions)
        after = get_job(sessions, job_id)
        seen["unchanged"] = (before.status, before.attempt, before.last_seq, before.lease_owner) == (
            after.status,
            after.attempt,
            after.last_seq,
            after.lease_owner,
        )
        return completed(run_dir)

    fake_engine(monkeypatch, body)
    outcome = tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions, worker_id="w1")
    assert outcome == "succeeded"
    assert seen == {"duplicate": "skipped", "unchanged": True}
    job = get_job(sessions, job_id)
    assert (job.status, job.attempt, job.lease_owner) == ("succeeded", 1, None)
    types = [e.type for e in events_of(sessions, job_id)]
    assert types[-2:] == ["artifact", "status"]
    # A late redelivery of the finished job changes nothing either.
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "skipped"
    assert get_job(sessions, job_id).last_seq == job.last_seq


def test_cancel_while_queued_then_a_delivery_does_nothing(monkeypatch, worker_settings, sessions, make_job):
    job_id = make_job()
    with sessions() as s:
        job_service.request_cancel(s, s.get(Job, job_id))
    fake_engine(monkeypatch, lambda *a: pytest.fail("a cancelled job must not train"))
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "skipped"
    job = get_job(sessions, job_id)
    assert (job.status, job.attempt) == ("cancelled", 0)


def test_cancel_requested_before_the_claim_ends_cancelled_without_training(
    monkeypatch, worker_settings, sessions, make_job
):
    job_id = make_job()
    with sessions() as s:
        job_service.claim_job(s, job_id, "dead-worker", lease_seconds=30)
        job_service.request_cancel(s, s.get(Job, job_id))
    expire_lease(sessions, job_id)
    fake_engine(monkeypatch, lambda *a: pytest.fail("a cancelled job must not train"))
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "cancelled"
    assert get_job(sessions, job_id).status == "cancelled"


@pytest.mark.parametrize(
    ("raise_it", "code", "words"),
    [
        (
            lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
            "out_of_memory",
            "batch_size",
        ),
        # Host-side OOM carries no "out of memory" text: the code must come from the type.
        (lambda: MemoryError(), "out_of_memory", "batch_size"),
        (lambda: NonFiniteLossError("loss is nan at step 3"), "non_finite_loss", "nan"),
        (lambda: RuntimeError("something unexpected"), "internal_error", "RuntimeError"),
    ],
    ids=["oom", "host-oom", "nan", "unexpected"],
)
def test_an_engine_error_fails_the_job_and_the_worker_returns(
    monkeypatch, worker_settings, sessions, make_job, raise_it, code, words
):
    job_id = make_job()

    def body(spec, run_dir, sink, cancel):
        raise raise_it()

    fake_engine(monkeypatch, body)
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "failed"
    job = get_job(sessions, job_id)
    assert job.status == "failed" and job.error["code"] == code
    assert words in job.error["message"]
    last = events_of(sessions, job_id)[-1]
    assert (
        last.type == "status" and last.payload["status"] == "failed" and last.payload["error"]["code"] == code
    )


def test_nan_loss_reported_by_the_engine_fails_the_job(monkeypatch, worker_settings, sessions, make_job):
    job_id = make_job()

    def body(spec, run_dir, sink, cancel):
        sink.emit(ProgressEvent("step", step=1, total_steps=5, metrics={"loss": 2.0}))
        sink.emit(ProgressEvent("step", step=2, total_steps=5, metrics={"loss": float("nan")}))
        pytest.fail("the sink must stop the run")

    fake_engine(monkeypatch, body)
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "failed"
    error = get_job(sessions, job_id).error
    assert error["code"] == "non_finite_loss" and "step 2" in error["message"]


def test_preflight_refuses_a_same_vocabulary_method_on_a_cross_vocabulary_pair(
    worker_settings, sessions, make_job, toy_world
):
    spec = tiny_spec(toy_world)
    spec["teacher"] = {"name_or_path": str(toy_world.teacher)}
    spec["student"] = {"name_or_path": str(toy_world.cross_student)}
    spec["distill"] = {"method": "vanilla_kd"}
    job_id = make_job(spec)
    started = time.monotonic()
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "failed"
    assert time.monotonic() - started < 20
    error = get_job(sessions, job_id).error
    assert error["code"] == "preflight_failed"
    assert "share one tokenizer" in error["message"] and "dskd_cma" in error["message"]
    assert not (worker_settings.runs_dir / job_id / "checkpoints").exists()


def test_a_missing_model_fails_with_model_unavailable(worker_settings, sessions, make_job, toy_world):
    spec = tiny_spec(toy_world)
    spec["student"] = {"name_or_path": str(toy_world.root / "no-such-model")}
    job_id = make_job(spec)
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "failed"
    error = get_job(sessions, job_id).error
    assert error["code"] == "model_unavailable" and "no-such-model" in error["message"]


def test_unreadable_data_fails_with_bad_data(worker_settings, sessions, make_job, toy_world, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine", "response": "ok"}\n{this is not json\n')
    spec = tiny_spec(toy_world)
    spec["data"] = {"path": str(broken)}
    job_id = make_job(spec)
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "failed"
    error = get_job(sessions, job_id).error
    assert error["code"] == "bad_data" and "broken.jsonl" in error["message"]


def test_attempts_are_capped_when_the_worker_keeps_dying(monkeypatch, worker_settings, sessions, make_job):
    job_id = make_job(max_attempts=3)

    def die(spec, run_dir, sink, cancel):
        raise SystemExit(1)  # what a killed process looks like from inside: nothing is recorded

    fake_engine(monkeypatch, die)
    sent: list[str] = []
    for attempt in range(1, 4):
        with pytest.raises(SystemExit):
            tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions)
        job = get_job(sessions, job_id)
        assert (job.status, job.attempt) == ("running", attempt)
        expire_lease(sessions, job_id)
        result = Reaper(sessions, worker_settings, sent.append).reap_once()
        if attempt < 3:
            assert result == {"released": [], "requeued": [job_id], "failed": [], "cancelled": []}
        else:
            assert result == {"released": [], "requeued": [], "failed": [job_id], "cancelled": []}
    assert sent == [job_id, job_id]
    job = get_job(sessions, job_id)
    assert job.status == "failed" and job.error["code"] == "attempts_exhausted"
    assert "lost 3 times" in job.error["message"]
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "skipped"


def test_a_worker_that_lost_its_lease_records_nothing(monkeypatch, worker_settings, sessions, make_job):
    job_id = make_job()

    def stalled(spec, run_dir, sink, cancel):
        # This worker stalls; its lease expires and another worker claims the job.
        expire_lease(sessions, job_id)
        with sessions() as s:
            assert job_service.claim_job(s, job_id, "w2", lease_seconds=60) is not None
        cancel.poll_once()
        assert cancel.cancelled()
        return RunResult("cancelled", 1, 4, None)

    fake_engine(monkeypatch, stalled)
    outcome = tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions, worker_id="w1")
    assert outcome == "lease_lost"
    job = get_job(sessions, job_id)
    assert (job.status, job.lease_owner, job.attempt) == ("running", "w2", 2)


def test_a_hub_id_never_loads_a_same_named_folder_of_the_worker(worker_settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "gpt2").mkdir(parents=True)  # e.g. left over in the worker's working directory
    spec = {"student": {"name_or_path": "org/gpt2"}, "data": {"dataset_id": "d"}}
    with pytest.raises(PreflightError, match=r"student\.name_or_path"):
        tasks.resolve_paths(spec, worker_settings, None)
    (tmp_path / "org" / "gpt2").rmdir()
    assert tasks.resolve_paths(spec, worker_settings, None)["student"]["name_or_path"] == "org/gpt2"


def test_a_local_model_removed_after_submission_is_model_unavailable(worker_settings, tmp_path):
    worker_settings = worker_settings.model_copy(update={"models_root": tmp_path})
    spec = {"student": {"name_or_path": "student-v1"}, "data": {"dataset_id": "d"}}
    with pytest.raises(tasks.ModelUnavailable, match="no model directory 'student-v1'") as caught:
        tasks.resolve_paths(spec, worker_settings, None)
    assert tasks.classify_error(caught.value, worker_settings)["code"] == "model_unavailable"


def test_model_names_under_the_models_root_become_absolute_paths(worker_settings, tmp_path):
    worker_settings = worker_settings.model_copy(update={"models_root": tmp_path})
    model_dir = worker_settings.models_root / "teachers" / "big"
    model_dir.mkdir(parents=True)
    spec = {"teacher": {"name_or_path": "teachers/big"}, "student": {"name_or_path": "org/small"}, "data": {}}
    resolved = tasks.resolve_paths(spec, worker_settings, Path("/data/x.jsonl"))
    assert resolved["teacher"]["name_or_path"] == str(model_dir.resolve())
    assert resolved["student"]["name_or_path"] == "org/small"
    assert resolved["data"]["path"] == "/data/x.jsonl"


def test_the_dev_dataset_becomes_the_engines_dev_path(worker_settings):
    spec = {
        "student": {"name_or_path": "org/small"},
        "data": {"dataset_id": "d" * 32, "dev_dataset_id": "e" * 32, "dev_max_examples": 8},
        "distill": {"method": "sft"},
    }
    train, dev = worker_settings.datasets_dir / "d.jsonl", worker_settings.datasets_dir / "e.jsonl"
    resolved = tasks.resolve_paths(spec, worker_settings, train, dev)
    assert resolved["data"] == {
        "dataset_id": "d" * 32,
        "path": str(train),
        "dev_path": str(dev),
        "dev_dataset_id": None,
        "dev_max_examples": 8,
    }
    JobSpec.model_validate(resolved)  # one dev source left: what the engine accepts
    assert spec["data"]["dev_dataset_id"] == "e" * 32  # the stored spec is not changed
    with pytest.raises(FileNotFoundError, match="dev dataset no longer exists") as caught:
        tasks.resolve_paths(spec, worker_settings, train, None)  # the reference was cleared
    assert tasks.classify_error(caught.value, worker_settings)["code"] == "file_not_found"
    assert (
        "dev_path"
        not in tasks.resolve_paths({**spec, "data": {"dataset_id": "d" * 32}}, worker_settings, train, dev)[
            "data"
        ]
    )


def test_a_job_whose_dev_dataset_is_gone_fails_before_the_engine(
    monkeypatch, worker_settings, sessions, make_job, toy_world
):
    spec = tiny_spec(toy_world)
    spec["data"] = {"path": str(toy_world.train), "dev_dataset_id": "e" * 32}  # stored without its reference
    job_id = make_job(spec)
    fake_engine(monkeypatch, lambda *a: pytest.fail("a job without its dev set must not train"))
    assert tasks.execute_job(job_id, settings=worker_settings, session_factory=sessions) == "failed"
    error = get_job(sessions, job_id).error
    assert error == {
        "code": "file_not_found",
        "message": "the job's dev dataset no longer exists; upload it again and resubmit the job",
    }
