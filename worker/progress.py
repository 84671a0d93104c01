"""The engine's two protocols, backed by the database: a throttled progress sink and a cancel token,
plus the lease keeper that renews the job's lease while the engine runs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy.orm import Session

from api.services import events as event_service
from api.services import jobs as job_service
from dskd_core.errors import NonFiniteLossError
from dskd_core.progress import ProgressEvent
from worker.faults import database_down

log = logging.getLogger(__name__)

SessionFactory = Callable[[], AbstractContextManager[Session]]


class DbProgressSink:
    """Writes engine progress as job events (at most one `progress` event per `min_interval` seconds, plus the
    last step, evaluations and checkpoints) and keeps the job row's progress snapshot current.

    A database outage never stops training: what cannot be written is kept in order (the oldest progress
    events give way first if an outage is very long) and written as soon as the database answers again.
    """

    MAX_PENDING = 10_000

    def __init__(
        self,
        job_id: str,
        session_factory: SessionFactory,
        *,
        min_interval: float,
        clock: Callable[[], float] = time.monotonic,
        hide: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.job_id = job_id
        self._sessions = session_factory
        self._min_interval = min_interval
        self._clock = clock
        self._hide = hide
        self._started = clock()
        self._last_written = -float("inf")
        # (step, time) of the first step event of this run: a resumed run's rate counts only its own steps.
        self._rate_origin: tuple[int, float] | None = None
        self.last_metrics: dict[str, float] = {}
        self._pending: deque[tuple[str, dict[str, Any], dict[str, Any] | None]] = deque()
        self._retry_at = -float("inf")
        self._backoff = 0.5
        self._healthy = True
        self.outages = 0  # how many times writes had to wait for the database (observability, tests)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def emit(self, event: ProgressEvent) -> None:
        now = self._clock()
        if event.type == "started":
            self._rate_origin = (event.step, now)  # after model loading, at the resumed step
        elif event.type == "step":
            _check_finite(event)
            if self._rate_origin is None:
                self._rate_origin = (event.step - 1, self._started)
        if event.metrics:
            self.last_metrics = {**self.last_metrics, **event.metrics}
        is_last_step = event.type == "step" and event.total_steps and event.step >= event.total_steps
        if event.type == "step" and not is_last_step and now - self._last_written < self._min_interval:
            return
        if event.type == "step":  # only progress events count against the throttle
            self._last_written = now
        elapsed = now - self._started
        payload: dict[str, Any] = {
            "step": event.step,
            "total_steps": event.total_steps,
            "epoch": round(event.epoch, 4),
            "metrics": event.metrics,
            "elapsed_seconds": round(elapsed, 2),
            "eta_seconds": self._eta(now, event.step, event.total_steps),
        }
        if event.type in ("checkpoint", "exported"):
            # The engine's message is a server path: users see what happened, not where it lives on the worker.
            payload["message"] = (
                f"{'checkpoint saved' if event.type == 'checkpoint' else 'student exported'} at step {event.step}"
            )
        elif event.message:
            payload["message"] = self._hide(event.message)
        event_type = {"step": "progress", "started": "log", "exported": "log"}.get(event.type, event.type)
        if event.type == "started":
            payload["message"] = self._hide(event.message) if event.message else "training started"
        # The job's progress snapshot: the newest figures, and at the end the exported weights' (with select_best,
        # the best dev step's evaluation, not the last one's).
        snapshot = (
            dict(payload, metrics=self.last_metrics)
            if event.type in ("step", "eval", "started", "exported")
            else None
        )
        self._pending.append((event_type, payload, snapshot))
        self._drop_oldest_progress()
        if now >= self._retry_at:
            self.flush()

    def flush(self) -> bool:
        """Write the pending events in order; False (and they stay pending) while the database is away."""
        while self._pending:
            event_type, payload, snapshot = self._pending[0]
            try:
                with self._sessions() as session:
                    # One transaction per event: the event and the snapshot land together or not at all.
                    event_service.add_event(session, self.job_id, event_type, payload)
                    if snapshot is not None:
                        job_service.update_progress(session, self.job_id, snapshot, commit=False)
                    session.commit()
            except Exception as exc:
                if not database_down(exc):
                    raise
                if self._healthy:
                    self._healthy = False
                    self.outages += 1
                    log.warning("job %s: database unavailable; keeping progress to write later", self.job_id)
                self._retry_at = self._clock() + self._backoff
                self._backoff = min(self._backoff * 2, 5.0)
                return False
            self._pending.popleft()
            self._backoff, self._healthy, self._retry_at = 0.5, True, -float("inf")
        return True

    def _drop_oldest_progress(self) -> None:
        if len(self._pending) <= self.MAX_PENDING:
            return
        for i, (event_type, _, _) in enumerate(self._pending):
            if event_type == "progress":
                del self._pending[i]
                return
        self._pending.popleft()

    def emit_log(self, message: str) -> None:
        self.emit(ProgressEvent(type="log", message=message))

    def _eta(self, now: float, step: int, total: int) -> float | None:
        if self._rate_origin is None or total <= 0 or step > total:
            return None
        first_step, t0 = self._rate_origin
        done = step - first_step
        if done <= 0:
            return None
        return round((now - t0) / done * (total - step), 1)


def _check_finite(event: ProgressEvent) -> None:
    """Stops a diverged run at the first non-finite loss instead of training on NaN to the end."""
    loss = event.metrics.get("loss")
    if loss is not None and not math.isfinite(loss):
        raise NonFiniteLossError(
            f"the training loss became {loss} at step {event.step}: lower training.lr, keep "
            "training.max_grad_norm set, or use precision fp32"
        )


class LeaseKeeper:
    """Renews the job's lease in a background thread and watches for a cancel request.

    If the lease is lost (another worker re-claimed the job after this one stalled), the job is treated as
    cancelled locally, so two workers never keep training the same job.
    """

    def __init__(
        self,
        job_id: str,
        worker_id: str,
        session_factory: SessionFactory,
        *,
        lease_seconds: float,
        poll_seconds: float | None = None,
    ) -> None:
        self.job_id = job_id
        self.worker_id = worker_id
        self._sessions = session_factory
        self._lease_seconds = lease_seconds
        self._poll = poll_seconds if poll_seconds is not None else max(0.5, min(5.0, lease_seconds / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id[:8]}", daemon=True)
        self.cancel_requested = False
        self.lease_lost = False

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def cancelled(self) -> bool:
        """The engine's CancelToken: checked every step; answered from the last poll (no query per step)."""
        return self.cancel_requested or self.lease_lost

    def poll_once(self) -> None:
        with self._sessions() as session:
            ok = job_service.renew_lease(session, self.job_id, self.worker_id, self._lease_seconds)
            cancel = job_service.is_cancel_requested(session, self.job_id)
        if not ok:
            if not self.lease_lost:
                log.warning("job %s: lease lost to another worker; stopping", self.job_id)
            self.lease_lost = True
        if cancel:
            self.cancel_requested = True

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.poll_once()
            except Exception:  # a database hiccup must not kill the training thread
                log.exception("job %s: lease renewal failed; will retry", self.job_id)
