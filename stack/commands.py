"""The `facejobs` commands that run the stack: up, api, worker, reaper, migrate, keys.

These start the server's processes or write its database directly, so they import `api`,
`workers` and `jobs` (lazily: `facejobs submit` never pays for Celery or FastAPI).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from jobs.redact import redact_url
from jobs.settings import get_settings
from stack.embedded import Stopping, start_embedded, stop_children_on_signals


def cmd_migrate(args: argparse.Namespace) -> int:
    from jobs.migrate import upgrade

    url = get_settings().resolved_database_url
    upgrade(url)
    print(f"database at {redact_url(url)} is at the latest revision")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from jobs.db import session_scope
    from jobs.keys import create_key, revoke_key

    if args.action == "create":
        with session_scope() as s:
            row, key = create_key(s, args.name)
        print(key)
        print(f"(key id {row.id}; shown once, store it now)", file=sys.stderr)
    elif args.action == "revoke":
        with session_scope() as s:
            ok = revoke_key(s, args.name)
        print("revoked" if ok else "no such key id")
        return 0 if ok else 1
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    queues = args.queues
    if args.gpus:
        return _launch_gpu_workers(args)
    name = args.name or f"{queues.replace(',', '-')}-{os.getpid()}@{socket.gethostname()}"
    from workers.celery_app import app

    argv = [
        "worker", "-Q", queues, "-n", name, "-c", str(args.concurrency), "--pool", args.pool,
        "--loglevel", args.loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    app.worker_main(argv)
    return 0


def gpu_groups(gpus: str, per_job: int, queues: str) -> list[tuple[list[str], str]]:
    """The worker processes a host's GPUs make: (CUDA_VISIBLE_DEVICES, queues) each.

    `per_job` 1: one process per GPU on `queues`. `per_job` N > 1: one process per group of N GPUs
    on queue `gpu-N` (its jobs spawn N ranks, one a GPU); GPUs left over serve `queues` one each.
    """
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if per_job < 1:
        raise SystemExit(f"--gpus-per-job must be >= 1, got {per_job}")
    if per_job == 1:
        return [([g], queues) for g in ids]
    whole = len(ids) - len(ids) % per_job
    groups = [(ids[i : i + per_job], f"gpu-{per_job}") for i in range(0, whole, per_job)]
    return groups + [([g], queues) for g in ids[whole:]]


def _launch_gpu_workers(args: argparse.Namespace) -> int:
    """One pinned worker process per GPU (CUDA_VISIBLE_DEVICES), one reaper among them."""
    host = socket.gethostname()
    procs: list[subprocess.Popen[bytes]] = []
    for i, (gpus, queues) in enumerate(gpu_groups(args.gpus, args.gpus_per_job, args.queues)):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
        if i > 0:
            env["FACEJOBS_RUN_REAPER"] = "false"
        name = f"gpu{'-'.join(gpus)}@{host}"
        cmd = [
            sys.executable, "-m", "stack.cli", "worker", "--queues", queues, "--concurrency", "1",
            "--name", name, "--pool", args.pool, "--loglevel", args.loglevel,
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env))
        print(f"started worker {name} on {queues} (pid {procs[-1].pid}, CUDA_VISIBLE_DEVICES={','.join(gpus)})")

    def forward(signum: int, _frame: Any) -> None:
        # A Celery worker restarts on SIGHUP: a hang-up of the launcher is passed on as SIGTERM.
        sent = signal.SIGTERM if signum == signal.SIGHUP else signum
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sent)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    codes = [p.wait() for p in procs]
    return max(codes, default=0)


def cmd_reaper(args: argparse.Namespace) -> int:
    from workers.reaper import reap_once

    settings = get_settings()
    while True:
        reap_once(settings)
        if args.once:
            return 0
        time.sleep(settings.reaper_interval_seconds)


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "api.app:create_app", factory=True, host=args.host or settings.api_host,
        port=args.port or settings.api_port, log_level="warning",
    )  # fmt: skip
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from jobs.broker import resolve_broker_url

    settings = get_settings()
    port = args.port or settings.api_port
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with stop_children_on_signals(procs):
            _, key = start_embedded(settings, port, procs=procs)
            broker = redact_url(resolve_broker_url(settings))
            print(f"facejobs is up: dashboard http://{settings.api_host}:{port}/  (API docs at /docs)")
            print(f"dev API key: {key}   (also in {settings.dev_key_file})")
            print(f"database {redact_url(settings.resolved_database_url)}; broker {broker}; "
                  f"store {settings.store_backend}; logs in {settings.home / 'logs'}", flush=True)  # fmt: skip
            print("Ctrl-C (or SIGTERM, SIGHUP) stops everything.", flush=True)
            while all(p.poll() is None for p in procs):
                time.sleep(1)
    except Stopping as exc:
        print(f"{exc}: the API and the worker are stopped", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the stack commands on the `facejobs` parser's subcommands."""
    sp = sub.add_parser("up", help="run the embedded stack: API + worker + reaper on this machine")
    sp.add_argument("--port", type=int)
    sp.set_defaults(func=cmd_up)
    sp = sub.add_parser("api", help="serve the HTTP API and dashboard")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.set_defaults(func=cmd_api)
    sp = sub.add_parser("worker", help="run workers: --gpus 0,1 starts one pinned process per GPU")
    sp.add_argument("--queues", default="gpu", help="comma-separated queues (gpu, cpu)")
    sp.add_argument("--gpus", help="comma-separated GPU indices, one worker process each (see --gpus-per-job)")
    sp.add_argument(
        "--gpus-per-job", type=int, default=1,
        help="N > 1: group --gpus by N, one worker per group on queue gpu-N (multi-GPU train_embedding); "
        "GPUs left over serve --queues one each",
    )  # fmt: skip
    sp.add_argument("--name", help="Celery node name (unique per worker)")
    sp.add_argument("--concurrency", type=int, default=1)
    sp.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    sp.add_argument("--loglevel", default="INFO")
    sp.set_defaults(func=cmd_worker)
    sp = sub.add_parser("reaper", help="requeue jobs whose lease expired")
    sp.add_argument("--once", action="store_true")
    sp.set_defaults(func=cmd_reaper)
    sp = sub.add_parser("migrate", help="bring the database to the latest revision")
    sp.set_defaults(func=cmd_migrate)
    sp = sub.add_parser("keys", help="create or revoke API keys")
    sp.add_argument("action", choices=["create", "revoke"])
    sp.add_argument("name", help="a name for the new key, or the key id to revoke")
    sp.set_defaults(func=cmd_keys)


# The commands that serve: they log at INFO, the others only warnings (a submit prints its own lines).
SERVING = ("up", "api", "worker", "reaper", "migrate")
