"""The app factory: `create_app(settings)`; `uvicorn api.main:app` uses the environment's settings."""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from api import runtime
from api.admission import AdmissionMiddleware
from api.auth import require_principal
from api.errors import install_error_handlers, problem_responses
from api.headers import SecurityHeadersMiddleware
from api.limits import BodyLimitMiddleware, JsonGuardMiddleware
from api.logs import RequestIdMiddleware, configure_logging
from api.observability import install_metrics
from api.openapi import install_docs, install_problem_schema, operation_id
from api.queue import JobQueue, queue_from_settings
from api.routes import artifacts, datasets, downloads, events, health, jobs, metrics
from api.settings import Settings, get_settings

STATIC_DIR = Path(__file__).parent / "static"

TAGS = [
    {"name": "jobs", "description": "Submit distillation jobs, follow their status and cancel them."},
    {"name": "events", "description": "Per-job progress events: a JSON page or a Server-Sent Events stream."},
    {"name": "metrics", "description": "A job's metric history (loss, learning rate, dev metrics) by step."},
    {
        "name": "artifacts",
        "description": "The distilled student: exported files and a tar, with Range downloads and signed links.",
    },
    {"name": "datasets", "description": "Upload JSONL instruction data once; jobs name it by id."},
    {"name": "health", "description": "Liveness and readiness probes (no authentication)."},
]

DESCRIPTION = """Distil large language models (DSKD and baselines) as queued jobs.

Authenticate with `Authorization: Bearer <api key>` (create one with `dskd keys create NAME`); in these docs,
press **Authorize** and paste the key.
Errors are `application/problem+json` (RFC 9457); validation errors list the offending fields in `errors`."""


def create_app(settings: Settings | None = None, *, queue: JobQueue | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    app = FastAPI(
        title="dskd",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=runtime.lifespan,
        docs_url=None,  # install_docs serves /docs and /redoc from local files
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.queue = queue or queue_from_settings(settings)
    runtime.configure(app, settings)
    install_error_handlers(app)

    app.include_router(health.router)
    authenticated = [Depends(require_principal)]
    for module in (jobs, events, metrics, artifacts, datasets):
        # Every authenticated route can answer 401, and 503 when the database is unreachable or saturated.
        app.include_router(module.router, dependencies=authenticated, responses=problem_responses(401, 503))
    app.include_router(downloads.router)  # public: the signed token is the credential
    install_docs(app)
    install_problem_schema(app)

    # Outermost last: bodies are size-capped before anything reads them (the upload handler enforces the exact
    # file size), then JSON bodies are checked for values no handler should see.
    app.add_middleware(JsonGuardMiddleware)
    app.add_middleware(
        BodyLimitMiddleware, json_limit=settings.max_request_bytes, upload_limit=settings.max_upload_bytes
    )
    # A bounded number of requests in progress; the rest wait their turn, then 503 with Retry-After.
    app.add_middleware(
        AdmissionMiddleware,
        max_active=settings.max_active_requests,
        max_waiting=settings.max_waiting_requests,
        wait_seconds=settings.request_wait_seconds,
    )
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.metrics_enabled:
        install_metrics(app, settings)  # outside the limits: refused requests are counted too
    app.add_middleware(RequestIdMiddleware)  # added last = outermost: every log line of a request has its id
    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn api.main:app` builds the app lazily, so importing this module has no side effects.
    if name == "app":
        settings = get_settings()
        configure_logging(settings)
        return create_app(settings)
    raise AttributeError(name)
