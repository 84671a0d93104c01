"""API keys: random secrets shown once, stored as sha256 hashes."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.base import utcnow
from api.db.models import ApiKey

KEY_PREFIX = "dskd_"


def hash_secret(secret: str) -> str:
    # A 256-bit random secret needs no slow KDF: sha256 cannot be brute-forced back to it.
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(session: Session, name: str, owner: str) -> tuple[ApiKey, str]:
    """Create and commit a key; returns the row and the secret (the only time it is available)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name, owner=owner, key_hash=hash_secret(secret), prefix=secret[:12], created_at=utcnow()
    )
    session.add(key)
    session.commit()
    return key, secret


def find_active_key(session: Session, secret: str) -> ApiKey | None:
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(secret)))
    if key is None or key.revoked_at is not None:
        return None
    return key


def revoke_api_key(session: Session, key_id: str) -> bool:
    """Revoke by id (or by display prefix); True if a key was revoked."""
    key = session.get(ApiKey, key_id) or session.scalar(select(ApiKey).where(ApiKey.prefix == key_id))
    if key is None or key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    session.commit()
    return True


def list_api_keys(session: Session, owner: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if owner is not None:
        query = query.where(ApiKey.owner == owner)
    return list(session.scalars(query))
