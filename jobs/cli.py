"""`facejobs`: run the stack (up, api, worker, reaper, migrate, keys) and use it (submit, jobs, ...)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jobs.embedded import Stopping, start_embedded, stop_children_on_signals
from jobs.redact import redact_url
from jobs.settings import get_settings

TERMINAL = ("succeeded", "failed", "cancelled")


# ---- running the stack -------------------------------------------------------------------------
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


def _launch_gpu_workers(args: argparse.Namespace) -> int:
    """One pinned worker process per GPU (CUDA_VISIBLE_DEVICES), one reaper among them."""
    host = socket.gethostname()
    procs: list[subprocess.Popen[bytes]] = []
    for i, gpu in enumerate(g.strip() for g in args.gpus.split(",") if g.strip()):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        if i > 0:
            env["FACEJOBS_RUN_REAPER"] = "false"
        cmd = [
            sys.executable, "-m", "jobs.cli", "worker", "--queues", args.queues, "--concurrency", "1",
            "--name", f"gpu{gpu}@{host}", "--pool", args.pool, "--loglevel", args.loglevel,
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env))
        print(f"started worker gpu{gpu}@{host} (pid {procs[-1].pid}, CUDA_VISIBLE_DEVICES={gpu})")

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


# ---- using the stack ---------------------------------------------------------------------------
def client_from_settings(args: argparse.Namespace) -> Any:
    from api.client import Client

    settings = get_settings()
    key = args.api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if not key and settings.dev_key_file.exists():
        key = settings.dev_key_file.read_text().strip()
    if not key:
        raise SystemExit("no API key: pass --api-key, set FACEJOBS_API_KEY, or run `facejobs up` first")
    return Client(args.url or settings.resolved_api_url, key)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`k=v` pairs; each value is read as JSON when it parses (numbers, lists, true), else a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--param wants key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def follow(client: Any, job_id: str, poll: float = 1.0) -> dict[str, Any]:
    """Show a progress bar with the newest metrics until the job ends; the final job."""
    from tqdm import tqdm

    bar = tqdm(total=1, unit="step", dynamic_ncols=True, desc=job_id[:8])
    job: dict[str, Any] = {}
    try:
        while True:
            job = client.get_job(job_id)
            total = max(int(job.get("progress_total") or 0), 1)
            if bar.total != total:
                bar.total = total
            bar.n = min(int(job.get("progress_step") or 0), total)
            metrics = job.get("metrics") or {}
            bar.set_postfix({"status": job["status"], **{k: f"{v:.4g}" for k, v in list(metrics.items())[:4]}})
            bar.refresh()
            if job["status"] in TERMINAL:
                if job["status"] == "succeeded":
                    bar.n = bar.total
                    bar.refresh()
                return job
            time.sleep(poll)
    finally:
        bar.close()


def cmd_submit(args: argparse.Namespace) -> int:
    client = client_from_settings(args)
    job = client.submit(args.kind, parse_params(args.param or []), queue=args.queue)
    print(f"submitted {job['kind']} job {job['id']} ({job['status']})")
    if not args.follow:
        return 0
    job = follow(client, job["id"])
    print(f"{job['id']}: {job['status']}")
    if job["status"] == "succeeded":
        print(json.dumps(job.get("result") or {}, indent=2)[:4000])
        return 0
    if job.get("error"):
        print(job["error"], file=sys.stderr)
    return 1


def cmd_jobs(args: argparse.Namespace) -> int:
    client = client_from_settings(args)
    page = client.list_jobs(status=args.status, kind=args.kind, limit=args.limit)
    print(f"{'id':32}  {'kind':16} {'status':10} {'progress':>8} {'att':>3}  created")
    for j in page["data"]:
        print(f"{j['id']:32}  {j['kind']:16} {j['status']:10} {100 * j['progress']:7.1f}% {j['attempt']:>3}  "
              f"{j['created_at']}")  # fmt: skip
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    client = client_from_settings(args)
    print(json.dumps(client.get_job(args.id), indent=2))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    client = client_from_settings(args)
    job = client.cancel(args.id)
    print(f"{job['id']}: {job['status']}{' (cancel requested)' if job.get('cancel_requested') else ''}")
    return 0


def cmd_artifacts(args: argparse.Namespace) -> int:
    client = client_from_settings(args)
    arts = client.artifacts(args.id)
    for a in arts:
        print(f"{a['name']:40} {a['size']:>12}  {a['content_type']}")
        if args.download:
            dest = Path(args.download) / a["name"]
            client.download_artifact(args.id, a["name"], dest)
    if args.download:
        print(f"downloaded {len(arts)} artifacts to {args.download}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    client = client_from_settings(args)
    if args.action == "upload":
        ds = client.upload_dataset(Path(args.path), name=args.name)
        print(f"dataset {ds['id']}: {ds['num_files']} files, {ds['num_identities']} identities "
              f"(use dataset:{ds['id']})")  # fmt: skip
    else:
        for ds in client.list_datasets()["data"]:
            print(f"{ds['id']}  {ds['name']:30} {ds['num_files']:>7} files {ds['num_identities']:>6} ids")
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    client = client_from_settings(args)
    for w in client.workers():
        stale = " STALE" if w.get("stale") else ""
        job = w.get("current_job_id") or ("busy" if w.get("busy") else "-")  # another key's job has no id here
        print(f"{w['id']:40} {w['queues']:10} {w['device']:30} job={job} "
              f"heartbeat={w['last_heartbeat']}{stale}")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facejobs", description=__doc__)
    p.add_argument("--url", help="API URL (default FACEJOBS_API_URL or the local stack)")
    p.add_argument("--api-key", help="API key (default FACEJOBS_API_KEY or the dev key of `facejobs up`)")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("up", help="run the embedded stack: API + worker + reaper on this machine")
    sp.add_argument("--port", type=int)
    sp.set_defaults(func=cmd_up)
    sp = sub.add_parser("api", help="serve the HTTP API and dashboard")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.set_defaults(func=cmd_api)
    sp = sub.add_parser("worker", help="run workers: --gpus 0,1 starts one pinned process per GPU")
    sp.add_argument("--queues", default="gpu", help="comma-separated queues (gpu, cpu)")
    sp.add_argument("--gpus", help="comma-separated GPU indices, one worker process each")
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

    sp = sub.add_parser("submit", help="submit a job: submit KIND --param k=v ... [--follow]")
    sp.add_argument("kind")
    sp.add_argument("--param", "-p", action="append", metavar="K=V")
    sp.add_argument("--queue", choices=["gpu", "cpu"])
    sp.add_argument("--follow", "-f", action="store_true", help="show progress until the job ends")
    sp.set_defaults(func=cmd_submit)
    sp = sub.add_parser("jobs", help="list your jobs, newest first")
    sp.add_argument("--status")
    sp.add_argument("--kind")
    sp.add_argument("--limit", type=int, default=50)
    sp.set_defaults(func=cmd_jobs)
    sp = sub.add_parser("show", help="one job as JSON")
    sp.add_argument("id")
    sp.set_defaults(func=cmd_show)
    sp = sub.add_parser("cancel", help="cancel a job")
    sp.add_argument("id")
    sp.set_defaults(func=cmd_cancel)
    sp = sub.add_parser("artifacts", help="list (and download) a job's artifacts")
    sp.add_argument("id")
    sp.add_argument("--download", metavar="DIR")
    sp.set_defaults(func=cmd_artifacts)
    sp = sub.add_parser("datasets", help="upload or list datasets")
    sp.add_argument("action", choices=["upload", "list"])
    sp.add_argument("path", nargs="?")
    sp.add_argument("--name")
    sp.set_defaults(func=cmd_datasets)
    sp = sub.add_parser("workers", help="list workers and their heartbeats")
    sp.set_defaults(func=cmd_workers)
    return p


def main(argv: list[str] | None = None) -> int:
    import logging

    args = build_parser().parse_args(argv)
    serving = args.command in ("up", "api", "worker", "reaper", "migrate")
    logging.basicConfig(
        level=logging.INFO if serving else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
