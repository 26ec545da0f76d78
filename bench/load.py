"""Load benchmark of job submission: 2,000 jobs from 20 concurrent clients against the real services.

    python bench/load.py [--quick] [--json PATH] [--jobs N] [--clients C] [--device cpu|cuda]

The API runs as `facejobs api` (uvicorn, one process) on a PostgreSQL database created for the run
and the machine's Redis (a key prefix of its own); nothing consumes the queue, so every submitted
job must be found afterwards: one row per job, queued and marked sent, and one message per job in
the broker. 20 client threads (one keep-alive httpx client each) submit `probe` jobs as fast as
they get answers. Two baselines run in the same process, with the same clients, so the ratio says
what facejobs costs on top of them on this machine at this moment:

- `bare FastAPI`: a FastAPI app with one no-op POST route (a pydantic body, a sync handler in the
  thread pool, as `POST /jobs` is), served by uvicorn the same way: the price of HTTP + FastAPI;
- `raw send_task`: Celery's `send_task` to the same Redis from 20 threads: the broker part alone.

It prints a table and writes every printed figure to the JSON (`--json`). `--quick` submits 200.
Servers, database and Redis keys are removed at the end. It runs no model: `--device` (taken by
every bench, so one command line drives them all) is only recorded in the JSON's config.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/11"
PARAMS = {"matmul_size": 16}
DB_POOL_SIZE = 10  # per process: 10 pooled + 10 overflow, enough for 20 concurrent requests


# ---- the baseline server ------------------------------------------------------------------------
class NoopBody(BaseModel):
    """The same shape as a job submission, parsed the same way."""

    kind: str
    params: dict[str, Any] = {}


def noop_app() -> Any:
    """A bare FastAPI app: one POST route that parses a small JSON body and answers 201."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/noop", status_code=201)
    def noop(body: NoopBody) -> dict[str, str]:
        return {"id": uuid.uuid4().hex, "kind": body.kind}

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve_noop(port: int) -> None:
    import uvicorn

    uvicorn.run(noop_app(), host="127.0.0.1", port=port, log_level="warning")


# ---- set-up -------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(cmd: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[2:4]} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server on port {port} did not start; see {log}")


def stack_env(home: Path, db_url: str, prefix: str) -> dict[str, str]:
    """The environment of a bench's own facejobs: its database, its Redis key prefix, a local store."""
    return {
        **os.environ, "FACEJOBS_ENV": "test", "FACEJOBS_HOME": str(home), "FACEJOBS_DATABASE_URL": db_url,
        "FACEJOBS_BROKER_URL": REDIS_URL, "FACEJOBS_BROKER_KEY_PREFIX": prefix,
        "FACEJOBS_BROKER_FALLBACK_EMBEDDED": "false", "FACEJOBS_STORE_BACKEND": "local",
        "FACEJOBS_KEY_PEPPER": secrets.token_hex(16), "PYTHONPATH": str(REPO),
    }  # fmt: skip


def create_database() -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    from jobs.migrate import upgrade

    name = f"facejobs_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    return name, url


def drop_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    from jobs.db import dispose_engines

    dispose_engines()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def delete_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# ---- measuring ----------------------------------------------------------------------------------
def stats(latencies: list[float], wall: float, ok: int) -> dict[str, float]:
    """Latency percentiles (ms, nearest rank) and throughput of one scenario."""
    xs = sorted(latencies)

    def pct(p: float) -> float:
        return 1000 * xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]

    return {
        "requests": len(xs), "ok": ok, "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
        "max_ms": 1000 * xs[-1], "wall_s": wall, "per_second": len(xs) / wall,
    }  # fmt: skip


def run_clients(n: int, clients: int, call: Any) -> tuple[list[float], float, int]:
    """`call(client_index, i)` n times over `clients` threads; (latencies, wall seconds, successes)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    ok = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def work(c: int) -> None:
        barrier.wait()
        for i in range(c, n, clients):
            t0 = time.perf_counter()
            good = call(c, i)
            latencies[c].append(time.perf_counter() - t0)
            ok[c] += bool(good)

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return [x for ls in latencies for x in ls], time.perf_counter() - t0, sum(ok)


def http_scenario(url: str, path: str, key: str, n: int, clients: int) -> dict[str, float]:
    sessions = [httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) for _ in range(clients)]
    try:
        for s in sessions:  # warm: connections open, pools filled, code paths imported (no job created)
            if path == "/noop":
                s.post(path, json={"kind": "warmup", "params": PARAMS})
            else:
                s.get("/kinds")

        def call(c: int, _i: int) -> bool:
            return sessions[c].post(path, json={"kind": "probe", "params": PARAMS}).status_code == 201

        return stats(*run_clients(n, clients, call))
    finally:
        for s in sessions:
            s.close()


def send_task_scenario(settings: Any, n: int, clients: int) -> dict[str, float]:
    from jobs.broker import enqueue, make_celery

    app = make_celery(settings)
    enqueue(uuid.uuid4().hex, "probe", "gpu", app=app)  # warm: connection pool open

    def call(_c: int, _i: int) -> bool:
        enqueue(uuid.uuid4().hex, "probe", "gpu", app=app)
        return True

    return stats(*run_clients(n, clients, call))


def count_results(settings: Any, n: int) -> dict[str, int]:
    """What was stored: rows, rows marked as sent, and messages waiting in the broker."""
    from sqlalchemy import func, select

    from jobs.broker import make_celery, queue_size
    from jobs.db import session_scope
    from jobs.models import Job
    from jobs.states import JobStatus

    with session_scope(settings.resolved_database_url) as s:
        rows = s.scalar(select(func.count()).select_from(Job)) or 0
        queued_sent = s.scalar(select(func.count()).where(Job.status == JobStatus.QUEUED, Job.enqueued_at.is_not(None)))
    return {"expected": n, "rows": rows, "queued_and_sent": queued_sent or 0,
            "broker_messages": queue_size("gpu", make_celery(settings))}  # fmt: skip


# ---- report -------------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> None:
    cfg = results["config"]
    print(f"\nfacejobs submit load: {cfg['jobs']} jobs, {cfg['clients']} concurrent clients, "
          f"PostgreSQL + Redis, uvicorn x1, db pool {cfg['db_pool_size']}")  # fmt: skip
    print(f"{'scenario':28} {'requests':>8} {'ok':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'req/s':>8}")  # fmt: skip
    for name, label in (("facejobs", "POST /jobs (facejobs)"), ("bare_fastapi", "POST /noop (bare FastAPI)"),
                        ("raw_send_task", "send_task (raw Celery)")):  # fmt: skip
        r = results[name]
        print(f"{label:28} {r['requests']:>8} {r['ok']:>6} {r['p50_ms']:>8.1f} {r['p90_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} {r['per_second']:>8.0f}")  # fmt: skip
    ratio = results["ratios"]
    print(f"facejobs / bare FastAPI: p50 x{ratio['p50_vs_bare_fastapi']:.2f}, p99 x{ratio['p99_vs_bare_fastapi']:.2f}, "
          f"throughput x{ratio['throughput_vs_bare_fastapi']:.2f}")  # fmt: skip
    print(f"facejobs / raw send_task: p50 x{ratio['p50_vs_raw_send_task']:.2f}, "
          f"throughput x{ratio['throughput_vs_raw_send_task']:.2f}")  # fmt: skip
    c = results["counts"]
    lost = c["expected"] - min(c["rows"], c["queued_and_sent"], c["broker_messages"])
    print(f"stored: {c['rows']} rows, {c['queued_and_sent']} queued and sent, {c['broker_messages']} broker "
          f"messages for {c['expected']} accepted jobs -> {lost} lost")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 jobs instead of 2,000")
    parser.add_argument("--jobs", type=int, help="jobs to submit (default 2000, or 200 with --quick)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write every printed figure here")
    parser.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    if "--serve-noop" not in sys.argv:  # the no-op server must not pay for importing torch
        from bench.common import add_device_arg

        add_device_arg(parser)
    args = parser.parse_args()
    if args.serve_noop:
        serve_noop(args.serve_noop)
        return 0
    n = args.jobs or (200 if args.quick else 2000)

    home = Path(tempfile.mkdtemp(prefix="facejobs-bench-"))
    prefix = f"facejobs-bench-{os.getpid()}-{secrets.token_hex(3)}:"
    db_name, db_url = create_database()
    env = {**stack_env(home, db_url, prefix), "FACEJOBS_DB_POOL_SIZE": str(DB_POOL_SIZE)}
    os.environ.update(env)  # this process creates the key and counts the rows with the same settings
    procs: list[subprocess.Popen[bytes]] = []
    try:
        from jobs.db import session_scope
        from jobs.keys import create_key
        from jobs.settings import get_settings

        settings = get_settings()
        with session_scope(db_url) as s:
            _, key = create_key(s, "bench")
        api_port, noop_port = free_port(), free_port()
        procs.append(start_server([sys.executable, "-m", "stack.cli", "api", "--port", str(api_port)], env,
                                  api_port, home / "api.log"))  # fmt: skip
        procs.append(start_server([sys.executable, str(Path(__file__).resolve()), "--serve-noop", str(noop_port)],
                                  env, noop_port, home / "noop.log"))  # fmt: skip

        results: dict[str, Any] = {"config": {"jobs": n, "clients": args.clients, "db_pool_size": DB_POOL_SIZE,
                                              "quick": args.quick, "params": PARAMS,
                                              "device": args.device}}  # fmt: skip
        results["facejobs"] = http_scenario(f"http://127.0.0.1:{api_port}", "/jobs", key, n, args.clients)
        results["counts"] = count_results(settings, n)
        results["bare_fastapi"] = http_scenario(f"http://127.0.0.1:{noop_port}", "/noop", key, n, args.clients)
        other = settings.model_copy(update={"broker_key_prefix": prefix + "raw:"})
        results["raw_send_task"] = send_task_scenario(other, n, args.clients)
        fj, bare, raw = results["facejobs"], results["bare_fastapi"], results["raw_send_task"]
        results["ratios"] = {
            "p50_vs_bare_fastapi": fj["p50_ms"] / bare["p50_ms"], "p99_vs_bare_fastapi": fj["p99_ms"] / bare["p99_ms"],
            "throughput_vs_bare_fastapi": fj["per_second"] / bare["per_second"],
            "p50_vs_raw_send_task": fj["p50_ms"] / raw["p50_ms"],
            "throughput_vs_raw_send_task": fj["per_second"] / raw["per_second"],
        }  # fmt: skip
        c = results["counts"]
        results["lost"] = c["expected"] - min(c["rows"], c["queued_and_sent"], c["broker_messages"])
        report(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.json}")
        return 0 if results["lost"] == 0 and fj["ok"] == n else 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(15)
        drop_database(db_name)
        delete_redis_keys(prefix)


if __name__ == "__main__":
    sys.exit(main())
