"""`dskd serve`: the embedded stack in one command — migrate the database, start a Celery worker process on
the SQLite-backed broker, and serve the API with uvicorn. Nothing to install beyond the package."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from api.settings import get_settings
from worker.parent_watch import PARENT_ENV

log = logging.getLogger(__name__)


def worker_command(*, loglevel: str = "INFO", hostname: str = "dskd-embedded@%h") -> list[str]:
    """The worker process: prefork with one child that is replaced after every job, so a crash or a leak in
    one job never outlives it (the parent re-queues the message through reject_on_worker_lost)."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--concurrency=1", "--prefetch-multiplier=1", "--max-tasks-per-child=1",
        f"--loglevel={loglevel}", "-n", hostname,
    ]  # fmt: skip


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def serve(
    host: str = "127.0.0.1", port: int = 8000, *, with_worker: bool = True, loglevel: str = "INFO"
) -> None:
    import uvicorn

    from api.cli_support import init_db
    from api.logs import configure_logging
    from api.main import create_app

    settings = get_settings()
    configure_logging(settings)
    settings.ensure_dirs()
    init_db(settings)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; turning it into SystemExit lets the
    # `finally` below stop the worker instead of leaving it orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    worker: subprocess.Popen[bytes] | None = None
    if with_worker:
        # Its own process group, and told to watch us: if this process is killed outright, the worker and its
        # pool children exit too instead of running on as orphans (worker/parent_watch.py).
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        worker = subprocess.Popen(worker_command(loglevel=loglevel), env=env, start_new_session=True)
        log.info("worker started (pid %s)", worker.pid)
    try:
        # log_config=None: uvicorn's loggers go through ours (text or JSON); the API writes its own access
        # lines with the request id, so uvicorn's are off.
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level=loglevel.lower(),
            log_config=None,
            access_log=False,
        )
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
