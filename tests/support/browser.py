"""The dashboard served for a stack, and pages opened on it in Chromium (the browser tests' fixtures make these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.support.services import Stack

VIEWPORT = {"width": 1400, "height": 900}


KEY_STORAGE = "facejobs.apiKey"


@dataclass
class LiveDashboard:
    """The app served over HTTP for the stack, and a way to open pages already logged in (or not)."""

    url: str
    stack: Stack
    browser: Any

    def page(self, path: str = "/", logged_in: bool = True, key: str | None = None) -> Any:
        """A fresh browser context (own sessionStorage) on `path`; with the stack's key unless told not to."""
        context = self.browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        context.set_default_timeout(15_000)
        if logged_in:
            # sessionStorage belongs to the tab: set it before any page script runs.
            context.add_init_script(f"sessionStorage.setItem({KEY_STORAGE!r}, {key or self.stack.key!r})")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors  # a page script that throws fails the test that looks
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.dialogs = dialogs  # an alert() would mean injected markup ran
        page.goto(self.url + path)
        return page
