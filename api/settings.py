"""Service settings: one flat pydantic-settings class, env prefix DSKD_. Defaults give the embedded mode."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DSKD_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./.dskd"), description="Root of the embedded mode's files.")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///{data_dir}/dskd.db.")
    broker_url: str = Field(
        "", description="Celery broker; default the kombu SQLAlchemy transport on SQLite."
    )
    models_root: Path | None = Field(None, description="The only local directory a job may name a model in.")
    datasets_dir: Path | None = None
    runs_dir: Path | None = None
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1, description="Largest dataset upload.")
    max_request_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest body of any other request (job specs are a few KB)."
    )
    # Bounds on what one job may ask for (the engine's own ranges are wider: they serve the CLI too).
    max_job_steps: int = Field(
        100_000, ge=1, description="Optimizer steps a job may run (max_steps or epochs)."
    )
    max_job_epochs: float = Field(100.0, gt=0, description="Largest training.epochs.")
    max_job_length: int = Field(8192, ge=2, description="Largest token length (training and generation).")
    max_job_batch_size: int = Field(256, ge=1, description="Largest batch size (training and evaluation).")
    max_queued_jobs_per_key: int = Field(
        20, ge=1, description="Jobs one tenant may have waiting; more answers 429."
    )
    max_running_jobs_per_key: int = Field(
        2, ge=1, description="Jobs of one tenant the workers run at once; the rest wait in the queue."
    )
    allow_hub_models: bool = Field(
        True, description="Accept Hugging Face hub ids (off for offline deployments: local models only)."
    )
    lease_seconds: int = Field(120, ge=1)
    max_attempts: int = Field(3, ge=1)
    # Load: pools, threads and admission (see docs/service.md, "Capacity").
    db_pool_size: int = Field(20, ge=1, description="Database connections kept per process.")
    db_max_overflow: int = Field(20, ge=0, description="Extra connections opened under bursts.")
    db_pool_timeout_seconds: float = Field(
        10.0, gt=0, description="Wait for a free connection before answering 503."
    )
    api_threads: int = Field(32, ge=1, description="Threads that run blocking handlers and database reads.")
    max_active_requests: int = Field(
        32, ge=1, description="Requests worked on at once; the others wait for a turn."
    )
    max_waiting_requests: int = Field(
        2000, ge=0, description="Requests that may wait for a turn; beyond, 503 at once."
    )
    request_wait_seconds: float = Field(
        60.0, gt=0, description="Longest wait for a turn before 503 with Retry-After."
    )
    max_sse_streams: int = Field(1000, ge=1, description="Open event streams per API process (503 beyond).")
    max_sse_streams_per_key: int = Field(
        20, ge=1, description="Open event streams of one key per API process (429 beyond)."
    )
    sse_listen: bool = Field(True, description="On PostgreSQL, wake event streams by LISTEN/NOTIFY.")
    sse_safety_poll_seconds: float = Field(
        5.0, gt=0, description="With LISTEN, also look for missed events this often."
    )
    sse_key_check_seconds: float = Field(
        2.0, gt=0, description="How soon a revoked key's open streams close."
    )
    key_cache: bool = Field(
        True,
        description="Keep verified API keys in memory, re-validated against a shared read of the revocation "
        "version (revocation still takes effect at once); off: one key lookup per request.",
    )
    api_reaper: bool = Field(
        True, description="Run the reaper in the API process too (no live worker needed)."
    )
    event_min_interval_seconds: float = Field(
        1.0, ge=0.0, description="Worker throttle between progress events."
    )
    sse_keepalive_seconds: float = Field(15.0, gt=0.0)
    sse_poll_interval_seconds: float = Field(0.25, gt=0.0)
    reaper_interval_seconds: float = Field(
        5.0, gt=0.0, description="How often the reaper looks for lost jobs."
    )
    heartbeat_seconds: float = Field(
        2.0, gt=0.0, description="How often a running job's worker renews its lease and heartbeat."
    )
    dead_worker_seconds: float = Field(
        15.0,
        gt=0.0,
        description="A heartbeat older than this (while the database was reachable) means the worker is gone. "
        "Keep it above reaper_interval_seconds + 2 × heartbeat_seconds.",
    )
    queued_resend_seconds: float = Field(
        600.0, gt=0.0, description="Re-send queued jobs unclaimed this long."
    )
    broker_check_timeout_seconds: float = Field(2.0, gt=0.0, description="/readyz broker connect timeout.")
    # How the worker runs the engine (worker/engine_launch.py).
    worker_gpus: str = Field(
        "",
        description="GPUs this worker owns, e.g. '0,1' (default: every GPU it sees); multi-process jobs use them.",
    )
    teacher_cache_max_gb: float = Field(
        50.0, gt=0.0, description="Size cap of the teacher cache in data_dir/teacher-cache (LRU eviction)."
    )
    # Observability and downloads (README "Operating the service").
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line.")
    log_level: str = Field("INFO", description="Level of the dskd loggers (DEBUG, INFO, WARNING, …).")
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at /metrics.")
    signing_key: str = Field(
        "", description="Key of the signed download links; default a random key in data_dir/signing.key."
    )
    download_link_seconds: int = Field(900, ge=10, description="How long a signed download link is valid.")

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        # Derived defaults follow data_dir so one DSKD_DATA_DIR moves everything.
        base = self.data_dir.expanduser().resolve()
        self.data_dir = base
        if not self.database_url:
            self.database_url = f"sqlite:///{base / 'dskd.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{base / 'broker.db'}"
        self.models_root = (self.models_root or base / "models").expanduser().resolve()
        self.datasets_dir = (self.datasets_dir or base / "datasets").expanduser().resolve()
        self.runs_dir = (self.runs_dir or base / "runs").expanduser().resolve()
        return self

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.models_root, self.datasets_dir, self.runs_dir):
            assert path is not None
            path.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
