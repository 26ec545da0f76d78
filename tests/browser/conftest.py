"""Fixtures of the dashboard tests: the real app served by uvicorn, and Debian's headless Chromium.

Chromium is the system package (`/usr/bin/chromium`), driven by Playwright's Python package; no
browser is ever downloaded. The app is `create_app()` of the stack under test plus the dashboard's
router and static files (added here only while `create_app` does not include them itself).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import LiveDashboard
from tests.support.services import Stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows",
]  # fmt: skip


def dashboard_app(stack: Stack) -> Any:
    """`create_app()` for the stack's settings, with the dashboard wired in if it is not already."""
    from api.app import create_app
    from api.dashboard import mount_static, router

    app = create_app(stack.settings)
    paths = {getattr(r, "path", None) for r in app.routes}
    if "/ui/jobs/{job_id}" not in paths:
        app.include_router(router)
    if "/ui/static" not in paths:
        mount_static(app)
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def chromium_browser() -> Iterator[Any]:
    """One headless Chromium for the session (Debian's package, driven by Playwright)."""
    from jobs.settings import get_settings

    strict = get_settings().require_browser
    try:
        from playwright import sync_api
    except ImportError:
        if strict:
            pytest.fail("playwright is missing (FACEJOBS_REQUIRE_BROWSER=1 forbids skipping): pip install playwright")
        pytest.skip("pip install playwright (dev extra)")
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        if strict:
            pytest.fail(
                f"no Chromium at {CHROMIUM} (FACEJOBS_REQUIRE_BROWSER=1 forbids skipping): apt-get install chromium"
            )
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _serve(stack: Stack, browser: Any) -> Iterator[LiveDashboard]:
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(dashboard_app(stack), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start the dashboard app")
        time.sleep(0.02)
    try:
        yield LiveDashboard(url=f"http://127.0.0.1:{port}", stack=stack, browser=browser)
    finally:
        server.should_exit = True
        thread.join(10)
        for context in list(browser.contexts):
            context.close()


@pytest.fixture
def live_dashboard(services_stack: Stack, chromium_browser: Any) -> Iterator[LiveDashboard]:
    """The dashboard on PostgreSQL, Redis and S3 (artifacts are presigned URLs of another origin)."""
    yield from _serve(services_stack, chromium_browser)


@pytest.fixture
def live_dashboard_embedded(embedded_stack: Stack, chromium_browser: Any) -> Iterator[LiveDashboard]:
    """The dashboard on the embedded stack (SQLite, local artifact folder: artifacts are streamed)."""
    yield from _serve(embedded_stack, chromium_browser)


@pytest.fixture(params=["services", "embedded"])
def live_dashboard_both(request: pytest.FixtureRequest, chromium_browser: Any) -> Iterator[LiveDashboard]:
    """The dashboard on the real services, then on the embedded stack."""
    stack: Stack = request.getfixturevalue(f"{request.param}_stack")
    yield from _serve(stack, chromium_browser)
