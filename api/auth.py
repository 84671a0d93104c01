"""Bearer API keys. Every /v1 route resolves the caller's owner; other owners' objects answer 404.

The scheme is declared with FastAPI's `HTTPBearer`, so the OpenAPI schema carries a security scheme and the
docs' Authorize button sends the key; the errors stay our own 401 problem documents with an RFC 6750 challenge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import SessionDep
from api.errors import ProblemError
from api.key_cache import KeyCache
from api.services.keys import create_api_key, find_active_key, hash_secret, revoke_api_key

__all__ = [
    "BEARER",
    "CurrentPrincipal",
    "Principal",
    "create_api_key",
    "require_principal",
    "revoke_api_key",
]

# auto_error=False: a missing or non-bearer header comes through as None and is answered below as a problem.
BEARER = HTTPBearer(
    scheme_name="ApiKey",
    bearerFormat="dskd_…",
    description="An API key from `dskd keys create NAME`, sent as `Authorization: Bearer <key>`.",
    auto_error=False,
)


@dataclass(frozen=True)
class Principal:
    owner: str
    key_id: str


def _unauthorized(detail: str, error: str | None) -> ProblemError:
    challenge = 'Bearer realm="dskd"' + (f', error="{error}"' if error else "")
    return ProblemError(401, detail, slug="unauthorized", headers={"WWW-Authenticate": challenge})


def require_principal(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Principal:
    if credentials is None:
        if not request.headers.get("authorization"):
            raise _unauthorized("missing Authorization: Bearer <api key>", None)
        raise _unauthorized("the Authorization header must be 'Bearer <api key>'", "invalid_request")
    token = credentials.credentials.strip()
    if not token:
        raise _unauthorized("the Authorization header must be 'Bearer <api key>'", "invalid_request")
    cache: KeyCache | None = getattr(request.app.state, "key_cache", None)
    if cache is None:
        key = find_active_key(session, token)
        if key is None:
            raise _unauthorized("the API key is invalid or revoked", "invalid_token")
        return Principal(owner=key.owner, key_id=key.id)
    # The version is read before the key: a revocation committed after this read changes it, so the cached
    # entry written below is not trusted by any later request (api/key_cache.py).
    version = cache.version.get()
    key_hash = hash_secret(token)
    hit = cache.get(key_hash, version)
    if hit is not None:
        return Principal(owner=hit[0], key_id=hit[1])
    key = find_active_key(session, token)
    if key is None:
        raise _unauthorized("the API key is invalid or revoked", "invalid_token")
    cache.put(key_hash, key.owner, key.id, version)
    return Principal(owner=key.owner, key_id=key.id)


CurrentPrincipal = Annotated[Principal, Depends(require_principal)]
