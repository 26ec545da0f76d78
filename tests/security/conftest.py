"""Fixtures of the security tests: the real app served by uvicorn over a real socket."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.served import ServedApp
from tests.support.services import Stack


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
