"""The two small protocols the engine takes from its caller: a progress sink and a cancel token.

The CLI passes a tqdm-backed sink; the Celery worker passes one that writes throttled events to the database
and renews its lease, and a cancel token backed by the job row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

EventType = Literal["started", "step", "eval", "checkpoint", "exported", "log"]


@dataclass(frozen=True)
class ProgressEvent:
    type: EventType
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "metrics": dict(self.metrics),
            "message": self.message,
        }


@runtime_checkable
class ProgressSink(Protocol):
    def emit(self, event: ProgressEvent) -> None: ...


@runtime_checkable
class CancelToken(Protocol):
    def cancelled(self) -> bool: ...


class NullSink:
    def emit(self, event: ProgressEvent) -> None:
        return None


class NeverCancel:
    def cancelled(self) -> bool:
        return False


@dataclass
class RunResult:
    """What `dskd_core.train.run_job` returns."""

    status: Literal["completed", "cancelled"]
    steps: int
    total_steps: int
    export_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
