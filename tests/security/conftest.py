"""Fixtures of the security tests: the real app served by uvicorn over a real socket."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.platform.s3server import free_ports
from tests.services import Stack


class ServedApp:
    """An ASGI app served by uvicorn in a thread of this process, on a free port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        (self.port,) = free_ports(1)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def serve(services_stack: Stack) -> Iterator[Callable[..., ServedApp]]:
    """`serve(**settings overrides)`: a new app on the services stack, served over HTTP until the test ends."""
    from api.app import create_app

    served: list[ServedApp] = []

    def start(**overrides: Any) -> ServedApp:
        app = create_app(services_stack.settings.model_copy(update=overrides)) if overrides else services_stack.app
        served.append(ServedApp(app))
        return served[-1]

    yield start
    for s in served:
        s.stop()
