"""The one task a worker runs: claim a job, pre-flight it, run the engine, export, record the outcome.

`execute_job` is the plain function (tests call it directly); `run_job` is its Celery face. One bad job
fails that job with a message the user can act on and never takes the worker down.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.signals import worker_process_init
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import TERMINAL_STATUSES, Dataset, Job
from api.logs import JOB_ID
from api.queue import JobQueue, queue_from_settings
from api.services import artifacts as artifact_service
from api.services import events as event_service
from api.services import jobs as job_service
from api.services.liveness import holder_id
from api.services.submissions import resolve_model
from api.settings import Settings, get_settings
from dskd_core.errors import PreflightError
from worker.celery_app import app
from worker.faults import hide_paths, remove_partial_writes, retry_database, storage_fault, storage_message
from worker.joblog import ProgressLogSink, log_failure
from worker.manifest import publish_manifest
from worker.progress import DbProgressSink, LeaseKeeper, SessionFactory

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    """A lease identity per execution that names this process, so a holder that died on this machine can be
    recognised at once (api.services.liveness)."""
    return holder_id()


def session_factory_for(settings: Settings) -> SessionFactory:
    from api.db.session import session_scope

    return functools.partial(session_scope, settings.database_url)


def _get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def resolve_paths(
    spec_dict: dict[str, Any],
    settings: Settings,
    dataset_path: Path | None,
    dev_dataset_path: Path | None = None,
) -> dict[str, Any]:
    """Turns the service's references into local paths: the dataset ids become their stored files (the dev
    dataset becomes data.dev_path), and model names are looked up under the models root the same way the API
    checked them (a directory there, else a hub id)."""
    spec = dict(spec_dict)
    data = dict(spec["data"])
    if dataset_path is not None:
        data["path"] = str(dataset_path)
    if data.get("dev_dataset_id") is not None:
        if dev_dataset_path is None:  # the job's reference was cleared: the dataset is gone
            raise FileNotFoundError(DATASET_GONE.format(role="dev dataset"))
        # The engine reads dev_path; the spec allows one dev source, so the id gives way to the path.
        data["dev_dataset_id"] = None
        data["dev_path"] = str(dev_dataset_path)
    spec["data"] = data
    for role in ("teacher", "student"):
        model = spec.get(role)
        if not model:
            continue
        name = model["name_or_path"]
        ref, reason = resolve_model(name, settings.models_root, allow_hub=settings.allow_hub_models)
        if ref is None:
            raise ModelUnavailable(
                f"{role}.name_or_path: {reason} (was it moved or deleted since submission?)"
            )
        if ref.local_dir is not None:
            spec[role] = dict(model, name_or_path=str(ref.local_dir))
        elif Path(name).exists():
            # transformers would load a hub id from a same-named folder in the worker's working directory:
            # a path the user never had the right to name.
            raise PreflightError(
                f"{role}.name_or_path: '{name}' is a hub id here, but the worker has a local folder of that name; "
                "refusing to load it (move the model under the models root or use the full 'org/name' id)"
            )
    return spec


DATASET_GONE = "the job's {role} no longer exists; upload it again and resubmit the job"


class ModelUnavailable(FileNotFoundError):
    """A job's model is no longer where the API found it."""


def classify_error(
    exc: BaseException, settings: Settings | None = None, run_dir: Path | None = None
) -> dict[str, str]:
    """A stable error code and a message for the user (no server paths); the traceback stays in the worker's
    log."""
    from dskd_core.errors import error_code

    storage = storage_fault(run_dir, exc) if run_dir is not None else None
    code = storage or error_code(exc)
    if isinstance(exc, ModelUnavailable):
        code = "model_unavailable"
    if storage is not None:
        assert run_dir is not None
        message = storage_message(storage, run_dir)
    elif code == "out_of_memory":
        message = (
            "the job ran out of memory: lower training.batch_size (raise grad_accum to keep the effective "
            "batch), lower training.max_length, or use precision bf16"
        )
    elif code == "internal_error":
        # Unexpected failures keep their type so an operator can find the traceback in the worker log.
        message = f"internal error ({type(exc).__name__}: {exc}); see the worker log"
    else:
        message = str(exc) or type(exc).__name__
    if settings is not None:
        message = hide_paths(message, settings, run_dir)
    return {"code": code, "message": message}


def execute_job(
    job_id: str,
    *,
    settings: Settings | None = None,
    session_factory: SessionFactory | None = None,
    worker_id: str | None = None,
    device: str | None = None,
    queue: JobQueue | None = None,
) -> str:
    """Runs one job to a terminal state (or leaves it for a re-run if this process dies).

    Returns the outcome: succeeded, failed, cancelled, skipped (not claimable: a duplicate delivery, a
    finished or unknown job), deferred (its tenant already runs max_running_jobs_per_key jobs: re-sent for
    later) or lease_lost (another worker took the job over; nothing was written).
    """
    token = JOB_ID.set(job_id)  # every log line of this job carries its id
    started = time.monotonic()
    try:
        outcome = _execute_job(job_id, settings, session_factory, worker_id, device, queue)
        log.info("job %s: %s after %.1f s", job_id, outcome, time.monotonic() - started)
        return outcome
    finally:
        JOB_ID.reset(token)


def _execute_job(
    job_id: str,
    settings: Settings | None,
    session_factory: SessionFactory | None,
    worker_id: str | None,
    device: str | None,
    queue: JobQueue | None,
) -> str:
    settings = settings or get_settings()
    sessions = session_factory or session_factory_for(settings)
    worker_id = worker_id or new_worker_id()
    # A database outage at any point here is waited out for as long as a lease lasts.
    patience = float(settings.lease_seconds)

    claimed = retry_database(
        lambda: _claim(sessions, job_id, worker_id, settings), deadline_seconds=patience, what=f"job {job_id}"
    )
    if claimed == "deferred":
        (queue or queue_from_settings(settings)).enqueue_job(job_id, countdown=RUNNING_QUOTA_RETRY_SECONDS)
        log.info("job %s: its tenant runs its limit of jobs already; re-sent for later", job_id)
        return "deferred"
    if claimed is None:
        log.info("job %s: not claimable (running under a live lease, finished, or unknown); skipping", job_id)
        return "skipped"
    if claimed.status == "cancel_requested":
        retry_database(
            lambda: _finish(sessions, job_id, "cancelled"), deadline_seconds=patience, what=f"job {job_id}"
        )
        return "cancelled"
    spec_dict, dataset_id, dev_dataset_id = dict(claimed.spec), claimed.dataset_id, claimed.dev_dataset_id
    log.info(
        "job %s: started (attempt %d/%d, %s, student %s)",
        job_id,
        claimed.attempt,
        claimed.max_attempts,
        spec_dict.get("distill", {}).get("method"),
        spec_dict.get("student", {}).get("name_or_path"),
    )

    run_dir = settings.runs_dir / job_id
    hide = functools.partial(hide_paths, settings=settings, run_dir=run_dir)
    sink = DbProgressSink(job_id, sessions, min_interval=settings.event_min_interval_seconds, hide=hide)
    # The lease is renewed until the outcome is recorded: exporting a large student takes a while too.
    with LeaseKeeper(
        job_id,
        worker_id,
        sessions,
        lease_seconds=settings.lease_seconds,
        poll_seconds=settings.heartbeat_seconds,
    ) as lease:

        def record(fn: Callable[[], None]) -> None:
            retry_database(
                fn, deadline_seconds=patience, what=f"job {job_id}", keep_going=lambda: not lease.lease_lost
            )

        try:
            dataset_path, dev_dataset_path = retry_database(
                lambda: (
                    _dataset_path(sessions, dataset_id, settings),
                    _dataset_path(sessions, dev_dataset_id, settings, role="dev dataset"),
                ),
                deadline_seconds=patience,
                what=job_id,
            )
            result = _run_engine(
                resolve_paths(spec_dict, settings, dataset_path, dev_dataset_path),
                run_dir,
                ProgressLogSink(sink, job_id),  # the worker's log: progress every 30 s, evaluations
                lease,
                device,
            )
        except (KeyboardInterrupt, SystemExit):
            raise  # the process is going away: leave the job to the reaper and the next attempt
        except BaseException as exc:
            if lease.lease_lost:
                return "lease_lost"  # another worker owns the job now; touch nothing
            error = classify_error(exc, settings, run_dir)
            log_failure(job_id, error, exc)
            removed = remove_partial_writes(run_dir)
            if removed:
                log.info("job %s: removed partial writes %s", job_id, removed)
            _flush(sink, patience)
            record(lambda: _finish(sessions, job_id, "failed", error=error))
            return "failed"
        _flush(sink, patience)
        if lease.lease_lost:
            return "lease_lost"
        if result.status == "cancelled":
            record(lambda: _finish(sessions, job_id, "cancelled"))
            return "cancelled"
        try:
            publish_manifest(Path(result.export_dir), spec_dict, hide) if result.export_dir else None
            record(lambda: _record_export(sessions, job_id, result, settings))
        except Exception as exc:
            log.error("job %s: export registration failed:\n%s", job_id, traceback.format_exc())
            error = classify_error(exc, settings, run_dir)
            record(lambda: _finish(sessions, job_id, "failed", error=error))
            return "failed"
        record(lambda: _finish(sessions, job_id, "succeeded"))
    return "succeeded"


# A job whose tenant is at its running limit is offered again after this long.
RUNNING_QUOTA_RETRY_SECONDS = 30.0


def _claim(sessions: SessionFactory, job_id: str, worker_id: str, settings: Settings) -> Job | str | None:
    """Claim the job: take over from a holder that is provably dead, respect the tenant's running limit."""
    with sessions() as session:
        job_service.release_dead_lease(session, job_id)
        owner = session.scalar(select(Job.owner).where(Job.id == job_id))
        if owner is None:
            return None
        # Serialise this tenant's claims, so two workers cannot both take the last running place.
        job_service.lock_owner(session, owner)
        running = job_service.count_jobs(session, owner, job_service.LEASED_STATUSES)
        job = session.get(Job, job_id, populate_existing=True)
        if job is not None and job.status == "queued" and running >= settings.max_running_jobs_per_key:
            session.rollback()
            return "deferred"
        claimed = job_service.claim_job(session, job_id, worker_id, settings.lease_seconds)
        if claimed is not None:
            session.expunge(claimed)
        return claimed


def _flush(sink: DbProgressSink, patience: float) -> None:
    """Write what the sink kept during a database outage before the outcome (events stay in order)."""
    deadline = time.monotonic() + patience
    while not sink.flush() and time.monotonic() < deadline:
        time.sleep(1.0)


def _dataset_path(
    sessions: SessionFactory, dataset_id: str | None, settings: Settings, *, role: str = "dataset"
) -> Path | None:
    if not dataset_id:
        return None
    with sessions() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise FileNotFoundError(DATASET_GONE.format(role=role))
        return settings.datasets_dir / dataset.stored_path


def _record_export(sessions: SessionFactory, job_id: str, result: Any, settings: Settings) -> None:
    with sessions() as session:
        job = _get_job(session, job_id)
        if job is None:
            raise LookupError(f"job {job_id} disappeared while it ran")
        if result.export_dir is None:
            raise RuntimeError("the engine completed without an export directory")
        artifacts = artifact_service.register_export(
            session, job, Path(result.export_dir), runs_dir=settings.runs_dir
        )
        event_service.append_event(
            session, job_id, "artifact", {"artifacts": [a.name for a in artifacts], "metrics": result.metrics}
        )
        job_service.update_progress(
            session,
            job_id,
            {"step": result.steps, "total_steps": result.total_steps, "final_metrics": result.metrics},
        )


def _run_engine(
    spec_dict: dict[str, Any], run_dir: Path, sink: ProgressLogSink, lease: LeaseKeeper, device: str | None
):
    from dskd_core.preflight import preflight
    from dskd_core.spec import JobSpec
    from worker.engine_launch import run_engine

    spec = JobSpec.model_validate(spec_dict)
    report = preflight(spec)  # tokenizers only: fails a hopeless job in seconds, before any model loads
    for line in report.notes:
        sink.emit_log(line)
    return run_engine(spec, run_dir, sink=sink, cancel=lease, device=device)


def _finish(
    sessions: SessionFactory, job_id: str, status: str, *, error: dict[str, str] | None = None
) -> None:
    with sessions() as session:
        job = _get_job(session, job_id)
        if job is not None and job.status not in TERMINAL_STATUSES:
            job_service.transition(session, job, status, error=error)


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    # A forked child must not reuse the parent's pooled sockets (the reaper thread opened them).
    from api.db.session import dispose_all_after_fork

    dispose_all_after_fork()


class JobFailed(Exception):
    """Raised by the Celery task for a failed job, so Celery and Flower record a failure, not a success.

    Listed in the task's `throws`: Celery logs it as an expected error (one line, no traceback; the worker
    already logged the cause) and acks the message, so a failed job is not redelivered.
    """


@app.task(name="dskd.run_job", acks_late=True, reject_on_worker_lost=True, throws=(JobFailed,))
def run_job(job_id: str) -> str:
    outcome = execute_job(job_id)
    if outcome == "failed":
        raise JobFailed(f"job {job_id} failed (its error is on the job: GET /v1/jobs/{job_id})")
    return outcome
