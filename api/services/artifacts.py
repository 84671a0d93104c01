"""Artifacts of a finished job: each exported file plus one tar of the export, all under runs_dir."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api.db.base import utcnow
from api.db.models import Artifact, Job

TAR_NAME = "student.tar"


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _write_tar(export_dir: Path, tar_path: Path) -> None:
    # Written under a temporary name and renamed, so a crash never leaves a half tar with a final name.
    partial = tar_path.with_name(tar_path.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        for path in sorted(export_dir.rglob("*")):
            if path.is_file():
                tar.add(
                    path, arcname=str(Path(export_dir.name) / path.relative_to(export_dir)), recursive=False
                )
    os.replace(partial, tar_path)


def register_export(
    session: Session, job: Job, export_dir: Path, *, runs_dir: Path | None = None
) -> list[Artifact]:
    """Record every file of export_dir and a student.tar next to it; replaces earlier rows (re-runs). Commits."""
    if runs_dir is None:
        from api.settings import get_settings

        runs_dir = get_settings().runs_dir
    assert runs_dir is not None
    runs_dir = runs_dir.resolve()
    export_dir = export_dir.resolve()
    if not export_dir.is_relative_to(runs_dir):
        raise ValueError(f"{export_dir} is not under runs_dir {runs_dir}")
    tar_path = export_dir.parent / TAR_NAME
    _write_tar(export_dir, tar_path)

    entries: list[tuple[str, str, Path]] = [
        ("file", path.relative_to(export_dir).as_posix(), path)
        for path in sorted(export_dir.rglob("*"))
        if path.is_file()
    ]
    entries.append(("tar", TAR_NAME, tar_path))
    session.execute(delete(Artifact).where(Artifact.job_id == job.id))
    now = utcnow()
    rows = [
        Artifact(
            job_id=job.id,
            kind=kind,
            name=name,
            relative_path=path.relative_to(runs_dir).as_posix(),
            size_bytes=path.stat().st_size,
            sha256=file_sha256(path),
            created_at=now,
        )
        for kind, name, path in entries
    ]
    session.add_all(rows)
    session.commit()
    return rows


def list_artifacts(session: Session, job_id: str) -> list[Artifact]:
    return list(
        session.scalars(
            select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.kind, Artifact.name)
        )
    )


def get_artifact(session: Session, job_id: str, name: str) -> Artifact | None:
    if "\x00" in name or len(name) > 500:  # cannot be a stored name (and PostgreSQL refuses NUL in text)
        return None
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))


def artifact_path(artifact: Artifact, runs_dir: Path) -> Path | None:
    """The file on disk, or None if the stored path would leave runs_dir (never trust a stored path blindly)."""
    root = runs_dir.resolve()
    path = (root / artifact.relative_path).resolve()
    return path if path.is_relative_to(root) else None
