"""The embedded stack as child processes of one command (`facejobs up`, `facejobs demo`).

The parent starts the API and one worker (with the reaper), and stops them on every way it can be
told to end, so no child outlives it holding the port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from jobs.settings import Settings


def ensure_dev_key(settings: Settings) -> str:
    """The development key in `home/dev-api-key`, created (and stored hashed) when missing or revoked."""
    from jobs.db import session_scope
    from jobs.keys import create_key, lookup_key

    path = settings.dev_key_file
    if path.exists():
        key = path.read_text().strip()
        with session_scope() as s:
            if lookup_key(s, key) is not None:
                return key
    with session_scope() as s:
        _, key = create_key(s, "dev")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def start_embedded(
    settings: Settings, port: int, quiet: bool = False, procs: list[subprocess.Popen[bytes]] | None = None
) -> tuple[list[subprocess.Popen[bytes]], str]:
    """Migrate, then start the API and one worker (with the reaper) as child processes.

    Each child is appended to `procs` (a new list by default) as soon as it starts, so a caller
    interrupted while waiting for the API still knows every child to stop.
    """
    procs = [] if procs is None else procs
    from jobs.migrate import upgrade

    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    key = ensure_dev_key(settings)
    logs = settings.home / "logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "FACEJOBS_API_PORT": str(port)}
    api = subprocess.Popen(
        [sys.executable, "-m", "stack.cli", "api", "--port", str(port)], env=env,
        stdout=(logs / "api.log").open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    procs.append(api)
    name = f"embedded@{socket.gethostname()}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "stack.cli", "worker", "--queues", "gpu,cpu", "--name", name],
        env=env, stdout=(logs / "worker.log").open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    procs.append(worker)
    url = f"http://{settings.api_host}:{port}"
    from client.sdk import Client

    client = Client(url, key)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            client.health()
            break
        if api.poll() is not None:
            raise SystemExit(f"the API exited with {api.returncode}; see {logs / 'api.log'}")
        time.sleep(0.3)
    return procs, key


class Stopping(Exception):
    """A terminating signal arrived: the children are stopped, then the command exits."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopping on {signal.Signals(signum).name}")
        self.signum = signum


# Everything that ends a process by default and can be caught: kill, docker stop and systemd send
# SIGTERM, a closed terminal or ssh session SIGHUP, Ctrl-C SIGINT, Ctrl-\ SIGQUIT.
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)


@contextlib.contextmanager
def stop_children_on_signals(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """Turn every terminating signal into `Stopping` and, on the way out, stop every child in `procs`.

    Without this the default action of SIGTERM or SIGHUP ends this process at once and leaves its
    children running as orphans that still hold the API port. A second signal while the children
    are being stopped kills them instead of waiting for their graceful shutdown.
    """

    def raise_stopping(signum: int, _frame: Any) -> None:
        raise Stopping(signum)

    def kill_now(_signum: int, _frame: Any) -> None:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()

    previous = {s: signal.signal(s, raise_stopping) for s in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for s in TERMINATING_SIGNALS:
            signal.signal(s, kill_now)
        try:
            _stop(procs)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
