"""500 concurrent mixed requests and 200 SSE subscribers against a real API process, on PostgreSQL and on the
embedded SQLite database: no 5xx, no dropped connection, every subscriber gets every event and its stream ends.
(bench/concurrency.py is the same scenario from the command line, with the latencies printed.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command

from api.cli_support import alembic_config
from bench.concurrency import run


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_500_requests_and_200_streams(backend: str, db_url: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'dskd.db'}"
        command.upgrade(alembic_config(url), "head")
    else:
        url = db_url
    result = run(url, tmp_path / "data", requests=500, sse=200)
    summary = result.summary()
    print(backend, summary)
    assert result.server_errors == 0, result.errors[:5]
    assert result.errors == [], result.errors[:5]
    assert result.sse_complete == 200, result.sse_problems[:5]
    # Every request was answered; the only refusals are the queued-jobs quota on submissions (429).
    assert sum(result.statuses.values()) == 500 and set(result.statuses) <= {200, 201, 429}
