"""Liveness and readiness (public)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import QueueDep, SessionDep, SettingsDep
from api.errors import ProblemError, problem_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database and broker reachable", responses=problem_responses(503))
def readyz(session: SessionDep, queue: QueueDep, settings: SettingsDep) -> dict[str, str]:
    failures = []
    try:
        session.execute(text("SELECT 1"))
    except Exception as e:
        failures.append(f"database: {type(e).__name__}")
    try:
        queue.ping(settings.broker_check_timeout_seconds)
    except Exception as e:
        failures.append(f"broker: {type(e).__name__}")
    if failures:
        raise ProblemError(
            503, "not ready: " + "; ".join(failures), slug="not-ready", title="Service not ready"
        )
    return {"status": "ready", "database": "ok", "broker": "ok"}
