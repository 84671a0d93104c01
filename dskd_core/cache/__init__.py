"""The teacher cache: the teacher's per-position outputs computed once and reused by later epochs, resumed runs
and other jobs on the same teacher and data (design.md, "Teacher cache").

`keys` says what a cached output depends on, `store` keeps the shards on disk, `fill` connects them to a run.
"""

from __future__ import annotations

import os
from pathlib import Path

from dskd_core.cache.store import TeacherCache

DEFAULT_MAX_GB = 50.0

__all__ = ["DEFAULT_MAX_GB", "TeacherCache", "default_cache_dir", "open_cache_dir"]


def default_cache_dir() -> Path:
    """$DSKD_CACHE_DIR, else $XDG_CACHE_HOME/dskd/teacher-cache (~/.cache/dskd/teacher-cache)."""
    if os.environ.get("DSKD_CACHE_DIR"):
        return Path(os.environ["DSKD_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "dskd" / "teacher-cache"


def open_cache_dir(root: str | Path | None = None, max_gb: float | None = None) -> TeacherCache:
    """A cache at `root` (default: `default_cache_dir()`), capped at `max_gb` (default: $DSKD_CACHE_MAX_GB or 50)."""
    if max_gb is None:
        max_gb = float(os.environ.get("DSKD_CACHE_MAX_GB") or DEFAULT_MAX_GB)
    if max_gb <= 0:
        raise ValueError(f"the teacher cache's size cap must be positive, got {max_gb} GB")
    return TeacherCache(Path(root).expanduser() if root else default_cache_dir(), max_bytes=int(max_gb * 1e9))
