"""Typed dependencies: SessionDep, SettingsDep, QueueDep, CurrentOwner."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.queue import JobQueue
from api.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_session(request: Request) -> Iterator[Session]:
    # Reads take no write lock on SQLite (deferred transactions); everything else may write.
    factory = request.app.state.read_session_factory if request.method in READ_METHODS else None
    session: Session = (factory or request.app.state.session_factory)()
    try:
        yield session
    finally:
        session.close()


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
