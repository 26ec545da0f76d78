"""The FastAPI application: `create_app()` wires settings, routers, error handlers and metrics.

Run it with `facejobs api` (uvicorn, factory mode). It never imports torch, ml or workers.
"""

from __future__ import annotations

from fastapi import FastAPI
from PIL import Image

from api.dashboard import mount_static
from api.dashboard import router as dashboard_router
from api.errors import install_error_handlers
from api.limits import BodyLimitMiddleware
from api.metrics import build_registry
from api.routes import (
    artifacts,
    compare,
    dataset_uploads,
    datasets,
    health,
    job_labels,
    jobs,
    kinds,
    logs,
    models,
    pipelines,
    retention,
    search,
    sweeps,
    verify,
    workers,
)
from jobs.broker import get_celery, make_celery
from jobs.settings import Settings, get_settings

DESCRIPTION = """Submit long-running face-model jobs (ArcFace training, model inversion, GAN encoders,
bulk embedding), follow their progress and download their artifacts.

Every route except `/healthz`, `/readyz` and `/metrics` needs an API key in the `X-API-Key` header;
a key sees only its own jobs, datasets and models. Errors are `{"error": {"code", "message", "details"}}`.
"""


JSON_BODY_MIN_BYTES = 1024 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app for `settings` (default: the process settings)."""
    settings = settings or get_settings()
    app = FastAPI(title="facejobs", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
    # The process-wide Celery producer, unless this app was given settings of its own (tests, tools).
    app.state.celery = get_celery() if settings is get_settings() else make_celery(settings)
    app.state.metrics_registry = build_registry(settings, app.state.celery)
    # Pillow's own bomb check, for any code path that opens an image; uploads check explicitly too.
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max(JSON_BODY_MIN_BYTES, 4 * settings.max_params_bytes))
    for module in (
        job_labels,
        jobs,
        retention,
        artifacts,
        logs,
        kinds,
        dataset_uploads,
        datasets,
        models,
        verify,
        search,
        workers,
        compare,
    ):
        app.include_router(module.router)
    app.include_router(pipelines.graph_router)
    for module in (pipelines, sweeps, health):
        app.include_router(module.router)
    app.include_router(retention.keys_router)
    app.include_router(dashboard_router)
    mount_static(app)
    return app
