"""Service settings: one flat pydantic-settings class, env prefix DSKD_. Defaults give the embedded mode."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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
    event_min_interval_seconds: float = Field(
        1.0, ge=0.0, description="Worker throttle between progress events."
    )
    sse_keepalive_seconds: float = Field(15.0, gt=0.0)
    sse_poll_interval_seconds: float = Field(0.25, gt=0.0)
    reaper_interval_seconds: float = Field(60.0, gt=0.0)
    queued_resend_seconds: float = Field(
        600.0, gt=0.0, description="Re-send queued jobs unclaimed this long."
    )
    broker_check_timeout_seconds: float = Field(2.0, gt=0.0, description="/readyz broker connect timeout.")

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
