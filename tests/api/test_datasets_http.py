"""POST/GET/DELETE /v1/datasets: validation of the JSONL, size limit, storage under a server-chosen name."""

from __future__ import annotations

import hashlib
import json

import pytest
from fastapi.testclient import TestClient

from api.db.models import Job
from api.services.jobs import transition
from tests.api.conftest import GOOD_LINES, assert_problem, job_body, upload


def test_upload_stores_under_server_name(client: TestClient, alice, settings) -> None:
    response = upload(client, alice, name="../../evil.jsonl")
    assert response.status_code == 201, response.text
    body = response.json()
    content = ("\n".join(GOOD_LINES) + "\n").encode()
    assert body["row_count"] == 4 and body["size_bytes"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["name"] == "evil.jsonl"
    assert response.headers["location"] == f"/v1/datasets/{body['id']}"
    stored = list(settings.datasets_dir.iterdir())
    assert [p.name for p in stored] == [f"{body['id']}.jsonl"] and stored[0].read_bytes() == content
    assert client.get(f"/v1/datasets/{body['id']}", headers=alice).json() == body
    assert client.get("/v1/datasets", headers=alice).json() == {"items": [body], "next_cursor": None}


@pytest.mark.parametrize(
    ("lines", "line", "needle"),
    [
        (['{"prompt": "a", "response": "b"}', '{"prompt": "a", "response": '], 2, "invalid JSON"),
        (['{"prompt": "a", "response": "b"}', "", '{"prompt": "only a prompt"}'], 3, "response field"),
        (['{"response": "no prompt"}'], 1, "prompt field"),
        (["[1, 2]"], 1, "expected an object"),
        (['{"messages": [{"role": "user", "content": "hi"}]}'], 1, "assistant"),
        (
            ['{"prompt": "a", "response": "b"}', '{"prompt": "a", "completion": "b"}', '"text"'],
            3,
            "expected an object",
        ),
    ],
)
def test_invalid_lines_are_named(client: TestClient, alice, settings, lines, line, needle) -> None:
    problem = assert_problem(upload(client, alice, lines), 422, "file")
    error = problem["errors"][0]
    assert error["loc"] == ["body", "file", f"line {line}"]
    assert f"line {line}" in error["msg"] and needle in error["msg"]
    assert list(settings.datasets_dir.iterdir()) == []  # nothing left behind


def test_empty_and_non_utf8(client: TestClient, alice) -> None:
    assert_problem(upload(client, alice, [""]), 422, "file")
    response = client.post(
        "/v1/datasets", headers=alice, files={"file": ("x.jsonl", b'{"prompt": "\xff"}\n')}
    )
    assert "not UTF-8" in assert_problem(response, 422, "file")["detail"]


def test_missing_file_field(client: TestClient, alice) -> None:
    assert_problem(client.post("/v1/datasets", headers=alice, data={"name": "x"}), 422, "file")


def test_too_large_is_413(client: TestClient, alice, settings) -> None:
    line = json.dumps({"prompt": "p" * 100, "response": "r"})
    lines = [line] * (settings.max_upload_bytes // len(line) + 2)
    assert_problem(upload(client, alice, lines), 413)
    assert list(settings.datasets_dir.iterdir()) == []
    # Far beyond the limit: refused from the stream, before the multipart parser spools it.
    huge = client.post(
        "/v1/datasets",
        headers=alice,
        files={"file": ("x.jsonl", b"x" * (settings.max_upload_bytes + 70_000))},
    )
    assert_problem(huge, 413)
    declared = client.post("/v1/datasets", headers={**alice, "Content-Length": str(10**9)}, content=b"")
    assert_problem(declared, 413)


def test_delete_refused_while_used_then_allowed(
    client: TestClient, alice, bob, dataset_id: str, session, settings
) -> None:
    job = client.post("/v1/jobs", headers=alice, json=job_body(dataset_id)).json()["id"]
    assert_problem(client.get(f"/v1/datasets/{dataset_id}", headers=bob), 404)
    assert_problem(client.delete(f"/v1/datasets/{dataset_id}", headers=bob), 404)
    assert job in assert_problem(client.delete(f"/v1/datasets/{dataset_id}", headers=alice), 409)["detail"]
    transition(session, session.get(Job, job), "cancelled")
    response = client.delete(f"/v1/datasets/{dataset_id}", headers=alice)
    assert response.status_code == 204 and response.content == b""
    assert list(settings.datasets_dir.iterdir()) == []
    assert_problem(client.get(f"/v1/datasets/{dataset_id}", headers=alice), 404)
    assert client.get(f"/v1/jobs/{job}", headers=alice).json()["dataset_id"] is None


def test_a_dev_dataset_in_use_is_kept_until_its_job_ends(
    client: TestClient, alice, dataset_id: str, session, settings
) -> None:
    dev = upload(client, alice, ['{"prompt": "dev?", "response": "dev"}'], name="dev.jsonl").json()["id"]
    body = job_body(dataset_id, data={"dataset_id": dataset_id, "dev_dataset_id": dev})
    job = client.post("/v1/jobs", headers=alice, json=body).json()["id"]
    problem = assert_problem(client.delete(f"/v1/datasets/{dev}", headers=alice), 409)
    assert job in problem["detail"] and problem["type"].endswith("dataset-in-use")
    transition(session, session.get(Job, job), "cancelled")
    assert client.delete(f"/v1/datasets/{dev}", headers=alice).status_code == 204
    assert [p.name for p in settings.datasets_dir.iterdir()] == [f"{dataset_id}.jsonl"]
    # Only the dev reference is cleared; the training dataset and the submitted spec stay as they were.
    got = client.get(f"/v1/jobs/{job}", headers=alice).json()
    assert (got["dataset_id"], got["dev_dataset_id"]) == (dataset_id, None)
    assert got["spec"]["data"]["dev_dataset_id"] == dev
