"""`facejobs up` stops its API and worker on every terminating signal, leaving no orphan on the port.

`kill`, `docker stop` and systemd send SIGTERM, a closed terminal SIGHUP: before, both ended `up`
at once and its children went on running, still holding the port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.jobs import wait_http
from tests.support.s3server import free_ports
from tests.support.services import REPO

PASSWORD = "s3cret-never-printed"


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live (not zombie) process, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    return parents


def children_of(pid: int) -> set[int]:
    return {child for child, parent in _parents().items() if parent == pid}


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, grandchildren, ...)."""
    parents = _parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def port_free(port: int) -> bool:
    """True when nothing listens on `port`: a server could bind it now.

    SO_REUSEADDR, as uvicorn sets it: without it the bind also fails while the closed connections of
    the test's own health checks sit in TIME_WAIT, which held every signal test for a minute.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(condition: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_up_stops_every_child_on_a_terminating_signal(signum: int, tmp_path: Path) -> None:
    """Start `up` on a free port, signal only `up` itself: every child ends and the port is free again."""
    (port,) = free_ports(1)
    home = tmp_path / ".cache" / "facejobs"  # a dotted folder, as real homes have
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FACEJOBS_HOME": str(home),
        "FACEJOBS_DATABASE_URL": "",
        "FACEJOBS_STORE_BACKEND": "local",
        # Nothing listens on port 1: `up` falls back to the embedded broker and logs that it did,
        # which must not print the password.
        "FACEJOBS_BROKER_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0",
        "FACEJOBS_API_PORT": str(port),
        "FACEJOBS_TORCH_THREADS": "1",
    }
    console = tmp_path / "up.out"
    up = subprocess.Popen(
        [sys.executable, "-m", "stack.cli", "up"], cwd=REPO, env=env,
        stdout=console.open("w"), stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    children: set[int] = set()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120)
        # Started means it said so: a signal during start-up stops it too, but before it printed its banner.
        wait_until(lambda: "stops everything." in console.read_text(), "`up` did not finish starting")
        assert len(children_of(up.pid)) == 2  # the API and the worker
        children = descendants(up.pid)  # with the worker's prefork pool child
        assert not port_free(port)
        os.kill(up.pid, signum)  # only `up`: not its process group, as `kill PID` does
        up.wait(timeout=120)
        out = console.read_text()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
        for pid in children:  # never leave an orphan behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(alive(p) for p in children), f"children {sorted(children)} did not end")
    assert [p for p in children if alive(p)] == []
    wait_until(lambda: port_free(port), f"port {port} was not freed")
    assert up.returncode == 0
    name = signal.Signals(signum).name
    assert f"stopping on {name}: the API and the worker are stopped" in out
    assert "redis://:***@127.0.0.1:1/0 is not reachable" in out
    assert PASSWORD not in out
    for log in (home / "logs").glob("*.log"):
        assert PASSWORD not in log.read_text(errors="replace"), log


def test_demo_stops_every_child_on_sigterm(tmp_path: Path) -> None:
    """`make demo` starts the same stack: SIGTERM while its pipeline runs leaves no orphan either."""
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FACEJOBS_HOME": str(tmp_path / ".cache" / "facejobs"),
        "FACEJOBS_DATABASE_URL": "",
        "FACEJOBS_STORE_BACKEND": "local",
        "FACEJOBS_BROKER_URL": "redis://127.0.0.1:1/0",  # unreachable: the embedded broker
        "FACEJOBS_API_PORT": str(port),
        "FACEJOBS_TORCH_THREADS": "1",
    }
    demo = subprocess.Popen(
        [sys.executable, "-m", "stack.demo", "--exit-when-done"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    children: set[int] = set()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120)
        assert len(children_of(demo.pid)) == 2  # the API and the worker
        children = descendants(demo.pid)
        os.kill(demo.pid, signal.SIGTERM)
        out, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(alive(p) for p in children), f"children {sorted(children)} did not end")
    wait_until(lambda: port_free(port), f"port {port} was not freed")
    assert demo.returncode == 0, out
