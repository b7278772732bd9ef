"""``create_app(settings)``: the clinician service as a FastAPI app.

Nothing is loaded when the app is made: the lifespan opens (and migrates) the store, loads the
model once through :func:`skinedge.runtimes.load_runtime`, and the Grad-CAM checkpoint when
``settings.explain`` names one. With ``settings.registry`` it serves the current version of
``settings.deployment`` and watches its pointer, swapping in a promoted version without a
restart (:mod:`skinedge.service.reload`). ``uvicorn`` runs it (``skinedge serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from skinedge import __version__
from skinedge.errors import SkinedgeError
from skinedge.service import schemas
from skinedge.service.auth import RateLimiter
from skinedge.service.middleware import Guard, Metrics
from skinedge.service.models import ServedModel, usable_cores
from skinedge.service.reload import PointerWatcher, load_model, reload_counter
from skinedge.service.routes import router
from skinedge.service.settings import ServeSettings
from skinedge.service.store import Store

STATIC = Path(__file__).parent / "static"
#: ``skinedge serve`` hands its settings to each uvicorn worker in this variable (JSON).
SETTINGS_ENV = "SKINEDGE_SERVE_SETTINGS_JSON"

log = logging.getLogger("skinedge.service")

SERVER_PROBLEM = ("the server cannot answer this now: its store or configuration needs an "
                  "administrator (the details are in the server's log)")


def open_store(settings: ServeSettings) -> Store:
    return Store.open(settings.sqlalchemy_url, settings.data_dir, key_file=settings.key_file,
                      store_key=settings.store_key.get_secret_value()
                      if settings.store_key else None)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ServeSettings = app.state.settings
    store = await run_in_threadpool(open_store, settings)
    store.hold_shared_lock()
    swept = await run_in_threadpool(store.sweep_orphans)
    if swept:
        log.info("removed %d encrypted files no case names (left by an interrupted write)", swept)
    app.state.store = store
    watching = None
    try:
        if getattr(app.state, "model", None) is None:
            app.state.model = await run_in_threadpool(load_model, settings)
        model = app.state.model
        log.info("serving %s (%s)%s", model.settings.model, model.label,
                 f", version {model.version} of deployment {settings.deployment} in "
                 f"{settings.registry}" if settings.registry else "")
        if settings.registry is not None:
            watcher = PointerWatcher(settings, model, app.state.reloads)
            watching = asyncio.create_task(watcher.run(app), name="registry-watcher")
        yield
    finally:
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        store.close()


def create_app(settings: ServeSettings, model: ServedModel | None = None) -> FastAPI:
    """The service for ``settings``; see :mod:`skinedge.service.settings`.

    Args:
        settings: What to serve and where to keep cases.
        model: The model already loaded (``skinedge serve`` loads it first, so that a bad
            artifact is an error message, not a failed worker); None loads it in the lifespan.
    """
    app = FastAPI(
        title="skinedge clinician service",
        version=__version__,
        summary="Skin-lesion classification with Grad-CAM, clinician review and a feedback "
                "store. Decision support, not a diagnosis.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # Swagger UI loads from a CDN: the page works offline
        openapi_url="/api/v1/openapi.json",
    )
    app.state.settings = settings
    app.state.model = model
    app.state.limiter = RateLimiter(settings.rate_limit_per_minute)
    app.state.metrics = Metrics()
    app.state.reloads = reload_counter(app.state.metrics.registry) if settings.registry else None
    app.state.upload_slots = threading.BoundedSemaphore(
        settings.max_concurrent_uploads or usable_cores())
    # Uploads stay in memory up to the size limit: a spooled temporary file would put patient
    # images on disk unencrypted.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size,
                                         settings.max_upload_bytes + (1 << 16))
    app.include_router(router)
    _add_pages(app)
    _add_error_handlers(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])
    # Outermost: the size limit comes before any parsing, the headers on every answer.
    app.add_middleware(Guard, max_upload_mb=settings.max_upload_mb, metrics=app.state.metrics)
    return app


def _add_pages(app: FastAPI) -> None:
    @app.get("/healthz", response_model=schemas.Health, tags=["operations"])
    async def healthz() -> schemas.Health:
        """The process answers (on the event loop: not queued behind uploads)."""
        return schemas.Health(status="ok")

    @app.get("/readyz", response_model=schemas.Ready, tags=["operations"],
             responses={503: {"model": schemas.Ready}})
    def readyz(request: Request) -> Response:
        """The model is loaded and the database answers."""
        model = getattr(request.app.state, "model", None)
        store = getattr(request.app.state, "store", None)
        if model is None or store is None or not store.ping():
            return JSONResponse({"status": "not ready", "model": None}, status_code=503)
        ready = {"status": "ready", "model": model.label}
        if model.version is not None:  # served from a registry: which version, which deployment
            ready.update(registry_version=model.version, deployment=model.deployment)
        return JSONResponse(ready)

    @app.get("/metrics", response_class=Response, tags=["operations"],
             responses={200: {"content": {"text/plain": {}}}})
    def metrics(request: Request) -> Response:
        """Prometheus metrics of this worker (no patient data)."""
        return Response(generate_latest(request.app.state.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=FileResponse, include_in_schema=False)
    def index() -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            return JSONResponse({"detail": "the web page is not installed"}, status_code=404)
        return FileResponse(page, media_type="text/html")

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SkinedgeError)
    async def skinedge_error(request: Request, exc: SkinedgeError) -> JSONResponse:
        # The message names what was wrong; it never holds image bytes or patient fields
        # (uploads are named "the uploaded image").
        if exc.http_status >= 500:  # the server's problem: details for its log, not the client
            log.error("%s %s -> %d: %s", request.method, _route(request), exc.http_status, exc)
            return JSONResponse({"detail": SERVER_PROBLEM}, status_code=exc.http_status)
        log.info("%s %s -> %d %s", request.method, _route(request), exc.http_status,
                 type(exc).__name__)
        return JSONResponse({"detail": str(exc)}, status_code=exc.http_status)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s -> 500 (a bug in skinedge)", request.method, _route(request))
        return JSONResponse({"detail": "internal error; it is in the server's log"},
                            status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"] if part != "body") or "request"
            problems.append(f"{where}: {error['msg']}")
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def create_app_from_environment() -> FastAPI:
    """For uvicorn's ``--factory`` in each worker: the settings ``skinedge serve`` resolved."""
    return create_app(ServeSettings.model_validate_json(os.environ[SETTINGS_ENV]))
