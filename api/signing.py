"""Short-lived signed download links: a browser (or curl) fetches an artifact with a plain GET, no header.

A link carries the job id, the artifact name and an expiry, signed with HMAC-SHA256 under the server's signing
key; nothing is stored. The key is `DSKD_SIGNING_KEY`, or a random one kept in `data_dir/signing.key` (mode
0600) so that the API processes of one host share it; several hosts must set the same `DSKD_SIGNING_KEY`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from api.settings import Settings


@dataclass(frozen=True)
class LinkClaim:
    job_id: str
    name: str
    expires_at: int


class InvalidLink(ValueError):
    pass


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(settings: Settings) -> bytes:
    if settings.signing_key:
        return settings.signing_key.encode()
    path = Path(settings.data_dir) / "signing.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: of two processes starting at once, one writes the key and the other reads it.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
    for _ in range(50):  # the writer may not have flushed yet
        key = path.read_text().strip()
        if key:
            return key.encode()
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty; delete it or set DSKD_SIGNING_KEY")


def sign(key: bytes, job_id: str, name: str, ttl_seconds: int, now: float | None = None) -> tuple[str, int]:
    """The token and its expiry (Unix seconds)."""
    expires = int((now if now is not None else time.time()) + ttl_seconds)
    payload = _b64(json.dumps({"j": job_id, "n": name, "e": expires}, separators=(",", ":")).encode())
    mac = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{mac}", expires


def verify(key: bytes, token: str, now: float | None = None) -> LinkClaim:
    payload, _, mac = token.partition(".")
    expected = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    if not mac or not hmac.compare_digest(mac, expected):
        raise InvalidLink("the download link is not valid (it was altered or signed by another server)")
    try:
        data = json.loads(_unb64(payload))
        claim = LinkClaim(job_id=str(data["j"]), name=str(data["n"]), expires_at=int(data["e"]))
    except (ValueError, KeyError, TypeError):
        raise InvalidLink("the download link is not valid") from None
    if claim.expires_at < (now if now is not None else time.time()):
        raise InvalidLink("the download link has expired; list the job's artifacts again for a fresh one")
    return claim
