"""What the worker's log says about a job: its start, its progress every `interval` seconds, its evaluations and
its end, each line with the job id; a user's mistake is one warning line, a bug an error with its traceback.

Also the worker process's logging set-up (Celery's `setup_logging` signal): the same text or JSON format as the
API, and no progress bars from transformers, datasets or huggingface_hub (they are unreadable in a log file).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from dskd_core.progress import ProgressEvent

log = logging.getLogger("dskd.worker.job")

# Errors the job's owner can fix (spec, data, model names): the worker did its job, so no traceback.
USER_ERROR_CODES = frozenset(
    {"preflight_failed", "bad_data", "model_unavailable", "invalid_spec", "file_not_found"}
)


class ProgressLogSink:
    """Wraps the worker's progress sink: passes every event on, and logs a summary line now and then."""

    def __init__(
        self,
        inner: Any,
        job_id: str,
        *,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.job_id = job_id
        self._interval = interval
        self._clock = clock
        self._last_logged = -float("inf")
        self._rate_origin: tuple[int, float] | None = None

    def emit(self, event: ProgressEvent) -> None:
        self.inner.emit(event)  # first: it may stop the run (a non-finite loss), then nothing is logged
        now = self._clock()
        if event.type == "started":
            self._rate_origin = None  # measured from the first step: the first evaluation is no training
            log.info("job %s: training started at step %d/%d", self.job_id, event.step, event.total_steps)
        elif event.type == "step":
            if self._rate_origin is None:
                self._rate_origin = (event.step, now)
            last = event.total_steps and event.step >= event.total_steps
            if last or now - self._last_logged >= self._interval:
                self._last_logged = now
                log.info("job %s: %s", self.job_id, self._step_line(event, now))
        elif event.type == "eval" and event.metrics:
            scores = ", ".join(f"{k} {v:.4g}" for k, v in sorted(event.metrics.items()))
            log.info("job %s: evaluation at step %d: %s", self.job_id, event.step, scores)
        elif event.type == "checkpoint":
            log.info("job %s: checkpoint at step %d", self.job_id, event.step)

    def emit_log(self, message: str) -> None:
        self.inner.emit_log(message)
        log.info("job %s: %s", self.job_id, message)

    def _step_line(self, event: ProgressEvent, now: float) -> str:
        parts = [f"step {event.step}/{event.total_steps}"]
        if event.total_steps:
            parts[0] += f" ({100 * event.step / event.total_steps:.0f}%)"
        loss = event.metrics.get("loss")
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        assert self._rate_origin is not None
        first, t0 = self._rate_origin
        if event.step > first and now > t0:
            rate = (event.step - first) / (now - t0)
            parts.append(f"{rate:.2f} steps/s")
            if event.total_steps > event.step:
                parts.append(f"eta {(event.total_steps - event.step) / rate:.0f} s")
        return ", ".join(parts)


def log_failure(job_id: str, error: dict[str, str], exc: BaseException) -> None:
    if error["code"] in USER_ERROR_CODES:
        log.warning("job %s failed [%s]: %s", job_id, error["code"], error["message"])
    else:
        log.error("job %s failed [%s]: %s", job_id, error["code"], error["message"], exc_info=exc)


def quiet_progress_bars() -> None:
    """Library progress bars write carriage-return animations; a worker's log is a file, not a terminal."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def setup_worker_logging(**_: object) -> None:
    """Celery's `setup_logging` handler: with a receiver connected, Celery leaves the root logger to us."""
    from api.logs import configure_logging
    from api.settings import get_settings

    configure_logging(get_settings())
    quiet_progress_bars()
