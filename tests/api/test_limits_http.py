"""Limits and malformed input: every case answers a precise 4xx problem+json (never a 500), before
authentication where the body is concerned, naming the field at fault."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient

from api.services.jobs import claim_job
from tests.api.conftest import GOOD_LINES, assert_problem, job_body, upload

NO_KEY: dict[str, str] = {}


def _post_raw(client: TestClient, path: str, body: bytes, headers: dict[str, str]) -> object:
    return client.post(path, content=body, headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/jobs"),
        ("POST", "/v1/jobs/0123456789abcdef0123456789abcdef/cancel"),
        ("GET", "/v1/jobs"),
        ("DELETE", "/v1/datasets/0123456789abcdef0123456789abcdef"),
    ],
)
def test_declared_body_size_on_every_route_before_auth(
    client: TestClient, settings, method: str, path: str
) -> None:
    too_big = b"x" * (settings.max_request_bytes + 1)
    declared = client.request(method, path, content=too_big, headers={"Content-Type": "application/json"})
    assert_problem(declared, 413)  # no key, yet 413: refused before authentication
    assert declared.headers["connection"] == "close"


def test_streamed_body_is_cut_off_at_the_limit(client: TestClient, settings) -> None:
    def chunks():  # no Content-Length: counted while it streams in
        for _ in range(settings.max_request_bytes // 1000 * 3):
            yield b"y" * 1000

    response = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert "limit of" in assert_problem(response, 413)["detail"]


def test_upload_limit_before_auth(client: TestClient, settings) -> None:
    body = b"z" * (settings.max_upload_bytes + 70 * 1024)
    response = client.post("/v1/datasets", files={"file": ("big.jsonl", body)})
    assert "upload limit" in assert_problem(response, 413)["detail"]


@pytest.mark.parametrize(
    ("raw", "field", "needle"),
    [
        ('{"training": {"epochs": Infinity}}', "body", "not a number"),
        ('{"training": {"epochs": NaN}}', "body", "not a number"),
        ('{"training": {"lr": 1e400}}', "training.lr", "64-bit float"),
        ('{"training": {"seed": 1180591620717411303424}}', "training.seed", "64-bit range"),
        ('{"name": "a\\u0000b"}', "name", "NUL"),
        ('{"data": {"a\\u0000": 1}}', "data.a\x00", "NUL"),
        ("[" * 5000 + "]" * 5000, "body", "nested deeper"),
        ('{"a": ' * 40 + "1" + "}" * 40, "a." * 31 + "a", "nested deeper"),
    ],
)
def test_json_values_nothing_downstream_should_see(
    client: TestClient, alice, raw: str, field: str, needle: str
) -> None:
    for headers in (NO_KEY, alice):
        problem = assert_problem(_post_raw(client, "/v1/jobs", raw.encode(), headers), 422, field)
        assert needle in problem["errors"][0]["msg"]


def test_spec_values_are_bounded(client: TestClient, alice, dataset_id: str, settings) -> None:
    def refused(field: str, **overrides: object) -> str:
        body = job_body(dataset_id, **overrides)
        problem = assert_problem(client.post("/v1/jobs", headers=alice, json=body), 422, field)
        return next(e["msg"] for e in problem["errors"] if e["field"] == field)

    small = {"batch_size": 2, "max_length": 64, "max_prompt_length": 32}
    assert "limit of 100000" in refused("training.max_steps", training={**small, "max_steps": 10**12})
    assert "limit of 100.0" in refused("training.epochs", training={**small, "epochs": 1000})
    settings.max_job_steps = 10  # 4 rows, batch 2: 2 steps an epoch
    assert "about 12 steps" in refused("training.epochs", training={**small, "epochs": 6})
    settings.max_job_steps = 100_000
    assert "limit" in refused("training.max_length", training={**small, "max_steps": 2, "max_length": 10**6})
    assert "limit" in refused("training.batch_size", training={**small, "max_steps": 2, "batch_size": 4000})
    settings.max_job_length = 1000
    assert "limit of 1000" in refused("evaluation.max_new_tokens", evaluation={"max_new_tokens": 1001})
    assert "less than or equal" in refused("training.seed", training={**small, "max_steps": 2, "seed": 2**40})
    assert "less than or equal" in refused("evaluation.seeds.0", evaluation={"seeds": [2**33]})
    for template in ("{prompt:>20000000}", "{prompt!r}", "{prompt:{context}}"):
        msg = refused("data.prompt_template", data={"dataset_id": dataset_id, "prompt_template": template})
        assert "only plain {prompt} and {context}" in msg
    ok = job_body(
        dataset_id, data={"dataset_id": dataset_id, "prompt_template": "Q: {prompt}\n{context}\nA:"}
    )
    assert client.post("/v1/jobs", headers=alice, json=ok).status_code == 201


def test_queued_jobs_quota_is_429(client: TestClient, alice, bob, dataset_id: str, settings, session) -> None:
    settings.max_queued_jobs_per_key = 2
    first, second = (client.post("/v1/jobs", headers=alice, json=job_body(dataset_id)) for _ in range(2))
    assert first.status_code == second.status_code == 201
    third = client.post("/v1/jobs", headers=alice, json=job_body(dataset_id))
    problem = assert_problem(third, 429)
    assert third.headers["retry-after"].isdigit() and "queued jobs" in problem["detail"]
    # A running job no longer waits; a cancelled one is gone: either frees a place.
    claim_job(session, first.json()["id"], "w", 60)
    assert client.post("/v1/jobs", headers=alice, json=job_body(dataset_id)).status_code == 201
    assert_problem(client.post("/v1/jobs", headers=alice, json=job_body(dataset_id)), 429)
    client.post(f"/v1/jobs/{second.json()['id']}/cancel", headers=alice)
    assert client.post("/v1/jobs", headers=alice, json=job_body(dataset_id)).status_code == 201
    bob_data = upload(client, bob).json()["id"]  # another tenant has its own quota
    assert client.post("/v1/jobs", headers=bob, json=job_body(bob_data)).status_code == 201


def _cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/datasets"])
def test_tampered_cursors(client: TestClient, alice, path: str) -> None:
    good_id = "0123456789abcdef0123456789abcdef"
    for cursor in (
        "%%%",
        "bm90IGpzb24",  # "not json"
        _cursor([1, 2]),
        _cursor({"t": 5, "i": good_id}),
        _cursor({"t": "2024-01-01T00:00:00", "i": good_id}),  # naive time
        _cursor({"t": "2024-01-01T00:00:00+00:00", "i": "x\u0000y"}),
        _cursor({"t": "2024-01-01T00:00:00+00:00", "i": 7}),
        _cursor({"t": "99999-01-01T00:00:00+00:00", "i": good_id}),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        "A" * 201,
    ):
        assert_problem(client.get(path, headers=alice, params={"cursor": cursor}), 422, "cursor")
    assert (
        client.get(
            path, headers=alice, params={"cursor": _cursor({"t": "2024-01-01T00:00:00+00:00", "i": good_id})}
        ).status_code
        == 200
    )


def test_malformed_ids_and_names_are_404(client: TestClient, alice, job_id: str) -> None:
    for path in (
        "/v1/jobs/%00",
        "/v1/jobs/" + "a" * 300,
        "/v1/datasets/%00abc",
        f"/v1/jobs/{job_id}/artifacts/a%00b",
        f"/v1/jobs/{job_id}/artifacts/" + "n" * 600,
    ):
        assert_problem(client.get(path, headers=alice), 404)
    assert_problem(client.delete("/v1/datasets/%00", headers=alice), 404)
    assert_problem(client.post("/v1/jobs/%00/cancel", headers=alice), 404)


def test_event_seq_within_the_column_range(client: TestClient, alice, job_id: str) -> None:
    url = f"/v1/jobs/{job_id}/events"
    assert_problem(client.get(url, headers=alice, params={"after_seq": 2**31}), 422, "after_seq")
    assert client.get(url, headers=alice, params={"after_seq": 2**31 - 1}).status_code == 200
    sse = {**alice, "Accept": "text/event-stream"}
    for value in (str(2**31), str(2**70), "-1", "x"):
        assert_problem(client.get(url, headers={**sse, "Last-Event-ID": value}), 422, "Last-Event-ID")


def test_idempotency_key_must_be_a_visible_token(client: TestClient, alice, dataset_id: str) -> None:
    for key in ("", "a b", "x" * 201):
        response = client.post(
            "/v1/jobs", headers={**alice, "Idempotency-Key": key}, json=job_body(dataset_id)
        )
        assert_problem(response, 422, "idempotency-key")
    assert client.get("/v1/jobs", headers=alice).json()["items"] == []


def test_405_names_every_allowed_method(client: TestClient, alice, job_id: str) -> None:
    response = client.delete("/v1/jobs", headers=alice)
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET, POST"
    assert client.put(f"/v1/datasets/{job_id}", headers=alice).headers["allow"] == "DELETE, GET"


def test_upload_with_bom_and_deep_nesting(client: TestClient, alice, settings) -> None:
    body = b"\xef\xbb\xbf" + ("\n".join(GOOD_LINES) + "\n").encode()
    response = client.post("/v1/datasets", headers=alice, files={"file": ("bom.jsonl", body)})
    assert response.status_code == 201, response.text
    assert response.json()["row_count"] == len(GOOD_LINES)
    stored = settings.datasets_dir / f"{response.json()['id']}.jsonl"
    assert stored.read_bytes() == body[3:]  # the engine reads plain UTF-8
    deep = '{"prompt": "a", "response": "b"}\n' + '{"prompt": ' + "[" * 1500 + "]" * 1500 + "}\n"
    problem = assert_problem(upload(client, alice, [deep]), 422, "file")
    assert problem["errors"][0]["loc"] == ["body", "file", "line 2"] and "nested" in problem["detail"]


def test_upload_label_drops_control_characters(client: TestClient, alice) -> None:
    response = client.post(
        "/v1/datasets",
        headers=alice,
        files={"file": ("x.jsonl", b'{"prompt": "a", "response": "b"}\n')},
        data={"name": "my\x00set\x07"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "myset"


def test_security_headers(client: TestClient, alice, job_id: str) -> None:
    api = client.get(f"/v1/jobs/{job_id}", headers=alice)
    assert api.headers["x-content-type-options"] == "nosniff"
    assert api.headers["x-frame-options"] == "DENY" and api.headers["referrer-policy"] == "no-referrer"
    assert api.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in api.headers["content-security-policy"]
    assert client.get("/healthz").headers["x-content-type-options"] == "nosniff"


def test_dataset_list_is_paginated(client: TestClient, alice) -> None:
    ids = [upload(client, alice).json()["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        page = client.get(
            "/v1/datasets", headers=alice, params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        ).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


def test_types_are_strict_over_http(client: TestClient, alice, dataset_id: str) -> None:
    for field, value in (("max_steps", "3"), ("lr", "0.001"), ("max_steps", True)):
        body = job_body(dataset_id)
        body["training"][field] = value
        assert_problem(client.post("/v1/jobs", headers=alice, json=body), 422, f"training.{field}")
    body = job_body(dataset_id)
    body["training"]["lr"] = 1  # an integer is a number
    assert client.post("/v1/jobs", headers=alice, json=body).status_code == 201
