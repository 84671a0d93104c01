"""Signed download links: a plain GET (no header) serves the artifact until the link expires; nothing else."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from api import signing
from tests.api.conftest import assert_problem
from tests.api.test_artifacts_http import WEIGHTS, exported  # noqa: F401  (fixture)


def _links(client: TestClient, headers, job_id: str) -> dict[str, dict]:
    return {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts", headers=headers).json()["items"]}


def test_signed_link_downloads_without_a_header(client: TestClient, alice, job_id, exported) -> None:  # noqa: F811
    link = _links(client, alice, job_id)["model.safetensors"]
    assert link["link_url"].startswith("/v1/downloads/")
    whole = client.get(link["link_url"])
    assert whole.status_code == 200 and whole.content == WEIGHTS
    assert 'filename="model.safetensors"' in whole.headers["content-disposition"]
    part = client.get(link["link_url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == WEIGHTS[100:200]


def test_tampered_or_expired_links_are_refused(client: TestClient, settings, alice, job_id, exported) -> None:  # noqa: F811
    token = _links(client, alice, job_id)["model.safetensors"]["link_url"].rsplit("/", 1)[1]
    _, mac = token.split(".")
    # Same signature, another file: the payload is covered by the MAC.
    other, _ = signing.sign(b"another server's key", job_id, "config.json", 60)
    assert_problem(client.get(f"/v1/downloads/{other.split('.')[0]}.{mac}"), 403)
    assert_problem(client.get(f"/v1/downloads/{other}"), 403)
    assert_problem(client.get("/v1/downloads/garbage"), 403)
    key = signing.signing_key(settings)
    expired, _ = signing.sign(key, job_id, "model.safetensors", 60, now=time.time() - 120)
    body = assert_problem(client.get(f"/v1/downloads/{expired}"), 403)
    assert "expired" in body["detail"]
    missing, _ = signing.sign(key, job_id, "nope.bin", 60)
    assert_problem(client.get(f"/v1/downloads/{missing}"), 404)


def test_signing_key_is_kept_in_the_data_dir(settings) -> None:
    key = signing.signing_key(settings)
    assert key == signing.signing_key(settings) and len(key) >= 32
    path = settings.data_dir / "signing.key"
    assert path.stat().st_mode & 0o777 == 0o600
    configured = settings.model_copy(update={"signing_key": "from-the-environment"})
    assert signing.signing_key(configured) == b"from-the-environment"
