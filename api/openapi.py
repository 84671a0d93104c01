"""The API's description of itself: readable operation ids, and /docs and /redoc served from vendored files.

Generated clients name their methods after operation ids, so they are `<tag>_<verb>` (`jobs_create`,
`artifacts_download`) instead of FastAPI's default `create_job_v1_jobs_post`. The docs pages load Swagger UI and
ReDoc from `api/static/vendor/` (see its README for versions and licences): no CDN, so they work offline.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute

from api.errors import PROBLEM_MEDIA_TYPE, PROBLEM_SCHEMA

VENDOR_PREFIX = "/ui/vendor"
VENDOR_VERSIONS = {"uplot": "1.6.32", "swagger-ui-dist": "5.35.0", "redoc": "2.5.4"}

# Resource nouns dropped from a handler's name: `create_job` under tag `jobs` becomes `jobs_create`.
_NOUNS = frozenset({"job", "jobs", "dataset", "datasets", "artifact", "artifacts", "event", "events"})
_NOUNS |= {"metrics", "key", "keys"}
# Handlers whose names say nothing once the nouns are gone.
_VERBS = {"healthz": "live", "readyz": "ready"}


def operation_id(route: APIRoute) -> str:
    """`<first tag>_<verb>`: the handler's name without the resource nouns (`job_events` → `events_list`)."""
    tag = str(route.tags[0]) if route.tags else "default"
    name = _VERBS.get(route.name, route.name)
    verb = "_".join(part for part in name.split("_") if part not in _NOUNS) or "list"
    return f"{tag}_{verb}"


def install_problem_schema(app: FastAPI) -> None:
    """Every 4xx/5xx response in the schema points at one `Problem` component (application/problem+json).

    FastAPI documents its own 422 as `HTTPValidationError` JSON; this API answers validation errors as problem
    documents too, so the schema is corrected once here instead of in every route.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = {"title": "Problem", **PROBLEM_SCHEMA["content"][PROBLEM_MEDIA_TYPE]["schema"]}
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        ref = {"$ref": "#/components/schemas/Problem"}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for code, response in operation.get("responses", {}).items():
                    if code[:1] in ("4", "5"):
                        response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": ref}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI, with Authorize) and `/redoc`, both from the package's own static files.

    Create the app with `docs_url=None, redoc_url=None` so FastAPI's CDN-backed pages are not registered.
    """

    def prefix(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} API — Swagger UI",
            swagger_js_url=f"{root}{VENDOR_PREFIX}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{VENDOR_PREFIX}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}{VENDOR_PREFIX}/swagger-ui/favicon-32x32.png",
            oauth2_redirect_url=None,
            # The key survives a reload; no call to the public validator service.
            swagger_ui_parameters={
                "persistAuthorization": True,
                "displayRequestDuration": True,
                "validatorUrl": None,
            },
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_redoc_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} API — ReDoc",
            redoc_js_url=f"{root}{VENDOR_PREFIX}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{VENDOR_PREFIX}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
