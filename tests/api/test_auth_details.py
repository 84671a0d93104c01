"""Details of the key check that mutation testing found unasserted: header parsing, the refusal's wording,
and revocation by reference touching exactly one key."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.services.keys import create_api_key, find_active_key, revoke_api_key
from tests.api.conftest import assert_problem


def test_several_spaces_after_bearer_are_accepted(client: TestClient, session) -> None:
    _, secret = create_api_key(session, "spaces", "alice")
    response = client.get("/v1/jobs", headers={"Authorization": f"Bearer   {secret}"})
    assert response.status_code == 200, response.text


def test_a_malformed_header_is_refused_naming_the_expected_form(client: TestClient) -> None:
    problem = assert_problem(client.get("/v1/jobs", headers={"Authorization": "Token abc"}), 401)
    assert "the Authorization header must be 'Bearer <api key>'" in problem["detail"]


def test_revoking_by_prefix_or_name_revokes_that_key_only(session) -> None:
    first, first_secret = create_api_key(session, "first", "alice")
    second, second_secret = create_api_key(session, "second", "alice")
    assert not revoke_api_key(session, "no-such-key")
    assert find_active_key(session, first_secret) and find_active_key(session, second_secret)
    assert revoke_api_key(session, first.prefix)
    assert find_active_key(session, first_secret) is None
    assert find_active_key(session, second_secret).id == second.id
    assert revoke_api_key(session, "second") and find_active_key(session, second_secret) is None
