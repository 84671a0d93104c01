"""Engines and sessions. One engine per database URL per process (pools are shared).

Pools are sized from the settings (`db_pool_size`, `db_max_overflow`, `db_pool_timeout_seconds`); a request that
cannot get a connection within the timeout fails with sqlalchemy's TimeoutError, which the API answers 503.

SQLite: transactions that may write start with BEGIN IMMEDIATE. SQLite's default deferred transactions take the
write lock only at their first write, and a reader that then writes after another connection committed fails at
once with "database is locked" (the busy timeout does not apply to that upgrade). Taking the lock up front turns
those failures into short waits. Read-only work (`read_only_factory`: GET requests, event streams) keeps
deferred transactions, so readers never queue behind writers (WAL lets both proceed).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class PoolSettings:
    size: int = 10
    max_overflow: int = 10
    timeout: float = 30.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling is turned off: _sqlite_begin emits BEGIN IMMEDIATE instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets SSE readers read while a worker writes; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


READ_ONLY = {"dskd_read_only": True}


def _sqlite_begin(connection: Any) -> None:
    deferred = connection.get_execution_options().get("dskd_read_only", False)
    connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


def make_engine(url: str, pool: PoolSettings | None = None) -> Engine:
    """A new engine; SQLite gets cross-thread use, WAL, a busy timeout and immediate transactions."""
    pool = pool or PoolSettings()
    sizing = {"pool_size": pool.size, "max_overflow": pool.max_overflow, "pool_timeout": pool.timeout}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **sizing)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, **sizing)


def get_engine(url: str, pool: PoolSettings | None = None) -> Engine:
    """The process-wide engine for a URL (the first caller's pool settings size it)."""
    with _lock:
        if url not in _engines:
            _engines[url] = make_engine(url, pool)
        return _engines[url]


def dispose_engine(url: str) -> None:
    with _lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def dispose_all_after_fork() -> None:
    """In a forked child: drop the inherited pools without closing the parent's connections."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)


def session_factory(url: str, pool: PoolSettings | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url, pool), expire_on_commit=False)


def read_only_factory(url: str, pool: PoolSettings | None = None) -> sessionmaker[Session]:
    """Sessions for work that only reads (same pool; on SQLite, deferred transactions)."""
    return sessionmaker(bind=get_engine(url, pool).execution_options(**READ_ONLY), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session for scripts and the worker; rolls back on error, always closes."""
    session = session_factory(url)()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
