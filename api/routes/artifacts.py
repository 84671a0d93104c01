"""Artifacts: the exported student, file by file and as one tar; downloads honour Range."""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from api.auth import CurrentPrincipal
from api.deps import SessionDep, SettingsDep
from api.errors import ProblemError, problem_responses
from api.routes.jobs import get_owned_job
from api.schemas.artifacts import ArtifactList, ArtifactOut
from api.services.artifacts import artifact_path, get_artifact, list_artifacts

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"])
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


@router.get(
    "/{job_id}/artifacts",
    response_model=ArtifactList,
    summary="List a job's artifacts",
    responses=problem_responses(401, 404),
)
def job_artifacts(job_id: str, principal: CurrentPrincipal, session: SessionDep) -> ArtifactList:
    job = get_owned_job(session, principal.owner, job_id)
    return ArtifactList(
        items=[
            ArtifactOut(
                name=a.name,
                kind=a.kind,
                size_bytes=a.size_bytes,
                sha256=a.sha256,
                created_at=a.created_at,
                download_url=f"/v1/jobs/{job.id}/artifacts/{quote(a.name)}",
            )
            for a in list_artifacts(session, job.id)
        ]
    )


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
    artifact = get_artifact(session, job.id, name)
    assert settings.runs_dir is not None
    path = artifact_path(artifact, settings.runs_dir) if artifact is not None else None
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
