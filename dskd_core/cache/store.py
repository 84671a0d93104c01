"""On-disk storage of the teacher cache: entries of self-checking safetensors shards, an index, LRU eviction.

Layout under the cache root:

    <root>/<entry key>/entry.json          what the entry holds (teacher, numerics, hidden size) — written once
    <root>/<entry key>/index.json          shard name -> {bytes, keys, last_used}; rewritten atomically under a lock
    <root>/<entry key>/shards/*.safetensors   `hidden` [rows, d] and `offsets` [n + 1]; metadata: keys, sha256
    <root>/<entry key>/shards/.tmp-*       a shard being written (renamed into place when complete)

A shard is the unit of writing, checking and eviction. Its metadata carries the sha256 of its tensors' bytes, so a
truncated or corrupted shard is detected when a job opens it (it is then deleted and its examples are computed
again), and the index can always be rebuilt from the shards themselves (a crash between a shard's rename and the
index update loses nothing). Eviction removes the least recently used shards of all entries until the cache is
under its size cap, never the shards the calling job uses.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dskd_core.checkpoint import fsync_path

FORMAT = "1"
_TMP = ".tmp-"


@dataclass(frozen=True)
class Location:
    """Where one example's rows are: a shard and the example's number inside it."""

    shard: str
    item: int


@dataclass(frozen=True)
class EntrySummary:
    """One line of `dskd cache ls`."""

    key: str
    info: dict[str, Any]
    shards: int
    examples: int
    bytes: int
    last_used: float | None


def tensor_digest(hidden: torch.Tensor, offsets: torch.Tensor) -> str:
    """sha256 over the raw bytes of a shard's two tensors (bf16 hashed through its 16-bit integer view)."""
    h = hashlib.sha256()
    for t in (hidden, offsets):
        t = t.contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class CacheEntry:
    """The shards of one entry (one teacher under one set of numerics). Safe for several processes at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.key = path.name
        self.shard_dir = path / "shards"

    @property
    def info(self) -> dict[str, Any]:
        return json.loads((self.path / "entry.json").read_text())

    # ---- the index
    @contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock on this entry's index (flock: released by the OS if the holder dies)."""
        with open(self.path / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read_index(self) -> dict[str, dict[str, Any]]:
        """The index, reconciled with the shards on disk (new shards adopted, vanished ones dropped)."""
        try:
            index = json.loads((self.path / "index.json").read_text())["shards"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            index = {}
        on_disk = set(self.shard_names())
        index = {name: rec for name, rec in index.items() if name in on_disk}
        for name in sorted(on_disk - index.keys()):
            record = _shard_record(self.shard_dir / name)
            if (
                record is None
            ):  # shards are renamed into place only when complete: an unreadable one is damaged
                (self.shard_dir / name).unlink(missing_ok=True)
            else:
                index[name] = record
        return index

    def shard_names(self) -> list[str]:
        """Complete shards on disk (temp files start with a dot, which pathlib's glob would still match)."""
        return sorted(p.name for p in self.shard_dir.glob("*.safetensors") if not p.name.startswith("."))

    def write_index(self, index: dict[str, dict[str, Any]]) -> None:
        _atomic_write(self.path / "index.json", json.dumps({"format": FORMAT, "shards": index}))

    def locations(self, index: dict[str, dict[str, Any]] | None = None) -> dict[str, Location]:
        """Example key -> where its rows are (the first shard holding it wins; duplicates are harmless)."""
        index = self.read_index() if index is None else index
        found: dict[str, Location] = {}
        for name in sorted(index):
            for i, key in enumerate(index[name]["keys"]):
                found.setdefault(key, Location(name, i))
        return found

    def touch(self, shards: Iterable[str]) -> None:
        """Mark shards as used now (the LRU order of eviction)."""
        shards = set(shards)
        with self.locked():
            index = self.read_index()
            now = time.time()
            for name in shards & index.keys():
                index[name]["last_used"] = now
            self.write_index(index)

    # ---- checking and reading
    def check(self, shards: Iterable[str]) -> list[str]:
        """Verify each shard's bytes against its own checksum; delete the bad ones and return their names."""
        bad = []
        for name in shards:
            path = self.shard_dir / name
            try:
                tensors = load_file(path)
                with safe_open(path, framework="pt") as f:
                    expected = (f.metadata() or {}).get("sha256")
                ok = expected == tensor_digest(tensors["hidden"], tensors["offsets"])
            except Exception:  # truncated header, missing file, unreadable tensors: all mean "rebuild"
                ok = False
            if not ok:
                bad.append(name)
                path.unlink(missing_ok=True)
        if bad:
            with self.locked():
                index = self.read_index()
                self.write_index({k: v for k, v in index.items() if k not in bad})
        return bad

    def open_shard(self, name: str) -> ShardReader:
        return ShardReader(self.shard_dir / name)

    # ---- writing
    def add_shard(self, keys: list[str], rows: list[torch.Tensor]) -> str:
        """Write one shard (atomically: a temp file renamed into place) and record it in the index."""
        hidden = torch.cat(rows) if rows else torch.zeros(0, 0)
        lengths = torch.tensor([0] + [r.shape[0] for r in rows], dtype=torch.int64)
        offsets = lengths.cumsum(0)
        metadata = {"format": FORMAT, "keys": json.dumps(keys), "sha256": tensor_digest(hidden, offsets)}
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.safetensors"
        tmp = self.shard_dir / f"{_TMP}{socket.gethostname()}-{os.getpid()}-{name}.part"
        save_file({"hidden": hidden.contiguous(), "offsets": offsets}, tmp, metadata=metadata)
        fsync_path(tmp)
        os.replace(tmp, self.shard_dir / name)
        fsync_path(self.shard_dir)
        with self.locked():
            index = self.read_index()
            index[name] = {
                "bytes": (self.shard_dir / name).stat().st_size,
                "keys": keys,
                "last_used": time.time(),
            }
            self.write_index(index)
        return name

    def remove_stale_temps(self) -> None:
        """Delete temp shards left by a crashed writer on this host (a live writer's temp file is kept)."""
        host = socket.gethostname()
        for tmp in self.shard_dir.glob(f"{_TMP}*"):
            parts = tmp.name[len(_TMP) :].split("-")
            if len(parts) >= 2 and parts[0] == host and parts[1].isdigit() and not _alive(int(parts[1])):
                tmp.unlink(missing_ok=True)


class ShardReader:
    """Memory-mapped reads of one shard's rows. Keeps the file mapped, so an eviction by another job (an unlink)
    does not disturb a job already reading it."""

    def __init__(self, path: Path) -> None:
        self._file = safe_open(path, framework="pt")
        self._hidden = self._file.get_slice("hidden")
        self.offsets = self._file.get_tensor("offsets").tolist()

    def rows(self, item: int) -> torch.Tensor:
        return self._hidden[self.offsets[item] : self.offsets[item + 1]]


class TeacherCache:
    """A cache root holding entries; `max_bytes` caps the total size of all shards (None: no cap)."""

    def __init__(self, root: str | Path, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def entry(self, key: str, info: dict[str, Any]) -> CacheEntry:
        """The entry `key`, created with `info` when it does not exist yet."""
        path = self.root / key
        (path / "shards").mkdir(parents=True, exist_ok=True)
        if not (path / "entry.json").exists():
            _atomic_write(
                path / "entry.json", json.dumps({"format": FORMAT, **info}, indent=1, sort_keys=True)
            )
        return CacheEntry(path)

    def entries(self) -> list[CacheEntry]:
        if not self.root.is_dir():
            return []
        return [CacheEntry(p) for p in sorted(self.root.iterdir()) if (p / "entry.json").is_file()]

    def summaries(self) -> list[EntrySummary]:
        out = []
        for entry in self.entries():
            index = entry.read_index()
            used = [rec.get("last_used") for rec in index.values() if rec.get("last_used")]
            out.append(
                EntrySummary(
                    entry.key,
                    entry.info,
                    len(index),
                    len(entry.locations(index)),
                    sum(rec["bytes"] for rec in index.values()),
                    max(used) if used else None,
                )
            )
        return out

    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.summaries())

    def remove(self, key_prefix: str) -> list[str]:
        """Delete the entries whose key starts with `key_prefix`; returns their keys."""
        if not key_prefix:
            raise ValueError("give an entry key (or a prefix of one)")
        removed = [e.key for e in self.entries() if e.key.startswith(key_prefix)]
        for key in removed:
            shutil.rmtree(self.root / key, ignore_errors=True)
        return removed

    def evict(self, protect: dict[str, set[str]] | None = None) -> int:
        """Delete least recently used shards until under `max_bytes`; `protect` maps entry key -> shard names
        never to delete. Returns the bytes freed (entries left empty are removed)."""
        if self.max_bytes is None:
            return 0
        protect = protect or {}
        shards = []
        for entry in self.entries():
            for name, rec in entry.read_index().items():
                shards.append((rec.get("last_used") or 0.0, entry, name, rec["bytes"]))
        total = sum(s[3] for s in shards)
        freed = 0
        for _, entry, name, size in sorted(shards, key=lambda s: s[0]):
            if total - freed <= self.max_bytes:
                break
            if name in protect.get(entry.key, set()):
                continue
            (entry.shard_dir / name).unlink(missing_ok=True)
            with entry.locked():
                entry.write_index(entry.read_index())  # drops the vanished shard
            freed += size
        for entry in self.entries():
            if not entry.shard_names() and not any(entry.shard_dir.glob(f"{_TMP}*")):
                shutil.rmtree(entry.path, ignore_errors=True)
        return freed


def _shard_record(path: Path) -> dict[str, Any] | None:
    """An index record rebuilt from a shard's own header (None when the header is unreadable)."""
    try:
        with safe_open(path, framework="pt") as f:
            keys = json.loads((f.metadata() or {})["keys"])
    except Exception:
        return None
    return {"bytes": path.stat().st_size, "keys": keys, "last_used": path.stat().st_mtime}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f"{_TMP}{uuid.uuid4().hex}-{path.name}")
    tmp.write_text(text)
    fsync_path(tmp)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
