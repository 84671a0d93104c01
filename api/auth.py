"""Bearer API keys. Every /v1 route resolves the caller's owner; other owners' objects answer 404."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.deps import SessionDep
from api.errors import ProblemError
from api.services.keys import create_api_key, find_active_key, revoke_api_key

__all__ = ["CurrentPrincipal", "Principal", "create_api_key", "require_principal", "revoke_api_key"]


@dataclass(frozen=True)
class Principal:
    owner: str
    key_id: str


def _unauthorized(detail: str, error: str | None) -> ProblemError:
    challenge = 'Bearer realm="dskd"' + (f', error="{error}"' if error else "")
    return ProblemError(401, detail, slug="unauthorized", headers={"WWW-Authenticate": challenge})


def require_principal(request: Request, session: SessionDep) -> Principal:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized("missing Authorization: Bearer <api key>", None)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("the Authorization header must be 'Bearer <api key>'", "invalid_request")
    key = find_active_key(session, token.strip())
    if key is None:
        raise _unauthorized("the API key is invalid or revoked", "invalid_token")
    return Principal(owner=key.owner, key_id=key.id)


CurrentPrincipal = Annotated[Principal, Depends(require_principal)]
