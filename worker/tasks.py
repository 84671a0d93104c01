"""The one task a worker runs: claim a job, pre-flight it, run the engine, export, record the outcome.

`execute_job` is the plain function (tests call it directly); `run_job` is its Celery face. One bad job
fails that job with a message the user can act on and never takes the worker down.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import traceback
import uuid
from pathlib import Path
from typing import Any

from celery.signals import worker_process_init
from sqlalchemy.orm import Session

from api.db.models import TERMINAL_STATUSES, Dataset, Job
from api.services import artifacts as artifact_service
from api.services import events as event_service
from api.services import jobs as job_service
from api.settings import Settings, get_settings
from dskd_core.errors import PreflightError
from worker.celery_app import app
from worker.progress import DbProgressSink, LeaseKeeper, SessionFactory

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    """A lease identity per execution: a pid alone repeats across Celery's recycled child processes."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def session_factory_for(settings: Settings) -> SessionFactory:
    from api.db.session import session_scope

    return functools.partial(session_scope, settings.database_url)


def _get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def _dataset_path(session: Session, dataset_id: str, settings: Settings) -> Path:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise FileNotFoundError(
            f"dataset {dataset_id} no longer exists; upload it again and resubmit the job"
        )
    return settings.datasets_dir / dataset.stored_path


def resolve_paths(spec_dict: dict[str, Any], settings: Settings, dataset_path: Path | None) -> dict[str, Any]:
    """Turns the service's references into local paths: the dataset id becomes its stored file, and model
    paths that are not hub ids are taken under the models root (the API already checked they stay inside)."""
    spec = dict(spec_dict)
    data = dict(spec["data"])
    if dataset_path is not None:
        data["path"] = str(dataset_path)
    spec["data"] = data
    for role in ("teacher", "student"):
        model = spec.get(role)
        if not model:
            continue
        name = model["name_or_path"]
        candidate = (settings.models_root / name).resolve()
        if candidate.is_relative_to(settings.models_root) and candidate.exists():
            spec[role] = dict(model, name_or_path=str(candidate))
        elif not Path(name).is_absolute() and Path(name).exists():
            # transformers would load a hub id from a same-named folder in the worker's working directory:
            # a path the user never had the right to name.
            raise PreflightError(
                f"{role}.name_or_path: '{name}' is a hub id here, but the worker has a local folder of that name; "
                "refusing to load it (move the model under the models root or use the full 'org/name' id)"
            )
    return spec


def classify_error(exc: BaseException) -> dict[str, str]:
    """A stable error code and a message for the user; the traceback stays in the worker's log."""
    from dskd_core.errors import error_code

    code = error_code(exc)
    if code == "out_of_memory":
        message = (
            "the job ran out of memory: lower training.batch_size (raise grad_accum to keep the effective "
            "batch), lower training.max_length, or use precision bf16"
        )
    elif code == "internal_error":
        # Unexpected failures keep their type so an operator can find the traceback in the worker log.
        message = f"internal error ({type(exc).__name__}: {exc}); see the worker log"
    else:
        message = str(exc) or type(exc).__name__
    return {"code": code, "message": message}


def execute_job(
    job_id: str,
    *,
    settings: Settings | None = None,
    session_factory: SessionFactory | None = None,
    worker_id: str | None = None,
    device: str | None = None,
) -> str:
    """Runs one job to a terminal state (or leaves it for a re-run if this process dies).

    Returns the outcome: succeeded, failed, cancelled, skipped (not claimable: a duplicate delivery, a
    finished or unknown job) or lease_lost (another worker took the job over; nothing was written).
    """
    settings = settings or get_settings()
    sessions = session_factory or session_factory_for(settings)
    worker_id = worker_id or new_worker_id()

    with sessions() as session:
        job = job_service.claim_job(session, job_id, worker_id, settings.lease_seconds)
        if job is None:
            session.commit()
            log.info(
                "job %s: not claimable (running under a live lease, finished, or unknown); skipping", job_id
            )
            return "skipped"
        if job.status == "cancel_requested":
            job_service.transition(session, job, "cancelled")
            return "cancelled"
        spec_dict = dict(job.spec)
        dataset_id = job.dataset_id

    run_dir = settings.runs_dir / job_id
    sink = DbProgressSink(job_id, sessions, min_interval=settings.event_min_interval_seconds)
    # The lease is renewed until the outcome is recorded: exporting a large student takes a while too.
    with LeaseKeeper(job_id, worker_id, sessions, lease_seconds=settings.lease_seconds) as lease:
        try:
            with sessions() as session:
                dataset_path = _dataset_path(session, dataset_id, settings) if dataset_id else None
            result = _run_engine(
                resolve_paths(spec_dict, settings, dataset_path), run_dir, sink, lease, device
            )
        except (KeyboardInterrupt, SystemExit):
            raise  # the process is going away: leave the job to the reaper and the next attempt
        except BaseException as exc:
            if lease.lease_lost:
                return "lease_lost"  # another worker owns the job now; touch nothing
            log.error("job %s failed:\n%s", job_id, traceback.format_exc())
            _finish(sessions, job_id, "failed", error=classify_error(exc))
            return "failed"
        if lease.lease_lost:
            return "lease_lost"
        if result.status == "cancelled":
            _finish(sessions, job_id, "cancelled")
            return "cancelled"
        try:
            _record_export(sessions, job_id, result, settings)
        except Exception as exc:
            log.error("job %s: export registration failed:\n%s", job_id, traceback.format_exc())
            _finish(sessions, job_id, "failed", error=classify_error(exc))
            return "failed"
        _finish(sessions, job_id, "succeeded")
    return "succeeded"


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
    spec_dict: dict[str, Any], run_dir: Path, sink: DbProgressSink, lease: LeaseKeeper, device: str | None
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


@app.task(name="dskd.run_job", acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    return execute_job(job_id)
