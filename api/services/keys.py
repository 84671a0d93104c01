"""API keys: random secrets shown once, stored as sha256 hashes."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.db.base import utcnow
from api.db.models import ApiKey

KEY_PREFIX = "dskd_"


def hash_secret(secret: str) -> str:
    # A 256-bit random secret needs no slow KDF: sha256 cannot be brute-forced back to it.
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRefused(ValueError):
    """A key cannot be created as asked; the message says what to do instead."""


def create_api_key(session: Session, name: str, owner: str | None = None) -> tuple[ApiKey, str]:
    """Create and commit a key; returns the row and the secret (the only time it is available).

    Names are unique. Without `owner` the key starts a tenant of its own name, and is refused if that tenant
    already exists: joining another tenant's jobs takes naming the tenant explicitly.
    """
    name = name.strip()
    if not name or len(name) > 200 or not name.isprintable():
        raise KeyRefused("a key name is 1 to 200 printable characters")
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise KeyRefused(f"a key named '{name}' already exists; choose another name")
    if owner is None:
        if session.scalar(select(ApiKey.id).where(ApiKey.owner == name).limit(1)) is not None:
            raise KeyRefused(
                f"tenant '{name}' already exists; to add this key to it, pass the tenant explicitly "
                f"(dskd keys create NAME --owner {name})"
            )
        owner = name
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name, owner=owner, key_hash=hash_secret(secret), prefix=secret[:12], created_at=utcnow()
    )
    session.add(key)
    try:
        session.commit()
    except IntegrityError:  # a concurrent create took the name: the unique constraint decides
        session.rollback()
        raise KeyRefused(f"a key named '{name}' already exists; choose another name") from None
    return key, secret


def find_active_key(session: Session, secret: str) -> ApiKey | None:
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(secret)))
    if key is None or key.revoked_at is not None:
        return None
    return key


def find_key(session: Session, ref: str) -> ApiKey | None:
    """A key by id, name or display prefix."""
    for column in (ApiKey.id, ApiKey.name, ApiKey.prefix):
        key = session.scalar(select(ApiKey).where(column == ref))
        if key is not None:
            return key
    return None


def revoke_api_key(session: Session, ref: str) -> bool:
    """Revoke by id, name or display prefix; True if a key was revoked. Open event streams of the key close
    within seconds (the event hub re-checks its subscribers' keys)."""
    key = find_key(session, ref)
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
