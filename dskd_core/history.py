"""A run's metric history: every training step and evaluation as one JSON line in `run_dir/metrics.jsonl`, and
the same values forwarded to the experiment trackers named in `training.report_to` (accelerate's tracker classes:
tensorboard, wandb, mlflow, …; none by default).

A line is `{"kind": "train"|"eval", "step", "epoch", "time", "metrics": {...}}`: the points the service's
`GET /v1/jobs/{id}/metrics` serves for a job. A resumed run first drops the lines after the step it resumes
from, so the file never holds two values for one step.
"""

from __future__ import annotations

import json
import math
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dskd_core.progress import ProgressEvent, ProgressSink
from dskd_core.spec import JobSpec

HISTORY_FILE = "metrics.jsonl"
TRACKERS_DIR = "trackers"
KINDS = {"step": "train", "eval": "eval"}


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def flat_config(spec: JobSpec) -> dict[str, bool | int | float | str | None]:
    """The spec as `section.field` → scalar, the form trackers take as hyper-parameters."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif value is None or isinstance(value, bool | int | float | str):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value)

    walk("", json.loads(spec.to_json()))
    return flat


def start_trackers(names: list[str], spec: JobSpec, run_dir: Path) -> list[Any]:
    """accelerate's trackers, started and given the spec, the way `Accelerator.init_trackers` makes them."""
    if not names:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    project = spec.name or run_dir.name
    trackers = []
    for name in names:
        tracker_class = LOGGER_TYPE_TO_CLASS[name]
        if tracker_class.requires_logging_directory:
            tracker = tracker_class(project, str(run_dir / TRACKERS_DIR))
        else:
            tracker = tracker_class(project)
        tracker.start()
        tracker.store_init_configuration(flat_config(spec))
        trackers.append(tracker)
    return trackers


def _finish(trackers: list[Any]) -> None:
    while trackers:
        trackers.pop().finish()


class RunHistory:
    """A progress sink in front of the caller's: records the history, then passes every event on."""

    def __init__(
        self,
        run_dir: Path,
        inner: ProgressSink,
        trackers: list[Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(run_dir) / HISTORY_FILE
        self.inner = inner
        self.trackers = list(trackers or [])
        self._clock = clock
        # Trackers are finished at the export, or when the run ends otherwise (cancel, error) and drops the sink.
        self._finalizer = weakref.finalize(self, _finish, self.trackers)

    @classmethod
    def open(cls, spec: JobSpec, run_dir: Path, inner: ProgressSink) -> RunHistory:
        return cls(run_dir, inner, start_trackers(list(spec.training.report_to), spec, Path(run_dir)))

    def emit(self, event: ProgressEvent) -> None:
        if event.type == "started":
            self._forget_after(event.step)
        kind = KINDS.get(event.type)
        values = numeric_metrics(event.metrics) if kind else {}
        if values:
            line = {
                "kind": kind,
                "step": event.step,
                "epoch": round(event.epoch, 4),
                "time": round(self._clock(), 3),
                "metrics": values,
            }
            with self.path.open("a") as f:
                f.write(json.dumps(line) + "\n")
            for tracker in self.trackers:
                tracker.log({f"{kind}/{name}": value for name, value in values.items()}, step=event.step)
        self.inner.emit(event)
        if event.type == "exported":
            self.close()

    def close(self) -> None:
        self._finalizer()

    def _forget_after(self, step: int) -> None:
        """On (re)start at `step`, drop lines of steps a crashed attempt reached past its last checkpoint."""
        if not self.path.exists():
            return
        kept = [
            line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of a run's metrics.jsonl (empty when the run wrote none)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
