"""Artifacts: registered from an export dir, listed with sha256, downloaded whole or by Range."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.db.models import Artifact, Job
from api.services.artifacts import register_export
from tests.api.conftest import assert_problem

WEIGHTS = bytes(range(256)) * 40  # 10 240 bytes


@pytest.fixture
def exported(job_id: str, session, settings) -> Path:
    export = settings.runs_dir / job_id / "export"
    export.mkdir(parents=True)
    (export / "model.safetensors").write_bytes(WEIGHTS)
    (export / "config.json").write_text('{"model_type": "gpt2"}')
    register_export(session, session.get(Job, job_id), export, runs_dir=settings.runs_dir)
    return export


def test_list_artifacts(client: TestClient, alice, job_id: str, exported: Path) -> None:
    items = client.get(f"/v1/jobs/{job_id}/artifacts", headers=alice).json()["items"]
    by_name = {a["name"]: a for a in items}
    assert set(by_name) == {"config.json", "model.safetensors", "student.tar"}
    weights = by_name["model.safetensors"]
    assert weights["kind"] == "file" and weights["size_bytes"] == len(WEIGHTS)
    assert weights["sha256"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert weights["download_url"] == f"/v1/jobs/{job_id}/artifacts/model.safetensors"
    assert by_name["student.tar"]["kind"] == "tar"


def test_download_whole_and_tar(client: TestClient, alice, job_id: str, exported: Path) -> None:
    response = client.get(f"/v1/jobs/{job_id}/artifacts/model.safetensors", headers=alice)
    assert response.status_code == 200 and response.content == WEIGHTS
    assert response.headers["accept-ranges"] == "bytes"
    tar_bytes = client.get(f"/v1/jobs/{job_id}/artifacts/student.tar", headers=alice).content
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert sorted(tar.getnames()) == ["export/config.json", "export/model.safetensors"]
        assert tar.extractfile("export/model.safetensors").read() == WEIGHTS


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=100-199", 100, 199), ("bytes=10000-", 10000, 10239), ("bytes=-40", 10200, 10239)],
)
def test_range_download(
    client: TestClient, alice, job_id: str, exported: Path, header: str, start: int, end: int
) -> None:
    response = client.get(
        f"/v1/jobs/{job_id}/artifacts/model.safetensors", headers={**alice, "Range": header}
    )
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(WEIGHTS)}"
    assert response.content == WEIGHTS[start : end + 1]


@pytest.mark.parametrize("header", ["bytes=20000-", "bytes=500-100", "bytes=abc", "items=0-1", "bytes=-0"])
def test_unsatisfiable_range_is_416(
    client: TestClient, alice, job_id: str, exported: Path, header: str
) -> None:
    response = client.get(
        f"/v1/jobs/{job_id}/artifacts/model.safetensors", headers={**alice, "Range": header}
    )
    assert_problem(response, 416)
    assert response.headers["content-range"] == f"bytes */{len(WEIGHTS)}"


def test_names_resolve_through_the_table_only(
    client: TestClient, alice, job_id: str, exported: Path, session, settings
) -> None:
    (settings.runs_dir / job_id / "secret.txt").write_text("not an artifact")
    for name in ("secret.txt", "../secret.txt", "..%2Fsecret.txt", "export/config.json", "nope"):
        assert_problem(client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=alice), 404)
    # Even a tampered row cannot leave runs_dir.
    row = session.query(Artifact).filter_by(job_id=job_id, name="config.json").one()
    row.relative_path = "../../../../etc/hostname"
    session.commit()
    assert_problem(client.get(f"/v1/jobs/{job_id}/artifacts/config.json", headers=alice), 404)


def test_register_export_is_idempotent(job_id: str, exported: Path, session, settings) -> None:
    rows = register_export(session, session.get(Job, job_id), exported, runs_dir=settings.runs_dir)
    assert sorted(r.name for r in rows) == ["config.json", "model.safetensors", "student.tar"]
    assert session.query(Artifact).filter_by(job_id=job_id).count() == 3
    assert all(not r.relative_path.startswith("/") and r.relative_path.startswith(job_id) for r in rows)
