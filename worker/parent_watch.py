"""A worker started by `dskd serve` exits when `dskd serve` dies, even by kill -9 (which gives it no chance to
stop its worker): a thread in the worker's main process watches its parent and, once the parent is gone, kills
the worker's own process group (the main process and its pool children). The job it was running is recovered
by the next start, which sees that the job's holder is dead (api.services.liveness)."""

from __future__ import annotations

import logging
import os
import signal
import threading

from celery.signals import worker_init

log = logging.getLogger(__name__)
PARENT_ENV = "DSKD_EXIT_WITH_PARENT"
POLL_SECONDS = 0.5


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        threading.Event().wait(POLL_SECONDS)
    log.warning("the parent process %s is gone; stopping this worker and its children", parent)
    os.killpg(os.getpgrp(), signal.SIGKILL)


@worker_init.connect
def _start_watch(**_: object) -> None:
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit():
        threading.Thread(target=_watch, args=(int(parent),), name="dskd-parent-watch", daemon=True).start()
