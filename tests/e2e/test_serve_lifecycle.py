"""`dskd serve` killed outright (kill -9) takes its worker with it: no orphan keeps running (a restart would
otherwise run two workers)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from tests.e2e.conftest import free_port, service_env, wait_http


def _process_group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def test_kill_9_of_dskd_serve_leaves_no_worker(tmp_path: Path, processes) -> None:
    env = service_env(data_dir=str(tmp_path / "dskd"))
    port = free_port()
    server = processes.start(
        "dskd-serve", [sys.executable, "-m", "dskd_cli", "serve", "--port", str(port)], env
    )
    wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60, proc=server)
    deadline = time.monotonic() + 60
    while not (workers := _children(server.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers, "dskd serve started no worker"
    worker_group = os.getpgid(workers[0])
    assert worker_group != os.getpgid(server.pid)  # the worker has its own group (with its pool children)
    while len(_process_group_members(worker_group)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # the Celery main process and its pool child
    assert len(_process_group_members(worker_group)) >= 2

    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    killed_at = time.monotonic()
    while _process_group_members(worker_group) and time.monotonic() - killed_at < 15:
        time.sleep(0.1)
    assert _process_group_members(worker_group) == [], "the worker outlived dskd serve"
    assert time.monotonic() - killed_at < 5
