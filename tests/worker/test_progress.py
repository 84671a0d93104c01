"""The database progress sink (throttle, order, ETA, NaN guard) and the lease keeper."""

from __future__ import annotations

import math

import pytest

from api.services import jobs as job_service
from dskd_core.errors import NonFiniteLossError
from dskd_core.progress import ProgressEvent
from tests.worker.conftest import events_of, get_job
from worker.progress import DbProgressSink, LeaseKeeper


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def step(n: int, total: int = 10, loss: float = 1.0) -> ProgressEvent:
    return ProgressEvent("step", step=n, total_steps=total, epoch=n / total, metrics={"loss": loss})


def test_throttle_writes_one_progress_event_per_interval_and_always_the_last_step(sessions, make_job):
    job_id = make_job()
    clock = FakeClock()
    sink = DbProgressSink(job_id, sessions, min_interval=5.0, clock=clock)
    sink.emit(ProgressEvent("started", step=0, total_steps=10))
    for n in range(1, 8):  # seven steps inside one interval: only the first is written
        clock.now += 0.1
        sink.emit(step(n, loss=10.0 - n))
    clock.now += 5.0  # the interval has passed: step 8 is written, step 9 is not
    sink.emit(step(8, loss=2.0))
    clock.now += 0.1
    sink.emit(step(9, loss=1.5))
    sink.emit(ProgressEvent("checkpoint", step=9, total_steps=10, message="ckpt-9"))
    clock.now += 0.1
    sink.emit(step(10, loss=1.0))  # the last step, inside the interval, is always written

    events = events_of(sessions, job_id)
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1))  # strictly increasing, gap-free
    kinds = [(e.type, e.payload.get("step")) for e in events]
    assert kinds == [
        ("status", None),  # queued, written by create_job
        ("log", 0),
        ("progress", 1),
        ("progress", 8),
        ("checkpoint", 9),
        ("progress", 10),
    ]
    assert events[1].payload["message"] == "training started"
    assert events[-1].payload["metrics"] == {"loss": 1.0}
    # The job row's snapshot follows the newest written progress event.
    job = get_job(sessions, job_id)
    assert job.progress["step"] == 10 and job.progress["metrics"]["loss"] == 1.0


def test_eta_counts_only_the_steps_of_this_run(sessions, make_job):
    job_id = make_job()
    clock = FakeClock()
    sink = DbProgressSink(job_id, sessions, min_interval=0.0, clock=clock)
    clock.now += 30.0  # model loading: not part of the step rate
    sink.emit(ProgressEvent("started", step=40, total_steps=100, message="resumed from checkpoint-40"))
    clock.now += 20.0  # 10 steps in 20 s after resuming at 40 → 2 s/step, 50 steps left
    sink.emit(step(50, total=100))
    progress = [e for e in events_of(sessions, job_id) if e.type == "progress"]
    assert progress[-1].payload["eta_seconds"] == pytest.approx(100.0)
    assert progress[-1].payload["elapsed_seconds"] == pytest.approx(50.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_stops_the_run_even_when_throttled(sessions, make_job, bad):
    job_id = make_job()
    clock = FakeClock()
    sink = DbProgressSink(job_id, sessions, min_interval=60.0, clock=clock)
    sink.emit(step(1))
    with pytest.raises(NonFiniteLossError, match=r"lower training\.lr"):
        sink.emit(step(2, loss=bad))


def test_lease_keeper_renews_and_sees_cancel(sessions, make_job):
    job_id = make_job()
    with sessions() as s:
        job = job_service.claim_job(s, job_id, "w1", lease_seconds=5)
        first_expiry = job.lease_expires_at
    keeper = LeaseKeeper(job_id, "w1", sessions, lease_seconds=300)
    keeper.poll_once()
    assert not keeper.cancelled()
    assert get_job(sessions, job_id).lease_expires_at > first_expiry
    with sessions() as s:
        job_service.request_cancel(s, job_service_get(s, job_id))
    keeper.poll_once()
    assert keeper.cancel_requested and keeper.cancelled() and not keeper.lease_lost


def test_lease_keeper_stops_the_run_when_another_worker_takes_the_job(sessions, make_job):
    job_id = make_job()
    with sessions() as s:
        job_service.claim_job(s, job_id, "w1", lease_seconds=5)
    from tests.worker.conftest import expire_lease

    expire_lease(sessions, job_id)
    with sessions() as s:
        assert job_service.claim_job(s, job_id, "w2", lease_seconds=60) is not None
    keeper = LeaseKeeper(job_id, "w1", sessions, lease_seconds=60)
    keeper.poll_once()
    assert keeper.lease_lost and keeper.cancelled()
    assert get_job(sessions, job_id).lease_owner == "w2"


def test_lease_keeper_thread_renews_in_the_background(sessions, make_job):
    job_id = make_job()
    with sessions() as s:
        job_service.claim_job(s, job_id, "w1", lease_seconds=1)
    before = get_job(sessions, job_id).lease_expires_at
    import time

    with LeaseKeeper(job_id, "w1", sessions, lease_seconds=120, poll_seconds=0.05):
        deadline = time.monotonic() + 5
        while get_job(sessions, job_id).lease_expires_at == before and time.monotonic() < deadline:
            time.sleep(0.05)
    assert (get_job(sessions, job_id).lease_expires_at - before).total_seconds() > 60


def job_service_get(s, job_id):
    from api.db.models import Job

    return s.get(Job, job_id)


def test_the_job_snapshot_ends_with_the_exported_weights_metrics(sessions, make_job):
    """With select_best the export carries the best dev step's scores: the job row shows those, not the last."""
    job_id = make_job()
    sink = DbProgressSink(job_id, sessions, min_interval=0.0)
    sink.emit(ProgressEvent("eval", step=10, total_steps=20, metrics={"dev_rougeL": 85.2, "dev_ce": 0.9}))
    sink.emit(ProgressEvent("eval", step=20, total_steps=20, metrics={"dev_rougeL": 80.1, "dev_ce": 0.7}))
    assert get_job(sessions, job_id).progress["metrics"]["dev_rougeL"] == 80.1
    exported = {"dev_rougeL": 85.2, "dev_ce": 0.9, "exported_step": 10.0}
    sink.emit(
        ProgressEvent("exported", step=20, total_steps=20, metrics=exported, message="/srv/runs/x/export")
    )
    sink.flush()
    metrics = get_job(sessions, job_id).progress["metrics"]
    assert {k: metrics[k] for k in exported} == exported
