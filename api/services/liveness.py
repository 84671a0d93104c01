"""Lease holders that can be proven dead without waiting for their lease to run out.

A lease holder's id names its process: `host:pid:start:nonce@machine`, where `start` is the process start time
(so a recycled pid is not mistaken for the holder) and `machine` fingerprints the boot and the pid namespace
(so a container with the same host name, or a pid seen from another namespace, is never judged). A process on
this machine can then check the holder directly: if no process with that pid and start time exists, the holder
is dead, and its job can be taken over at once instead of after the lease (minutes by default).
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def machine_fingerprint() -> str | None:
    """Boot id + pid namespace, hashed; None where /proc cannot tell (then no holder is ever judged)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return hashlib.sha256(f"{boot}/{namespace}".encode()).hexdigest()[:12]


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None if no process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def holder_id(pid: int | None = None) -> str:
    """A lease identity for this process (a new nonce per call: one per execution)."""
    pid = pid or os.getpid()
    machine = machine_fingerprint() or "unknown"
    return f"{socket.gethostname()}:{pid}:{process_start(pid) or 0}:{uuid.uuid4().hex[:8]}@{machine}"


def holder_is_dead(holder: str | None) -> bool:
    """True only when certain: the holder ran on this machine (same boot, same pid namespace) and its process
    is gone or is another process now. False when alive or when it cannot be told from here."""
    if not holder or "@" not in holder:
        return False
    ident, machine = holder.rsplit("@", 1)
    if machine_fingerprint() is None or machine != machine_fingerprint():
        return False
    parts = ident.rsplit(":", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return False
    _, pid, start, _ = parts
    return process_start(int(pid)) != start
