"""Service details that mutation testing found unasserted: the teacher's model location is checked like the
student's, the upload size cap counts every block and its boundary, and a whole-file error names no line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.services.datasets import UploadTooLarge, store_upload
from tests.api.conftest import assert_problem, job_body, upload


def test_the_teacher_location_is_checked_too(client: TestClient, alice, dataset_id: str) -> None:
    body = job_body(dataset_id, teacher={"name_or_path": "/etc"}, distill={"method": "vanilla_kd"})
    problem = assert_problem(client.post("/v1/jobs", headers=alice, json=body), 422, "teacher.name_or_path")
    assert "under the server's models root" in problem["errors"][0]["msg"]


class Trickle(io.RawIOBase):
    """A request body that arrives a few bytes per read, as a slow client's would."""

    def __init__(self, data: bytes, step: int = 64) -> None:
        self.data, self.step, self.at = data, step, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.data[self.at : self.at + self.step]
        self.at += len(chunk)
        return chunk


def test_the_size_cap_counts_every_block(session, tmp_path: Path) -> None:
    line = json.dumps({"prompt": "p" * 40, "response": "r"}).encode() + b"\n"
    with pytest.raises(UploadTooLarge):
        store_upload(
            session, owner="alice", name="x", source=Trickle(line * 10), datasets_dir=tmp_path, max_bytes=300
        )
    assert list(tmp_path.iterdir()) == []  # the partial file is gone


def test_an_upload_of_exactly_the_limit_is_accepted(client: TestClient, alice, settings) -> None:
    limit = settings.max_upload_bytes
    head = json.dumps({"prompt": "p", "response": ""})  # the response is padded to the exact size
    body = head.replace('""', '"' + "r" * (limit - len(head) - 1) + '"') + "\n"
    assert len(body.encode()) == limit
    ok = client.post("/v1/datasets", headers=alice, files={"file": ("x.jsonl", body.encode())})
    assert ok.status_code == 201, ok.text
    over = client.post("/v1/datasets", headers=alice, files={"file": ("x.jsonl", body.encode() + b"\n")})
    assert_problem(over, 413)


def test_a_file_without_records_names_no_line(client: TestClient, alice) -> None:
    problem = assert_problem(upload(client, alice, ["", "  "]), 422, "file")
    assert "no records" in problem["detail"] and "line" not in problem["detail"]
