"""Worker test fixtures: the API's PostgreSQL database fixtures, worker settings, and job factories."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from api.db.base import utcnow
from api.db.models import Job, JobEvent
from api.services import jobs as job_service
from api.services.events import list_events
from api.settings import Settings
from tests.api.conftest import db_url, pg_url, session  # noqa: F401  (re-exported fixtures)
from worker.progress import SessionFactory
from worker.tasks import session_factory_for


@pytest.fixture
def worker_settings(tmp_path: Path, db_url: str, toy_world: Any) -> Settings:  # noqa: F811
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        broker_url="memory://",
        models_root=toy_world.root,
        lease_seconds=30,
        max_attempts=3,
        event_min_interval_seconds=0.0,
    )


@pytest.fixture
def sessions(worker_settings: Settings) -> SessionFactory:
    return session_factory_for(worker_settings)


def tiny_spec(world: Any, **training: Any) -> dict[str, Any]:
    """A job spec the worker can run in a second or two on the toy world (sft: no teacher to load)."""
    return {
        "name": "worker test",
        "student": {"name_or_path": str(world.student)},
        "data": {"path": str(world.train)},
        "distill": {"method": "sft"},
        "training": {
            "max_steps": 4,
            "batch_size": 4,
            "max_length": 48,
            "max_prompt_length": 32,
            "lr": 1e-3,
            **training,
        },
    }


@pytest.fixture
def make_job(session: Session, toy_world: Any) -> Callable[..., str]:  # noqa: F811
    def make(spec: dict[str, Any] | None = None, *, max_attempts: int = 3, **training: Any) -> str:
        job = job_service.create_job(
            session,
            owner="alice",
            spec=spec or tiny_spec(toy_world, **training),
            max_attempts=max_attempts,
        )
        session.commit()
        return job.id

    return make


def get_job(sessions: SessionFactory, job_id: str) -> Job:
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def events_of(sessions: SessionFactory, job_id: str) -> list[JobEvent]:
    with sessions() as s:
        return list_events(s, job_id, after_seq=0, limit=10_000)


def expire_lease(sessions: SessionFactory, job_id: str) -> None:
    """What time does to a dead worker's lease: its last renewal was a lease ago and it has run out."""
    expired = utcnow() - timedelta(seconds=1)
    with sessions() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=expired, updated_at=expired - timedelta(seconds=30))
        )
        s.commit()
