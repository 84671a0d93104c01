"""Jobs: submit (idempotent), list (cursor pagination), inspect, cancel."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import CurrentPrincipal
from api.db.models import Job, JobStatus
from api.deps import QueueDep, SessionDep, SettingsDep
from api.errors import ProblemError, field_error, problem_responses, validation_problem
from api.pagination import after_cursor, encode_cursor, is_id
from api.schemas.jobs import JOB_SPEC_EXAMPLE, JobOut, JobPage
from api.services import jobs as job_service
from api.services.datasets import get_owned
from api.services.submissions import check_submission
from dskd_core.spec import JobSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger(__name__)


def get_owned_job(session: Session, owner: str, job_id: str) -> Job:
    """The caller's job or a 404 (another owner's job is indistinguishable from a missing one)."""
    job = session.get(Job, job_id) if is_id(job_id) else None
    if job is None or job.owner != owner:
        raise ProblemError(404, f"no job '{job_id[:64]}'", slug="not-found")
    return job


async def strict_types(request: Request) -> None:
    """The spec again in pydantic's strict JSON mode: over HTTP "3" is not an integer and "1e-3" not a number
    (the command line keeps lax parsing: YAML writes 1e-3 as a string)."""
    try:
        JobSpec.model_validate_json(await request.body(), strict=True)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


def _quota_exceeded(limit: int) -> ProblemError:
    return ProblemError(
        429,
        f"this key's tenant already has {limit} queued jobs, the most it may have waiting; "
        "wait for some to start or cancel some",
        slug="quota-exceeded",
        title="Too many queued jobs",
        headers={"Retry-After": "30"},
    )


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    summary="Submit a distillation job",
    dependencies=[Depends(strict_types)],
    responses={
        200: {"description": "Replay of an earlier request with the same Idempotency-Key"},
        **problem_responses(401, 413, 422, 429),
    },
)
def create_job(
    spec: Annotated[
        JobSpec,
        Body(openapi_examples={"dskd_eta": {"summary": "Cross-tokenizer DSKD", "value": JOB_SPEC_EXAMPLE}}),
    ],
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$", description="Retry-safe submission key."
        ),
    ] = None,
) -> JobOut:
    """Validate the spec cheaply (schema, ranges, the server's limits, dataset ownership, model location, the
    tokenizer pair), store it, queue it.

    Models are hub ids (`org/name`) or directories under the server's models_root (stored relative to it); the
    data is an uploaded dataset named by `data.dataset_id`, and an optional separate dev set another one named by
    `data.dev_dataset_id` (`data.path`, `data.dev_path` and `distill.seqkd_data_path` are refused).
    """
    owner = principal.owner
    submission = check_submission(session, spec, owner=owner, settings=settings)
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, owner, idempotency_key)
        if existing is not None:
            return _replay(existing, submission.request_hash, idempotency_key, response)
    if submission.errors:
        raise validation_problem("the job spec was refused", submission.errors)
    job_service.lock_owner(session, owner)
    if idempotency_key is not None and (existing := _by_idempotency_key(session, owner, idempotency_key)):
        return _replay(existing, submission.request_hash, idempotency_key, response)
    if job_service.count_jobs(session, owner, (JobStatus.queued,)) >= settings.max_queued_jobs_per_key:
        session.rollback()
        raise _quota_exceeded(settings.max_queued_jobs_per_key)
    try:
        job = job_service.create_job(
            session,
            owner=owner,
            spec=submission.spec,
            max_attempts=settings.max_attempts,
            dataset_id=submission.dataset_id,
            dev_dataset_id=submission.dev_dataset_id,
            name=spec.name,
            idempotency_key=idempotency_key,
            request_hash=submission.request_hash,
        )
        session.commit()
    except IntegrityError:
        # The database settled a race: a concurrent request with the same Idempotency-Key won the insert, or
        # a dataset (training or dev) was deleted after it was checked (the foreign keys refuse the job).
        session.rollback()
        existing = _by_idempotency_key(session, owner, idempotency_key) if idempotency_key else None
        if existing is not None:
            return _replay(existing, submission.request_hash, idempotency_key or "", response)
        gone = [
            field_error(f"data.{field}", f"no dataset '{value}'", ["body", "data", field])
            for field, value in (
                ("dataset_id", submission.dataset_id),
                ("dev_dataset_id", submission.dev_dataset_id),
            )
            if value is not None and get_owned(session, owner, value) is None
        ]
        if gone:
            raise validation_problem("the job spec was refused", gone) from None
        raise
    queue.enqueue_job(job.id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.from_job(job)


def _by_idempotency_key(session: Session, owner: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def _replay(job: Job, request_hash: str, key: str, response: Response) -> JobOut:
    if job.request_hash != request_hash:
        raise validation_problem(
            f"Idempotency-Key '{key}' was already used with a different request body",
            [field_error("Idempotency-Key", "reused with a different body", ["header", "Idempotency-Key"])],
        )
    response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.from_job(job)


@router.get(
    "", response_model=JobPage, summary="List your jobs, newest first", responses=problem_responses(401, 422)
)
def list_jobs(
    principal: CurrentPrincipal,
    session: SessionDep,
    status: Annotated[list[JobStatus] | None, Query(description="Only these statuses (repeatable).")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
) -> JobPage:
    query = select(Job).where(Job.owner == principal.owner)
    if status:
        query = query.where(Job.status.in_([s.value for s in status]))
    if cursor:
        query = query.where(after_cursor(Job, cursor))
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    page, more = rows[:limit], len(rows) > limit
    last = page[-1] if more else None
    return JobPage(
        items=[JobOut.from_job(j) for j in page],
        next_cursor=encode_cursor(last.created_at, last.id) if last is not None else None,
    )


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="Status and progress of a job",
    responses=problem_responses(401, 404),
)
def get_job(job_id: str, principal: CurrentPrincipal, session: SessionDep) -> JobOut:
    return JobOut.from_job(get_owned_job(session, principal.owner, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    status_code=202,
    summary="Cancel a job",
    responses=problem_responses(401, 404, 409),
)
def cancel_job(job_id: str, principal: CurrentPrincipal, session: SessionDep, queue: QueueDep) -> JobOut:
    """A queued job is cancelled at once; a running one is asked to stop at its next step (cancel_requested)."""
    job = get_owned_job(session, principal.owner, job_id)
    if job.is_terminal:
        raise ProblemError(
            409, f"job '{job_id}' is already {job.status}", slug="job-finished", title="Job already finished"
        )
    was_queued = job.status == JobStatus.queued
    try:
        job = job_service.request_cancel(session, job)
    except job_service.InvalidTransition as e:
        raise ProblemError(409, str(e), slug="job-finished", title="Job already finished") from None
    if was_queued:
        try:
            queue.revoke(job.id)
        except Exception:
            # The database already says cancelled; a worker that still receives the message refuses to claim it.
            log.warning("could not revoke the queued message of job %s", job.id, exc_info=True)
    return JobOut.from_job(job)
