"""How the worker runs the engine for one job: the teacher cache under the data directory, and a job with
`training.num_processes` > 1 on the GPUs this worker owns. Kept apart from `tasks.py` so that the job's life
cycle there does not change when the way the engine starts does.

Settings: DSKD_WORKER_GPUS lists the GPUs this worker owns (e.g. "0,1"; default: every GPU it sees),
DSKD_TEACHER_CACHE_MAX_GB caps the teacher cache (default 50 GB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dskd_core.progress import ProgressEvent


def worker_gpus(settings: Any) -> list[int] | None:
    """The GPU indices of `settings.worker_gpus`, or None when it is empty."""
    raw = settings.worker_gpus.strip()
    if not raw:
        return None
    try:
        return [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"DSKD_WORKER_GPUS={raw!r}: expected GPU indices such as 0,1") from None


def run_engine(spec: Any, run_dir: Path, *, sink: Any, cancel: Any, device: str | None) -> Any:
    """Run `spec` in `run_dir` with the service's teacher cache on this worker's GPUs (the process's settings,
    which are the Celery task's)."""
    import torch

    from api.settings import get_settings
    from dskd_core.cache import open_cache_dir
    from dskd_core.train import run_job

    settings = get_settings()
    cache = open_cache_dir(settings.data_dir / "teacher-cache", settings.teacher_cache_max_gb)
    gpus = worker_gpus(settings)
    owned = len(gpus) if gpus is not None else torch.cuda.device_count()
    processes = spec.training.num_processes
    if device == "cpu" or owned == 0:
        gpus = None  # CPU processes (gloo)
    elif processes > owned:
        # batch_size is global, so fewer processes train the same steps (more slowly): run rather than refuse.
        message = f"{processes} processes asked; this worker owns {owned} GPUs: using {owned}"
        sink.emit(ProgressEvent("log", message=message))
        processes = owned
    if processes == 1 and gpus and device is None:
        device = f"cuda:{gpus[0]}"
    return run_job(
        spec,
        run_dir,
        sink=sink,
        cancel=cancel,
        device=device,
        teacher_cache=cache,
        num_processes=processes,
        gpus=gpus,
    )
