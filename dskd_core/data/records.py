"""Reading instruction data into (prompt, response) records.

Sources: a JSONL file (one object per line), a JSON file holding a list of objects, or a local Hugging Face
dataset directory written by `save_to_disk` (a `Dataset`, or a `DatasetDict` from which one split is taken).

Layouts, detected per record unless the field names are set in the `DataSpec`:
- prompt/response pairs: the prompt is the first of `prompt, instruction, question, query, input` present, the
  response the first of `response, output, completion, answer, target`; an optional context is the first of
  `context, input` that is not already the prompt (Dolly's instruction/context/response, Alpaca's
  instruction/input/output);
- chat: `messages`, a list of `{role, content}`; the last `assistant` turn is the response and every turn before
  it is the prompt conversation (turns after it are not used).
Every other field (e.g. `references`, a list of acceptable answers) is kept in `Record.extra`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dskd_core.spec import DataSpec

PROMPT_FIELDS = ("prompt", "instruction", "question", "query", "input")
RESPONSE_FIELDS = ("response", "output", "completion", "answer", "target")
CONTEXT_FIELDS = ("context", "input")
MESSAGES_FIELDS = ("messages",)


class DataError(ValueError):
    """Data that cannot be used; the message names the file, the record and what to change."""


@dataclass
class Record:
    """One training example before templating and tokenisation."""

    prompt: (
        str  # for the chat layout: the prompt conversation rendered as plain text (see `conversation_text`)
    )
    response: str
    context: str | None = None
    # Chat layout: the turns before the response, as {role, content} dicts.
    messages: list[dict[str, str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "train.jsonl line 17": where the record came from, for error messages

    @property
    def references(self) -> list[str]:
        """Acceptable answers for evaluation: the `references` field when present, else the response."""
        refs = self.extra.get("references")
        if isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs):
            return refs
        return [self.response]


@dataclass(frozen=True)
class FieldNames:
    """Explicit field names (None = auto-detect)."""

    prompt: str | None = None
    response: str | None = None
    context: str | None = None
    messages: str | None = None

    @classmethod
    def from_spec(cls, spec: DataSpec) -> FieldNames:
        return cls(spec.prompt_field, spec.response_field, spec.context_field, spec.messages_field)


def conversation_text(messages: list[dict[str, str]]) -> str:
    """Plain-text rendering of a prompt conversation for templates other than 'chat'.

    A single user turn is its content as is; longer conversations become "Role: content" paragraphs.
    """
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def load_records(data: DataSpec | str | Path, *, split: str = "train") -> list[Record]:
    """Read every record of `data` (a `DataSpec`'s `path`, or a path with auto-detected fields).

    `split` picks the split of a `DatasetDict` directory (ignored for files and single datasets).
    Raises `DataError` for a missing source, an unreadable record or an empty dataset.
    """
    if isinstance(data, DataSpec):
        if data.path is None:
            raise DataError(
                "data.path is not set (the service resolves data.dataset_id to a path before training)"
            )
        return read_records(data.path, FieldNames.from_spec(data), split=split)
    return read_records(data, FieldNames(), split=split)


def read_records(path: str | Path, fields: FieldNames, *, split: str = "train") -> list[Record]:
    path = Path(path)
    records = [parse_record(raw, fields, where) for where, raw in _iter_raw(path, split)]
    if not records:
        raise DataError(f"{path}: the dataset is empty (no records)")
    return records


def split_dev(records: list[Record], ratio: float, *, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Hold out round(ratio·n) records (at least one when ratio > 0) as dev, chosen by a seeded shuffle.

    Both parts keep the file order; the split depends only on (n, ratio, seed), so it is reproducible.
    """
    if ratio <= 0:
        return list(records), []
    n = len(records)
    n_dev = max(1, round(ratio * n))
    if n_dev >= n:
        raise DataError(f"dev_ratio={ratio} leaves no training records out of {n}; lower it or add data")
    dev_idx = set(random.Random(seed).sample(range(n), n_dev))
    train = [r for i, r in enumerate(records) if i not in dev_idx]
    dev = [r for i, r in enumerate(records) if i in dev_idx]
    return train, dev


# --- sources -------------------------------------------------------------------------------------------------


def _iter_raw(path: Path, split: str) -> Iterator[tuple[str, Any]]:
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        yield from _iter_hf_dir(path, split)
    elif path.suffix == ".json":
        yield from _iter_json_array(path)
    else:
        yield from _iter_jsonl(path)


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{where}: not valid JSON ({e.msg} at column {e.colno}); expected one object per line"
                ) from e


def _iter_json_array(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path.name}: not valid JSON ({e.msg} at line {e.lineno}); use a list of objects or JSONL"
        ) from e
    if not isinstance(raw, list):
        raise DataError(
            f"{path.name}: a .json data file must hold a list of objects (or use JSONL, one per line)"
        )
    for i, obj in enumerate(raw, start=1):
        yield f"{path.name} record {i}", obj


def _iter_hf_dir(path: Path, split: str) -> Iterator[tuple[str, Any]]:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a project dependency
        raise DataError(f"{path}: reading a dataset directory needs the 'datasets' package") from e
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # not a saved dataset, or an unreadable one
        raise DataError(
            f"{path}: not a Hugging Face dataset saved with save_to_disk ({e}); give a JSONL file or such a directory"
        ) from e
    name = path.name
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split '{split}' (available: {', '.join(ds)}); set data.split")
        ds, name = ds[split], f"{path.name}[{split}]"
    for i, row in enumerate(ds, start=1):
        yield f"{name} row {i}", row


# --- layouts -------------------------------------------------------------------------------------------------


def parse_record(raw: Any, fields: FieldNames, where: str) -> Record:
    """Turn one raw object into a `Record`, or raise a `DataError` that says what is missing and how to fix it."""
    if not isinstance(raw, Mapping):
        raise DataError(f"{where}: expected an object with named fields, got {type(raw).__name__}")
    if fields.messages is not None:
        return _parse_chat(raw, fields.messages, where)
    explicit = fields.prompt is not None or fields.response is not None
    if not explicit and _first(raw, PROMPT_FIELDS) is None and _first(raw, MESSAGES_FIELDS) is not None:
        return _parse_chat(raw, _first(raw, MESSAGES_FIELDS), where)
    return _parse_pair(raw, fields, where)


def _first(raw: Mapping[str, Any], names: tuple[str, ...], exclude: str | None = None) -> str | None:
    return next((n for n in names if n in raw and n != exclude and raw[n] is not None), None)


def _text(raw: Mapping[str, Any], name: str, where: str) -> str:
    value = raw[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be text, got {type(value).__name__}")
    return value


def _pick(raw: Mapping[str, Any], explicit: str | None, names: tuple[str, ...], role: str, where: str) -> str:
    if explicit is not None:
        if explicit not in raw or raw[explicit] is None:
            raise DataError(
                f"{where}: no field '{explicit}' (data.{role}_field); the record has {_keys(raw)}"
            )
        return explicit
    found = _first(raw, names)
    if found is None:
        hint = " or data.messages_field for a chat layout" if role == "prompt" else ""
        raise DataError(
            f"{where}: no {role} field (looked for {', '.join(names)}); the record has {_keys(raw)}; "
            f"set data.{role}_field{hint}"
        )
    return found


def _parse_pair(raw: Mapping[str, Any], fields: FieldNames, where: str) -> Record:
    prompt_name = _pick(raw, fields.prompt, PROMPT_FIELDS, "prompt", where)
    response_name = _pick(raw, fields.response, RESPONSE_FIELDS, "response", where)
    if prompt_name == response_name:
        raise DataError(
            f"{where}: the prompt and the response both come from field '{prompt_name}'; set data.response_field"
        )
    if fields.context is not None:
        context_name = fields.context if fields.context in raw else None
        if context_name is None:
            raise DataError(
                f"{where}: no field '{fields.context}' (data.context_field); the record has {_keys(raw)}"
            )
    else:
        context_name = _first(raw, CONTEXT_FIELDS, exclude=prompt_name)
        if context_name == response_name:
            context_name = None
    prompt, response = _text(raw, prompt_name, where), _text(raw, response_name, where)
    context = (
        _text(raw, context_name, where)
        if context_name is not None and raw[context_name] is not None
        else None
    )
    _check_nonempty(prompt, response, where, prompt_name, response_name)
    used = {prompt_name, response_name, context_name}
    extra = {k: v for k, v in raw.items() if k not in used}
    return Record(prompt, response, context or None, None, extra, where)


def _parse_chat(raw: Mapping[str, Any], name: str, where: str) -> Record:
    if name not in raw:
        raise DataError(f"{where}: no field '{name}' (data.messages_field); the record has {_keys(raw)}")
    turns = raw[name]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field '{name}' must be a non-empty list of {{role, content}} turns")
    messages = []
    for i, turn in enumerate(turns, start=1):
        ok = (
            isinstance(turn, Mapping)
            and isinstance(turn.get("role"), str)
            and isinstance(turn.get("content"), str)
        )
        if not ok:
            raise DataError(f"{where}: turn {i} of '{name}' must be an object with text 'role' and 'content'")
        messages.append({"role": turn["role"], "content": turn["content"]})
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(f"{where}: '{name}' has no assistant turn to use as the response")
    if last == 0:
        raise DataError(
            f"{where}: '{name}' starts with the assistant turn; the response needs a prompt turn before it"
        )
    prompt_turns, response = messages[:last], messages[last]["content"]
    prompt = conversation_text(prompt_turns)
    _check_nonempty(prompt, response, where, name, f"{name} (last assistant turn)")
    extra = {k: v for k, v in raw.items() if k != name}
    return Record(prompt, response, None, prompt_turns, extra, where)


def _check_nonempty(prompt: str, response: str, where: str, prompt_name: str, response_name: str) -> None:
    if not prompt.strip():
        raise DataError(f"{where}: the prompt ('{prompt_name}') is empty")
    if not response.strip():
        raise DataError(
            f"{where}: the response ('{response_name}') is empty; remove the record or fill it in"
        )


def _keys(raw: Mapping[str, Any]) -> str:
    keys = list(raw)
    return "fields " + ", ".join(keys[:12]) + (" ..." if len(keys) > 12 else "") if keys else "no fields"
