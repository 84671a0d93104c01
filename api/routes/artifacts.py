"""Artifacts: the exported student, file by file and as one tar; downloads honour Range."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from api import signing
from api.auth import CurrentPrincipal
from api.db.models import Artifact
from api.deps import SessionDep, SettingsDep
from api.errors import ProblemError, problem_responses
from api.routes.jobs import get_owned_job
from api.schemas.artifacts import ArtifactList, ArtifactOut
from api.services.artifacts import artifact_path, get_artifact, list_artifacts
from api.settings import Settings

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"])
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


@router.get(
    "/{job_id}/artifacts",
    response_model=ArtifactList,
    summary="List a job's artifacts",
    responses=problem_responses(401, 404),
)
def job_artifacts(
    job_id: str, principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> ArtifactList:
    """Each artifact with its size and sha256, an authenticated `download_url` and a signed `link_url`."""
    job = get_owned_job(session, principal.owner, job_id)
    key = signing.signing_key(settings)
    items = []
    for a in list_artifacts(session, job.id):
        token, expires = signing.sign(key, job.id, a.name, settings.download_link_seconds)
        items.append(
            ArtifactOut(
                name=a.name,
                kind=a.kind,
                size_bytes=a.size_bytes,
                sha256=a.sha256,
                created_at=a.created_at,
                download_url=f"/v1/jobs/{job.id}/artifacts/{quote(a.name)}",
                link_url=f"/v1/downloads/{token}",
                link_expires_at=datetime.fromtimestamp(expires, UTC),
            )
        )
    return ArtifactList(items=items)


def _check_range(header: str | None, size: int) -> None:
    """416 as problem+json for a single range that cannot be served; FileResponse serves the valid ones."""
    if header is None:
        return
    match = _RANGE.match(header)
    if match is None:
        if "," in header and header.strip().startswith("bytes"):
            return  # multi-range: FileResponse answers multipart/byteranges
        raise _unsatisfiable(size, f"malformed Range header {header!r}")
    start, end = match.groups()
    if not start and not end:
        raise _unsatisfiable(size, "empty byte range")
    if start and (int(start) >= size or (end and int(end) < int(start))):
        raise _unsatisfiable(size, f"range {header.strip()} is outside the {size}-byte file")
    if not start and int(end) == 0:
        raise _unsatisfiable(size, "a zero-length suffix range")


def _unsatisfiable(size: int, detail: str) -> ProblemError:
    return ProblemError(
        416, detail, slug="range-not-satisfiable", headers={"Content-Range": f"bytes */{size}"}
    )


@router.get(
    "/{job_id}/artifacts/{name:path}",
    response_class=FileResponse,
    summary="Download an artifact (Range supported)",
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "Partial content"},
        **problem_responses(401, 404, 416),
    },
)
def download_artifact(
    job_id: str,
    name: str,
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> FileResponse:
    """The name is looked up in the artifacts table; it is never used as a path."""
    job = get_owned_job(session, principal.owner, job_id)
    return send_artifact(get_artifact(session, job.id, name), job.id, name, request, settings)


def send_artifact(
    artifact: Artifact | None, job_id: str, name: str, request: Request, settings: Settings
) -> FileResponse:
    """The artifact's file (Range honoured), or a 404 problem when the row or the file is gone."""
    assert settings.runs_dir is not None
    path: Path | None = artifact_path(artifact, settings.runs_dir) if artifact is not None else None
    if artifact is None or path is None or not path.is_file():
        raise ProblemError(404, f"no artifact '{name}' for job '{job_id}'", slug="not-found")
    _check_range(request.headers.get("range"), path.stat().st_size)
    media_type = "application/x-tar" if artifact.kind == "tar" else "application/octet-stream"
    return FileResponse(
        path,
        media_type=media_type,
        filename=name.rsplit("/", 1)[-1],
        headers={"ETag": f'"{artifact.sha256}"'},
    )
