"""How the worker meets faults around a job: a database that is briefly away, a full or read-only disk, and
server paths that must not reach users (in error messages, events or the exported manifest)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
# The database is away (restart, network, exhausted pool) rather than refusing what we asked.
DATABASE_DOWN = (OperationalError, DisconnectionError, PoolTimeout)
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}


def database_down(exc: BaseException) -> bool:
    if isinstance(exc, DATABASE_DOWN):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def retry_database(
    fn: Callable[[], T],
    *,
    deadline_seconds: float,
    what: str,
    keep_going: Callable[[], bool] = lambda: True,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call fn until it gets through a database outage (backing off up to 5 s), for at most deadline_seconds;
    errors other than an unreachable database are raised at once."""
    deadline = time.monotonic() + deadline_seconds
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as exc:
            if not database_down(exc) or time.monotonic() + delay > deadline or not keep_going():
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, type(exc).__name__, delay)
            sleep(delay)
            delay = min(delay * 2, 5.0)


# ---------------------------------------------------------------------------------------------- disk faults


# How writers that lose the errno report the two conditions (safetensors keeps the OS text, torch does not).
_FULL_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")
_READ_ONLY_TEXT = ("read-only file system", "os error 30")
# torch's zip writer reports any failed write as this: a disk fault when the disk is (nearly) full.
_TORCH_WRITE_FAILURE = "unexpected pos"
LOW_SPACE_BYTES = 256 * 2**20


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def storage_fault(run_dir: Path, exc: BaseException) -> str | None:
    """'disk_full' or 'storage_unwritable' when the run directory cannot take writes, else None.

    The exception (and its causes) is read for an errno or the OS's words; torch's writer loses both, so then a
    probe write into the run directory and the free space decide.
    """
    chain = _chain(exc)
    codes = {e.errno for e in chain if isinstance(e, OSError) and e.errno is not None}
    text = " ".join(str(e).lower() for e in chain)
    if codes & DISK_FULL_ERRNOS or any(t in text for t in _FULL_TEXT):
        return "disk_full"
    if codes & READ_ONLY_ERRNOS or any(t in text for t in _READ_ONLY_TEXT):
        return "storage_unwritable"
    probe = run_dir / ".write-probe"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as fh:
            fh.write(b"\0" * 65536)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            return "disk_full"
        if e.errno in READ_ONLY_ERRNOS:
            return "storage_unwritable"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    if _TORCH_WRITE_FAILURE in text:
        with contextlib.suppress(OSError):
            if shutil.disk_usage(run_dir).free < LOW_SPACE_BYTES:
                return "disk_full"
    return None


def storage_message(code: str, run_dir: Path) -> str:
    try:
        free = shutil.disk_usage(run_dir if run_dir.exists() else run_dir.parent).free
        space = f" ({free / 2**20:.0f} MiB free)"
    except OSError:
        space = ""
    if code == "disk_full":
        return (
            f"the disk holding the job's run directory is full{space}; the partial checkpoint was removed. "
            "Free space (or point DSKD_RUNS_DIR at a larger disk) and resubmit: the job resumes from its last "
            "complete checkpoint"
        )
    return "the job's run directory is not writable (read-only or no permission); the operator must fix DSKD_RUNS_DIR"


def remove_partial_writes(run_dir: Path) -> list[str]:
    """Delete the temporary directories a failed checkpoint or export leaves (`.tmp-*`): complete checkpoints
    are renamed into place, so anything still named .tmp-* is a partial write."""
    removed = []
    for parent in (run_dir, run_dir / "checkpoints"):
        if not parent.is_dir():
            continue
        for partial in parent.glob(".tmp-*"):
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial.name)
    return removed


# ---------------------------------------------------------------------------------------------- server paths

_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+([\w.@+-]+)")


def hide_paths(text: str, settings: Settings, run_dir: Path | None = None) -> str:
    """The text with server paths made relative to what the user knows: the run directory disappears, models
    are named under the models root, datasets and other files by their last component."""
    replacements: list[tuple[str, str]] = []
    if run_dir is not None:
        replacements.append((str(run_dir.resolve()) + "/", ""))
        replacements.append((str(run_dir.resolve()), "."))
    for root in (settings.models_root, settings.datasets_dir, settings.runs_dir, settings.data_dir):
        if root is not None:
            replacements.append((str(Path(root).resolve()) + "/", ""))
    for old, new in sorted(replacements, key=lambda r: -len(r[0])):
        text = text.replace(old, new)
    # Anything else absolute (site-packages, /tmp): keep only the last component.
    return _ABSOLUTE_PATH.sub(lambda m: f"…/{m.group(1)}", text)
