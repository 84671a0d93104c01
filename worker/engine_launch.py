"""How the worker runs the engine for one job: the teacher cache under the data directory (and, for a job with
`training.num_processes` > 1, the processes on this worker's GPUs). Kept apart from `tasks.py` so the job
life cycle there does not change when the way the engine starts does.

Settings (environment): DSKD_CACHE_MAX_GB caps the teacher cache (default 50 GB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_engine(
    spec: Any, run_dir: Path, *, sink: Any, cancel: Any, device: str | None, data_dir: Path | None = None
) -> Any:
    """Run `spec` in `run_dir` with the service's teacher cache (`<data_dir>/teacher-cache`, data_dir defaulting
    to the settings' DSKD_DATA_DIR)."""
    from api.settings import get_settings
    from dskd_core.cache import open_cache_dir
    from dskd_core.train import run_job

    cache = open_cache_dir(Path(data_dir or get_settings().data_dir) / "teacher-cache")
    return run_job(spec, run_dir, sink=sink, cancel=cancel, device=device, teacher_cache=cache)
