"""Verified API keys kept in memory, with revocation still taking effect at once, in every API process.

Looking the key up in the database was a third of the request threads' time under load (bench/concurrency.py
with py-spy). A verified key is kept with the *revocation version* read before it was verified: the number of
revoked keys and the newest revocation time. A cached key is trusted only while that version is unchanged.

The version is read from the database for every request, but the reads are shared: a request waits for a read
that *started after it arrived* (so it sees every revocation committed before it arrived: a revoked key is
refused at once, whichever process revoked it) and every request waiting at that moment shares that one read.
Under load many requests share one query; alone, a request costs what it did before (one query).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.db.models import ApiKey

Version = tuple[int, Any]


def read_revocation_version(session: Session) -> Version:
    count, newest = session.execute(
        select(func.count(ApiKey.id), func.max(ApiKey.revoked_at)).where(ApiKey.revoked_at.is_not(None))
    ).one()
    return int(count), newest


class SharedRead:
    """Single-flight reads with "started after I arrived" semantics (see the module docstring)."""

    def __init__(self, read: Callable[[], Version]) -> None:
        self._read = read
        self._cond = threading.Condition()
        self._started = 0  # reads begun
        self._done = 0  # the number of the newest finished read
        self._running = False
        self._value: Version | None = None  # the newest successful read's
        self.reads = 0  # observability (and tests)

    def get(self) -> Version:
        with self._cond:
            needed = self._started + 1  # the next read to begin is the first that began after we arrived
            while self._done < needed or self._value is None:
                if self._running:
                    self._cond.wait()
                    continue
                # No read in flight, and none that began after we arrived has succeeded: read ourselves. A
                # failed read fails only the caller that made it; its waiters try a read of their own, so one
                # timeout does not turn into an error for every request that was waiting.
                self._running = True
                self._started += 1
                mine = self._started
                self._cond.release()
                try:
                    value = self._read()
                except BaseException:
                    self._cond.acquire()
                    self.reads += 1
                    self._running = False
                    self._cond.notify_all()
                    raise
                self._cond.acquire()
                self.reads += 1
                self._running = False
                self._done, self._value = mine, value
                self._cond.notify_all()
            return self._value


class KeyCache:
    """key hash -> (owner, key id, revocation version when verified); bounded, least recently used out."""

    def __init__(
        self, sessions: Callable[[], AbstractContextManager[Session]], max_entries: int = 10_000
    ) -> None:
        self._sessions = sessions
        self.version = SharedRead(self._read_version)
        self._items: OrderedDict[str, tuple[str, str, Version]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries

    def _read_version(self) -> Version:
        with self._sessions() as session:
            return read_revocation_version(session)

    def get(self, key_hash: str, version: Version) -> tuple[str, str] | None:
        with self._lock:
            item = self._items.get(key_hash)
            if item is None or item[2] != version:
                return None
            self._items.move_to_end(key_hash)
            return item[0], item[1]

    def put(self, key_hash: str, owner: str, key_id: str, version: Version) -> None:
        with self._lock:
            self._items[key_hash] = (owner, key_id, version)
            self._items.move_to_end(key_hash)
            while len(self._items) > self._max:
                self._items.popitem(last=False)
