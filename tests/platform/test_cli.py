"""The `facejobs` command: the embedded stack, the GPU launcher, and submit/follow/download."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.jobs import wait_http
from tests.support.s3server import free_ports
from tests.support.services import REPO, Stack


def facejobs(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stack.cli", *args],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_up_runs_the_embedded_stack_without_redis(tmp_path: Path) -> None:
    """No Redis reachable: `facejobs up` falls back to the SQLite broker and still runs jobs."""
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "FACEJOBS_HOME": str(tmp_path / "home"),
        "FACEJOBS_DATABASE_URL": "",
        "FACEJOBS_STORE_BACKEND": "local",
        "FACEJOBS_BROKER_URL": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        "FACEJOBS_API_PORT": str(port),
    }
    up = subprocess.Popen(
        [sys.executable, "-m", "stack.cli", "up"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        key = (tmp_path / "home" / "dev-api-key").read_text().strip()
        assert key.startswith("fj_")
        done = facejobs("submit", "probe", "-p", "matmul_size=64", "--follow", env=env, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "succeeded" in done.stdout
        result = json.loads(done.stdout[done.stdout.index("{") :])
        assert result["matmul_size"] == 64
        listing = facejobs("jobs", env=env)
        assert listing.returncode == 0 and " succeeded " in listing.stdout
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        out, _ = up.communicate(timeout=60)
    assert f"dashboard http://127.0.0.1:{port}/" in out
    assert "broker sqla+sqlite:///" in out


def test_submit_follow_and_download_against_a_served_api(services_stack: Stack, tmp_path: Path) -> None:
    stack = services_stack
    (port,) = free_ports(1)
    env = {**stack.env, "FACEJOBS_API_PORT": str(port)}
    api = subprocess.Popen(
        [sys.executable, "-m", "stack.cli", "api"], cwd=REPO, env={**os.environ, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    stack.workers.append(api)  # stopped with the workers
    wait_http(f"http://127.0.0.1:{port}/healthz")
    stack.start_worker()
    cli_env = {**env, "FACEJOBS_API_KEY": stack.key}
    done = facejobs("submit", "probe", "--param", "matmul_size=96", "--param", "matmul_repeats=2", "-f", env=cli_env)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.split()[3]
    out = tmp_path / "dl"
    got = facejobs("artifacts", job_id, "--download", str(out), env=cli_env)
    assert got.returncode == 0, got.stderr
    assert json.loads((out / "probe.json").read_text())["matmul_size"] == 96
    shown = json.loads(facejobs("show", job_id, env=cli_env).stdout)
    assert (shown["status"], shown["params"]["matmul_repeats"]) == ("succeeded", 2)
    wrong = facejobs("show", job_id, env={**env, "FACEJOBS_API_KEY": stack.other_key})
    assert wrong.returncode != 0 and "not found" in (wrong.stdout + wrong.stderr).lower()


def test_gpu_launcher_starts_one_pinned_worker_per_gpu(services_stack: Stack) -> None:
    stack = services_stack
    env = {**os.environ, **stack.env}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "stack.cli", "worker", "--queues", "cpu", "--gpus", "0,1"], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    host = socket.gethostname()
    try:
        deadline = time.monotonic() + 60
        rows: list[dict[str, object]] = []
        while time.monotonic() < deadline and len(rows) < 2:
            rows = stack.client.get("/workers").json()
            time.sleep(0.3)
        assert sorted((w["id"], w["device"], w["queues"]) for w in rows) == [
            (f"gpu0@{host}", "cuda (CUDA_VISIBLE_DEVICES=0)", "cpu"),
            (f"gpu1@{host}", "cuda (CUDA_VISIBLE_DEVICES=1)", "cpu"),
        ]
    finally:
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(60) == 0
    assert stack.client.get("/workers").json() == []  # each worker removed its row on the way out
