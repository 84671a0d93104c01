"""The schema as generated clients and the docs pages see it: security scheme, operation ids, error documents,
and docs pages that load nothing from outside the server."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from api.openapi import VENDOR_VERSIONS

VENDOR_README = Path(__file__).resolve().parents[2] / "api" / "static" / "vendor" / "README.md"
EXTERNAL_URL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", re.IGNORECASE)
METHODS = {"get", "post", "put", "patch", "delete"}


def _operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [(path, m, op) for path, ops in spec["paths"].items() for m, op in ops.items() if m in METHODS]


def test_bearer_security_scheme_on_every_v1_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes == {
        "ApiKey": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "dskd_…",
            "description": schemes["ApiKey"]["description"],
        }
    }
    for path, method, op in _operations(spec):
        secured = op.get("security") == [{"ApiKey": []}]
        public = not path.startswith("/v1") or path.startswith("/v1/downloads")
        assert secured != public, (method, path)


def test_operation_ids_are_readable_and_unique(client: TestClient) -> None:
    ids = [op["operationId"] for _, _, op in _operations(client.get("/openapi.json").json())]
    assert len(ids) == len(set(ids))
    for operation_id in ids:
        # `<tag>_<verb>`, not FastAPI's default `create_job_v1_jobs_post` (name + path + method).
        assert re.fullmatch(r"[a-z]+_[a-z]+(_[a-z]+)?", operation_id), operation_id
        assert "v1" not in operation_id, operation_id
    assert {"jobs_create", "jobs_list", "jobs_get", "jobs_cancel", "events_list", "datasets_upload"} <= set(
        ids
    )


def test_every_error_response_is_a_documented_problem(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    seen: set[int] = set()
    for path, method, op in _operations(spec):
        codes = {int(c) for c in op["responses"] if c[0] in "45"}
        seen |= codes
        for code in codes:
            content = op["responses"][str(code)]["content"]
            assert content == {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }
        if op.get("security"):
            assert {401, 503} <= codes, (method, path)
        if "{" in path and path.startswith("/v1") and not path.startswith("/v1/downloads"):
            assert 404 in codes, (method, path)
    assert {401, 404, 409, 413, 422, 429, 503} <= seen


def _assert_offline_page(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert EXTERNAL_URL.search(html) is None, EXTERNAL_URL.search(html)
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets, html
    for asset in assets:
        assert asset.startswith("/ui/vendor/"), asset
        assert client.get(asset).status_code == 200, asset


def test_swagger_ui_is_served_from_local_files(client: TestClient) -> None:
    _assert_offline_page(client, "/docs")
    assert "persistAuthorization" in client.get("/docs").text


def test_redoc_is_served_from_local_files(client: TestClient) -> None:
    _assert_offline_page(client, "/redoc")


def test_vendored_versions_are_documented() -> None:
    table = VENDOR_README.read_text()
    for package, version in VENDOR_VERSIONS.items():
        assert re.search(rf"`{re.escape(package)}`[^|]*\| {re.escape(version)} \|", table), package
