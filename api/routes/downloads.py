"""Signed download links: `GET /v1/downloads/{token}` serves an artifact without an Authorization header.

The dashboard points plain `<a href>` links here, so the browser streams a large student straight to disk
instead of holding it in memory; the links come from the artifact list and expire after
`download_link_seconds`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from api import signing
from api.db.models import Job
from api.deps import SessionDep, SettingsDep
from api.errors import ProblemError, problem_responses
from api.routes.artifacts import send_artifact
from api.services.artifacts import get_artifact

router = APIRouter(prefix="/v1/downloads", tags=["artifacts"])


@router.get(
    "/{token}",
    response_class=FileResponse,
    summary="Download an artifact through a signed link (no Authorization header; Range supported)",
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "Partial content"},
        **problem_responses(403, 404, 416),
    },
)
def download_signed(token: str, request: Request, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """`token` is the last part of an artifact's `link_url`; it names the job and the file and expires."""
    try:
        claim = signing.verify(signing.signing_key(settings), token)
    except signing.InvalidLink as e:
        raise ProblemError(403, str(e), slug="invalid-link", title="Invalid download link") from None
    job = session.get(Job, claim.job_id)
    if job is None:
        raise ProblemError(404, f"no job '{claim.job_id}'", slug="not-found")
    return send_artifact(get_artifact(session, job.id, claim.name), job.id, claim.name, request, settings)
