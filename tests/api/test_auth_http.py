"""Auth on every /v1 route: missing, malformed, invalid and revoked keys → 401; other owners → 404."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.db.models import ApiKey
from api.services.keys import create_api_key, find_active_key, hash_secret, revoke_api_key
from tests.api.conftest import assert_problem, job_body

# (method, path template, needs an object of the owner): every authenticated route.
ROUTES = [
    ("POST", "/v1/jobs", False),
    ("GET", "/v1/jobs", False),
    ("GET", "/v1/jobs/{job}", True),
    ("POST", "/v1/jobs/{job}/cancel", True),
    ("GET", "/v1/jobs/{job}/events", True),
    ("GET", "/v1/jobs/{job}/metrics", True),
    ("GET", "/v1/jobs/{job}/artifacts", True),
    ("GET", "/v1/jobs/{job}/artifacts/model.safetensors", True),
    ("POST", "/v1/datasets", False),
    ("GET", "/v1/datasets", False),
    ("GET", "/v1/datasets/{dataset}", True),
    ("DELETE", "/v1/datasets/{dataset}", True),
]


def test_route_table_covers_the_app(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    # /v1/downloads/{token} is public: the signed token is its credential (tests/api/test_downloads_http.py).
    app_routes = {
        (method.upper(), path)
        for path, ops in paths.items()
        if path.startswith("/v1") and not path.startswith("/v1/downloads/")
        for method in ops
    }
    listed = {(m, p.replace("{job}", "{job_id}").replace("{dataset}", "{dataset_id}")) for m, p, _ in ROUTES}
    listed = {(m, p.replace("model.safetensors", "{name}")) for m, p in listed}
    assert app_routes == listed


def _call(client: TestClient, method: str, path: str, headers: dict[str, str], dataset_id: str, job_id: str):
    url = path.format(job=job_id, dataset=dataset_id)
    kwargs = {}
    if (method, path) == ("POST", "/v1/jobs"):
        kwargs["json"] = job_body(dataset_id)
    if (method, path) == ("POST", "/v1/datasets"):
        kwargs["files"] = {"file": ("x.jsonl", b'{"prompt": "a", "response": "b"}\n')}
    return client.request(method, url, headers=headers, **kwargs)


@pytest.mark.parametrize(("method", "path", "owned"), ROUTES)
def test_auth_on_every_route(
    client: TestClient, session, alice, bob, dataset_id, job_id, method, path, owned
) -> None:
    revoked_key, revoked_secret = create_api_key(session, "old", "alice")
    revoke_api_key(session, revoked_key.id)
    for headers, challenge in (
        ({}, 'Bearer realm="dskd"'),
        ({"Authorization": "Basic YWxpY2U6eA=="}, "invalid_request"),
        ({"Authorization": "Bearer dskd_not-a-real-key"}, "invalid_token"),
        ({"Authorization": f"Bearer {revoked_secret}"}, "invalid_token"),
    ):
        response = _call(client, method, path, headers, dataset_id, job_id)
        assert_problem(response, 401)
        assert challenge in response.headers["www-authenticate"]
    if owned:
        assert_problem(_call(client, method, path, bob, dataset_id, job_id), 404)
    assert _call(client, method, path, alice, dataset_id, job_id).status_code < 500


def test_keys_are_hashed_and_prefixed(session) -> None:
    key, secret = create_api_key(session, "ci", "team-a")
    assert secret.startswith("dskd_") and len(secret) > 40
    stored = session.get(ApiKey, key.id)
    assert stored.key_hash == hash_secret(secret) and secret not in (stored.key_hash, stored.prefix)
    assert secret.startswith(stored.prefix)
    assert find_active_key(session, secret).owner == "team-a"
    assert revoke_api_key(session, key.id) and not revoke_api_key(session, key.id)
    assert find_active_key(session, secret) is None


def test_keys_of_one_owner_share_jobs(client: TestClient, session, alice, job_id) -> None:
    _, second = create_api_key(session, "alice ci", "alice")
    assert client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {second}"}).status_code == 200


@pytest.mark.parametrize(
    "path", ["/healthz", "/docs", "/redoc", "/openapi.json", "/ui/", "/ui/js/app.js", "/metrics"]
)
def test_public_routes(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200
