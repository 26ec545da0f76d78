"""The dashboard: server-rendered page shells plus small vanilla JavaScript that polls the JSON API.

The pages hold no data: every number on them is fetched by the browser with the `X-API-Key` kept in
the tab's sessionStorage, so nothing is reachable without a key and the HTML can be cached by
nobody in particular. `router` serves the pages (and one JSON helper, see `links.py`);
`mount_static(app)` serves `static/` under `/ui/static`. No build step, no CDN.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from api.dashboard.links import router as links_router
from jobs.settings import Settings

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATES_DIR = HERE / "templates"
STATIC_PREFIX = "/ui/static"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "waiting", "held")

# Scripts only from our own origin (no inline script, so injected markup cannot run); images also from
# blob: URLs of fetched artifacts and from the object store's presigned URLs (its public origin).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:{store}; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def store_origin(settings: Settings) -> str | None:
    """The origin of the presigned URLs the browser is sent to (None for the local store)."""
    if settings.store_backend != "s3":
        return None
    public = settings.s3_public_endpoint
    if public:
        parts = urlsplit(public if "://" in public else f"http://{public}")
        return f"{parts.scheme}://{parts.netloc}"
    return ("https://" if settings.s3_secure else "http://") + settings.s3_endpoint


def content_security_policy(settings: Settings) -> str:
    origin = store_origin(settings)
    return CONTENT_SECURITY_POLICY.format(store=f" {origin}" if origin else "")


def _asset_version() -> str:
    """A digest of every static file, appended to asset URLs so a deploy never serves stale scripts."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


ASSET_VERSION = _asset_version()
templates = Jinja2Templates(directory=TEMPLATES_DIR)
templates.env.globals["static"] = lambda name: f"{STATIC_PREFIX}/{name}?v={ASSET_VERSION}"
templates.env.globals["statuses"] = STATUSES

router = APIRouter(include_in_schema=False)
router.include_router(links_router)


def _page(request: Request, template: str, page: str, title: str, **context: object) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    headers = {**PAGE_HEADERS, "Content-Security-Policy": content_security_policy(settings)}
    return templates.TemplateResponse(request, template, {"page": page, "title": title, **context}, headers=headers)


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    """The jobs table (the dashboard's home)."""
    return _page(request, "jobs.html", "jobs", "Jobs")


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    """One job; whether it exists (for this key) is answered by the API, in the browser."""
    job_id = job_id[:200]  # any id gets the page (and its "not found"), a huge one only its start
    return _page(request, "job.html", "job", f"Job {job_id[:8]}", job_id=job_id)


@router.get("/ui/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> HTMLResponse:
    """The submit form, built in the browser from `GET /kinds`."""
    return _page(request, "submit.html", "submit", "Submit a job")


@router.get("/ui/datasets", response_class=HTMLResponse)
def datasets_page(request: Request) -> HTMLResponse:
    """Dataset upload (with a progress bar) and the caller's datasets."""
    return _page(request, "datasets.html", "datasets", "Datasets")


@router.get("/ui/verify", response_class=HTMLResponse)
def verify_page(request: Request) -> HTMLResponse:
    """Two images, one model: each face drawn, the aligned crops, distance against the threshold."""
    return _page(request, "verify.html", "verify", "Verify")


@router.get("/ui/search", response_class=HTMLResponse)
def search_page(request: Request) -> HTMLResponse:
    """One image: every face, its embedding (JSON, .npy) and its top 5 matches in an index."""
    return _page(request, "search.html", "search", "Embed and search")


@router.get("/ui/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(request: Request, dataset_id: str) -> HTMLResponse:
    """One dataset's thumbnails per identity, with an embed job's detections and failures."""
    dataset_id = dataset_id[:200]
    return _page(request, "dataset.html", "datasets", f"Dataset {dataset_id[:8]}", dataset_id=dataset_id)


@router.get("/ui/workers", response_class=HTMLResponse)
def workers_page(request: Request) -> HTMLResponse:
    """Workers, their devices and heartbeats."""
    return _page(request, "workers.html", "workers", "Workers")


@router.get("/ui/pipelines/{pipeline_id}", response_class=HTMLResponse)
def pipeline_page(request: Request, pipeline_id: str) -> HTMLResponse:
    """A pipeline's steps as a graph (jobs/pipelines.py); the data comes from `GET /pipelines/{id}`."""
    pipeline_id = pipeline_id[:200]
    return _page(request, "pipeline.html", "pipeline", f"Pipeline {pipeline_id[:8]}", pipeline_id=pipeline_id)


@router.get("/ui/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(request: Request, sweep_id: str) -> HTMLResponse:
    """A sweep's children ranked by its metric (jobs/sweeps.py); the data comes from `GET /sweeps/{id}`."""
    sweep_id = sweep_id[:200]
    return _page(request, "sweep.html", "sweep", f"Sweep {sweep_id[:8]}", sweep_id=sweep_id)


@router.get("/ui/compare", response_class=HTMLResponse)
def compare_page(request: Request) -> HTMLResponse:
    """Jobs side by side (`?ids=a,b,c`, a shareable URL); the data comes from `GET /compare` in the browser."""
    return _page(request, "compare.html", "compare", "Compare jobs")


def mount_static(app: FastAPI) -> None:
    """Serve the dashboard's scripts and stylesheet under `/ui/static`."""
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="dashboard-static")


__all__ = ["ASSET_VERSION", "STATIC_PREFIX", "mount_static", "router"]
