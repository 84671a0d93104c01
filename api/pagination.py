"""Keyset cursors shared by the list routes: an opaque token for (created_at, id) of a page's last row."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_

from api.errors import field_error, validation_problem

# Ids are uuid4 hex (api.db.models.new_id); anything else cannot name a row.
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
MAX_CURSOR_LENGTH = 200


def is_id(value: str) -> bool:
    return ID_PATTERN.fullmatch(value) is not None


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps({"t": created_at.isoformat(), "i": row_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of a cursor this API issued; a 422 naming `cursor` for anything else."""
    try:
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError("too long")
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        created_at, row_id = datetime.fromisoformat(raw["t"]), raw["i"]
        if created_at.tzinfo is None or not isinstance(row_id, str) or not is_id(row_id):
            raise ValueError("not a cursor")
        return created_at, row_id
    except (ValueError, KeyError, TypeError, OverflowError):  # binascii.Error is a ValueError
        raise validation_problem(
            "invalid cursor",
            [field_error("cursor", "not a cursor returned by this API", ["query", "cursor"])],
        ) from None


def after_cursor(model: Any, cursor: str) -> Any:
    """The WHERE clause of the rows after the cursor, newest first (keyset on (created_at, id) descending:
    stable under inserts, no OFFSET scans)."""
    created_at, row_id = decode_cursor(cursor)
    return or_(model.created_at < created_at, and_(model.created_at == created_at, model.id < row_id))
