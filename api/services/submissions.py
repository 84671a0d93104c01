"""Checks on a submitted JobSpec before it is stored, so a job that cannot run is refused with a 422 at once
instead of failing in a worker: no user paths, datasets (training and dev) of the caller's own, models only under
models_root or by hub id, the service's bounds on steps, epochs, lengths and batch sizes, the tokenizer-pair rule
of the method, and the student's LoRA target modules.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy.orm import Session

from api.services.datasets import get_owned
from api.services.lora_modules import lora_problem
from api.services.tokenizer_pair import pair_problem
from api.settings import Settings
from dskd_core.spec import JobSpec

# Hub ids as the hub accepts them: "org/name", word characters, dots and dashes, no ".." or "--" runs.
# A bare name ("studnet") is never taken as a hub id: it is far more often a typo of a local directory.
HUB_ID = re.compile(r"^(?!.*(\.\.|--))[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
# Paths the engine would read or write that only the server may set, and the field a user sets instead.
SERVER_ONLY_FIELDS = {
    ("data", "path"): "data.dataset_id",
    ("data", "dev_path"): "data.dev_dataset_id",
    ("distill", "seqkd_data_path"): "data.dataset_id",
}
MAX_NAME_PART = 255
MAX_NAME_LENGTH = 1024


@dataclass
class Submission:
    spec: dict[str, Any]
    dataset_id: str
    dev_dataset_id: str | None
    request_hash: str
    errors: list[dict[str, Any]]


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from: a directory under models_root (stored relative to it) or a hub id."""

    stored: str
    local_dir: Path | None


def request_hash(spec: JobSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _name_problem(name: str) -> str | None:
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "control characters are not allowed in a model name"
    if len(name) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} characters"
    if any(len(part.encode()) > MAX_NAME_PART for part in name.split("/")):
        return f"a path component is longer than {MAX_NAME_PART} bytes"
    return None


def resolve_model(
    name: str, models_root: Path, *, allow_hub: bool = True
) -> tuple[ModelRef | None, str | None]:
    """(reference, None) or (None, reason). Local directories are stored relative to models_root, so no
    server path is ever stored or shown; the worker resolves them under its own models_root."""
    problem = _name_problem(name)
    if problem:
        return None, problem
    root = models_root.resolve()
    given = Path(name)
    try:
        candidate = (given if given.is_absolute() else root / given).resolve()
        is_dir = candidate.is_dir()
    except (OSError, RuntimeError, ValueError):  # symlink loops, names the filesystem refuses
        return None, f"'{name}' is not a usable model directory name"
    inside = candidate.is_relative_to(root)
    if inside and is_dir and candidate != root:
        return ModelRef(PurePosixPath(candidate.relative_to(root)).as_posix(), candidate), None
    if not inside:
        return None, "a local model must be a directory under the server's models root"
    if given.is_absolute() or name.startswith(("./", "~", ".")) or ".." in given.parts:
        return None, f"no model directory '{name}' under the models root"
    if HUB_ID.fullmatch(name):
        if not allow_hub:
            return None, (
                f"no model directory '{name}' under the models root, and this server does not load models "
                "from the hub (allow_hub_models is off)"
            )
        return ModelRef(name, None), None
    return None, (
        f"no model directory '{name}' under the models root; a hub id has the form 'org/name' "
        "(for example 'openai-community/gpt2')"
    )


def _bound_errors(spec: JobSpec, settings: Settings, rows: int | None) -> list[tuple[tuple[str, ...], str]]:
    """The service's own limits (the engine's ranges are wider: they serve the command line too)."""
    t, ev = spec.training, spec.evaluation
    errors: list[tuple[tuple[str, ...], str]] = []

    def over(loc: tuple[str, ...], value: float | None, limit: float, what: str) -> None:
        if value is not None and value > limit:
            errors.append((loc, f"{what} {value} is above this server's limit of {limit}"))

    over(("training", "max_steps"), t.max_steps, settings.max_job_steps, "max_steps")
    over(("training", "epochs"), t.epochs, settings.max_job_epochs, "epochs")
    over(("training", "max_length"), t.max_length, settings.max_job_length, "max_length")
    over(("training", "batch_size"), t.batch_size, settings.max_job_batch_size, "batch_size")
    over(("evaluation", "max_new_tokens"), ev.max_new_tokens, settings.max_job_length, "max_new_tokens")
    over(("evaluation", "batch_size"), ev.batch_size, settings.max_job_batch_size, "batch_size")
    if t.max_steps is None and t.epochs is not None and rows is not None and not errors:
        # The engine's step count: micro-batches per epoch (the training share of the rows) over grad_accum.
        train_rows = spec.data.max_examples or rows
        steps = math.ceil(t.epochs * math.ceil(train_rows / t.batch_size) / t.grad_accum)
        if steps > settings.max_job_steps:
            errors.append(
                (
                    ("training", "epochs"),
                    f"{t.epochs} epochs over {train_rows} records are about {steps} steps, above this "
                    f"server's limit of {settings.max_job_steps}",
                )
            )
    return errors


def check_submission(session: Session, spec: JobSpec, *, owner: str, settings: Settings) -> Submission:
    assert settings.models_root is not None
    errors: list[dict[str, Any]] = []

    def err(loc: tuple[str, ...], msg: str) -> None:
        errors.append({"loc": ["body", *loc], "field": ".".join(loc), "msg": msg})

    raw = spec.model_dump(mode="json")
    for (section, key), instead in SERVER_ONLY_FIELDS.items():
        if raw[section].get(key) is not None:
            err(
                (section, key), f"set by the server; upload the data with POST /v1/datasets and use {instead}"
            )
    dataset_id = raw["data"].get("dataset_id")
    dataset = get_owned(session, owner, dataset_id) if dataset_id else None
    if not dataset_id:
        err(("data", "dataset_id"), "required: the id of a dataset uploaded with POST /v1/datasets")
    elif dataset is None:
        err(("data", "dataset_id"), f"no dataset '{dataset_id}'")
    dev_dataset_id = raw["data"].get("dev_dataset_id")
    if dev_dataset_id is not None and get_owned(session, owner, dev_dataset_id) is None:
        err(("data", "dev_dataset_id"), f"no dataset '{dev_dataset_id}'")
    for loc, msg in _bound_errors(spec, settings, dataset.row_count if dataset else None):
        err(loc, msg)
    local: dict[str, Path | None] = {}
    for role in ("teacher", "student"):
        model = raw.get(role)
        if model is None:
            continue
        ref, reason = resolve_model(
            model["name_or_path"], settings.models_root, allow_hub=settings.allow_hub_models
        )
        if ref is None:
            err((role, "name_or_path"), reason or "invalid")
            continue
        model["name_or_path"] = ref.stored
        local[role] = ref.local_dir
    teacher_dir, student_dir = local.get("teacher"), local.get("student")
    if student_dir is not None:
        problem = lora_problem(spec.student.lora, student_dir)
        if problem:
            err(("student", "lora", "target_modules"), problem)
    if teacher_dir is not None and student_dir is not None:
        try:
            problem = pair_problem(spec.distill.method, teacher_dir, student_dir)
        except ValueError as e:
            problem = str(e)
        if problem:
            err(("distill", "method"), problem)
    return Submission(
        spec=raw,
        dataset_id=dataset_id or "",
        dev_dataset_id=dev_dataset_id,
        request_hash=request_hash(spec),
        errors=errors,
    )
