"""Content keys of the teacher cache: what determines a cached teacher output, hashed.

The teacher's last hidden state at a response position is a function of (a) the teacher's weights and config,
(b) the numerics it ran with (weights dtype, autocast precision) and the storage dtype, and (c) the exact token ids
it reads up to that position. So the key has two parts:

- the ENTRY key hashes (a) and (b): one entry per teacher and numerics;
- the EXAMPLE key hashes (c): the ids the teacher reads and the positions kept (its label positions).

The tokenizer, the prompt template, the max lengths and the dataset's text act only through the token ids, so a
change to any of them changes the affected examples' keys (and only theirs): a dataset that grows is extended, not
rebuilt, and two jobs (or two students) on the same teacher and data share the entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dskd_core.spec import JobSpec

FORMAT = "1"
IGNORE_INDEX = -100
# Files that determine a model's outputs (weights and architecture); tokenizer files act through the ids.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
_FINGERPRINTS = "fingerprints.json"


def example_key(input_ids: list[int], labels: list[int]) -> str:
    """The key of one example: the ids the teacher reads and which of its positions are kept (labels ≠ −100)."""
    h = hashlib.sha256()
    h.update(np.asarray(input_ids, dtype=np.int64).tobytes())
    h.update(b"|")
    h.update(np.packbits(np.asarray(labels) != IGNORE_INDEX).tobytes())
    h.update(str(len(labels)).encode())
    return h.hexdigest()[:32]


def teacher_side(example: dict[str, list[int]]) -> tuple[list[int], list[int]]:
    """The (ids, labels) the teacher sees: its own tokenisation in a dual example, else the shared one."""
    if "teacher_input_ids" in example:
        return example["teacher_input_ids"], example["teacher_labels"]
    return example["input_ids"], example["labels"]


def entry_key(spec: JobSpec, teacher_fingerprint: str, storage_dtype: str) -> tuple[str, dict[str, Any]]:
    """The entry key and the human-readable record it is a hash of (kept as the entry's entry.json)."""
    assert spec.teacher is not None
    hashed = {
        "cache_format": FORMAT,
        "teacher_fingerprint": teacher_fingerprint,
        "teacher_dtype": spec.teacher.dtype,
        "precision": spec.training.precision,
        "storage_dtype": storage_dtype,
    }
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:24]
    # The teacher's name is shown by `dskd cache ls` but not hashed: a copy of the same weights elsewhere hits.
    return digest, {**hashed, "teacher": spec.teacher.name_or_path}


def teacher_fingerprint(spec_name: str, model: Any, cache_root: Path) -> str:
    """The teacher's identity: a hash of its weight and config files (memoised by size and mtime in the cache
    root), the hub commit for a downloaded model, or a hash of its tensors when neither is known."""
    local = Path(spec_name)
    if local.is_dir():
        return _directory_fingerprint(local.resolve(), cache_root)
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    if commit:
        return f"hub:{spec_name}@{commit}"
    return _tensor_fingerprint(model)


def _directory_fingerprint(directory: Path, cache_root: Path) -> str:
    files = sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and (p.name == "config.json" or p.name.endswith(_WEIGHT_SUFFIXES))
    )
    stats = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
    memo_path = cache_root / _FINGERPRINTS
    try:
        memo = json.loads(memo_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        memo = {}
    known = memo.get(str(directory))
    if known and known.get("stats") == stats:
        return known["sha256"]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    digest = h.hexdigest()
    memo[str(directory)] = {"stats": stats, "sha256": digest}
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = memo_path.with_name(f".tmp-{os.getpid()}-{_FINGERPRINTS}")
    tmp.write_text(json.dumps(memo, indent=1))
    os.replace(tmp, memo_path)
    return digest


def _tensor_fingerprint(model: Any) -> str:
    import torch

    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return "tensors:" + h.hexdigest()
