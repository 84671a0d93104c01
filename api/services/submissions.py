"""Cheap checks on a submitted JobSpec before it is stored: no user paths, models only by hub id or under models_root."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from api.services.datasets import get_owned
from dskd_core.spec import JobSpec

# Hub ids as the hub accepts them: "org/name" or a legacy bare name ("gpt2"), word characters, dots and dashes,
# no ".." or "--" runs.
HUB_ID = re.compile(r"^(?!.*(\.\.|--))([A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
# Paths the engine would read or write that only the server may set.
SERVER_ONLY_FIELDS = (("data", "path"), ("data", "dev_path"), ("distill", "seqkd_data_path"))


@dataclass
class Submission:
    spec: dict[str, Any]
    dataset_id: str
    request_hash: str
    errors: list[dict[str, Any]]


def request_hash(spec: JobSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def resolve_model(name: str, models_root: Path) -> tuple[str | None, str | None]:
    """(value to store, None) or (None, reason). Local directories are stored as resolved absolute paths."""
    root = models_root.resolve()
    given = Path(name)
    candidate = (given if given.is_absolute() else root / given).resolve()
    inside = candidate.is_relative_to(root)
    looks_like_path = given.is_absolute() or name.startswith(("./", "~")) or ".." in given.parts
    if looks_like_path:
        if not inside:
            return None, "a local model must be a directory under the server's models_root"
        if not candidate.is_dir():
            return None, f"no model directory '{name}' under models_root"
        return str(candidate), None
    if inside and candidate.is_dir():
        return str(candidate), None
    if HUB_ID.fullmatch(name):
        return name, None
    return None, f"'{name}' is neither a directory under models_root nor a hub id such as 'org/name'"


def check_submission(session: Session, spec: JobSpec, *, owner: str, models_root: Path) -> Submission:
    errors: list[dict[str, Any]] = []

    def err(loc: tuple[str, ...], msg: str) -> None:
        errors.append({"loc": ["body", *loc], "field": ".".join(loc), "msg": msg})

    raw = spec.model_dump(mode="json")
    for section, key in SERVER_ONLY_FIELDS:
        if raw[section].get(key) is not None:
            err(
                (section, key),
                "set by the server; upload the data with POST /v1/datasets and use data.dataset_id",
            )
    dataset_id = raw["data"].get("dataset_id")
    if not dataset_id:
        err(("data", "dataset_id"), "required: the id of a dataset uploaded with POST /v1/datasets")
    elif get_owned(session, owner, dataset_id) is None:
        err(("data", "dataset_id"), f"no dataset '{dataset_id}'")
    for role in ("teacher", "student"):
        model = raw.get(role)
        if model is None:
            continue
        value, reason = resolve_model(model["name_or_path"], models_root)
        if reason:
            err((role, "name_or_path"), reason)
        else:
            model["name_or_path"] = value
    return Submission(spec=raw, dataset_id=dataset_id or "", request_hash=request_hash(spec), errors=errors)
