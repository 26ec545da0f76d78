"""Queue overhead: the cheapest job's round trip through facejobs next to raw Celery, and claims at scale.

    python bench/queue_overhead.py [--quick] [--json PATH] [--device D] [--processes 1,4,16] [--poll-ms MS]

Measured, in one run, on a PostgreSQL database created for the run and the machine's Redis (a key
prefix of its own), with the workers' Celery settings (late acks, prefetch 1) on both sides:

- `raw Celery`: `apply_async().get()` of a task that returns its argument, one at a time (each one
  followed by one facejobs round trip, so the other load on the machine hits both alike), through
  one prefork worker process, with a Redis result backend (what `.get()` waits on);
- `facejobs`: a `probe` job with `matmul_size=16, matmul_repeats=1` (the cheapest kind), one at a
  time: `POST /jobs` to `facejobs api`, then one `GET /jobs/{id}?wait_seconds=60`, which answers
  when the job has ended (woken by PostgreSQL's NOTIFY from the worker's commit, as `.get()` is
  woken by the result backend), or with `--poll-ms MS` a plain `GET /jobs/{id}` every MS until it
  reads `succeeded`; through one worker process (`python -m stack.cli worker`). Where the time goes is
  read from the timestamps the platform stores (row created, claimed, each event, finished);
- scaling: the same job from 4 client threads through 1, 4 and 16 worker processes (`--quick`: 1
  and 4), every message sent twice (as a broker redelivery would): the claim is a compare-and-swap,
  so each job must show attempt 1, one claim event, one artifact, and every second message dropped.

Latency is p50/p90 of the round trip (nearest rank); jobs/s is jobs over the wall time from the
first submit to the last job stored as succeeded, and per worker process that divided by the
processes. The JSON (`--json`) has every printed figure and `overhead_ratio_p50` (facejobs p50 /
raw Celery p50). `--device cpu` hides the GPUs from the workers (CUDA_VISIBLE_DEVICES=""), the
default leaves them as they are. Servers, workers, the database and Redis keys are removed at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Named queue_overhead, not queue: `python bench/X.py` puts bench/ first on sys.path, where a
# bench/queue.py shadowed the standard library's `queue` for every bench (torch, kombu, httpx import it).
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from bench.load import REDIS_URL, create_database, delete_redis_keys, drop_database, free_port, stack_env, start_server  # noqa: E402

PARAMS = {"matmul_size": 16, "matmul_repeats": 1}
RAW_TASK = "bench.echo"
# (label, from stamp, to stamp): the client's clock, then the stamps stored in the job's rows. Each is
# taken in Python when its row is built: the sent stamp before the row's commit and the send; the
# probe's progress, log and artifact stamps when it calls them (their rows are written with the result).
STAGES = (
    ("client: POST sent -> row created", "post", "created"),
    ("API: row created -> sent stamp (in its commit)", "created", "enqueued"),
    ("commit, send, broker + Celery -> claimed", "enqueued", "started"),
    ("claimed -> 'running' event", "started", "running_event"),
    ("set-up, torch, matmul -> progress", "running_event", "progress_event"),
    ("progress -> log event", "progress_event", "log_event"),
    ("log -> artifact stored (file, fsync)", "log_event", "artifact"),
    ("artifact -> finished", "artifact", "finished"),
    ("finished -> 'succeeded' event", "finished", "succeeded_event"),
    ("finished -> client reads succeeded", "finished", "seen"),
)


# ---- raw Celery ---------------------------------------------------------------------------------
def raw_app(prefix: str) -> Any:
    """A Celery app with the workers' settings plus a Redis result backend, and one echo task."""
    from jobs.broker import make_celery
    from jobs.settings import get_settings

    app = make_celery(get_settings().model_copy(update={"broker_url": REDIS_URL, "broker_key_prefix": prefix}))
    app.conf.update(result_backend=REDIS_URL, task_ignore_result=False,
                    result_backend_transport_options={"global_keyprefix": prefix})  # fmt: skip

    @app.task(name=RAW_TASK)
    def echo(x: int) -> int:
        return x

    return app


def serve_raw_worker(prefix: str) -> None:
    argv = ["worker", "-Q", "raw", "-c", "1", "--pool", "prefork", "-n", f"raw-{os.getpid()}@bench",
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
    raw_app(prefix).worker_main(argv)


def raw_round_trip(app: Any, i: int) -> float:
    t0 = time.perf_counter()
    if app.send_task(RAW_TASK, args=[i], queue="raw").get(timeout=120) != i:
        raise SystemExit(f"the raw worker answered something other than {i}")
    return time.perf_counter() - t0


# ---- facejobs -----------------------------------------------------------------------------------
def start_workers(env: dict[str, str], processes: int, log: Path) -> subprocess.Popen[bytes]:
    name = f"bench{processes}-{os.getpid()}@{socket.gethostname()}"
    cmd = [sys.executable, "-m", "stack.cli", "worker", "--queues", "gpu", "--concurrency", str(processes),
           "--name", name, "--loglevel", "WARNING"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def submit(http: httpx.Client) -> str:
    resp = http.post("/jobs", json={"kind": "probe", "params": PARAMS})
    if resp.status_code != 201:
        raise SystemExit(f"submit answered {resp.status_code}: {resp.text[:300]}")
    return str(resp.json()["id"])


def round_trip(http: httpx.Client, poll: float, timeout: float = 120) -> tuple[str, float, dict[str, float]]:
    """Submit one job and wait for `succeeded` (poll 0: the long-poll): (job id, seconds, the client's stamps)."""
    post, t0 = time.time(), time.perf_counter()
    job_id = submit(http)
    deadline = time.monotonic() + timeout
    path = f"/jobs/{job_id}" if poll > 0 else f"/jobs/{job_id}?wait_seconds=60"
    while True:
        status = http.get(path).json()["status"]
        if status == "succeeded":
            return job_id, time.perf_counter() - t0, {"post": post, "seen": time.time()}
        if status in ("failed", "cancelled") or time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} ended {status} (see the worker log)")
        time.sleep(poll)


def stamps(db_url: str, client: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each job's stamps (seconds since the epoch): the client's, and those stored (naive UTC) in its rows."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from jobs.db import session_scope
    from jobs.models import Artifact, Job, JobEvent

    def ts(d: datetime | None) -> float:  # None (a stamp a job lacks) reads as NaN, not a crash
        return d.replace(tzinfo=UTC).timestamp() if d is not None else float("nan")

    ids = list(client)
    out: dict[str, dict[str, float]] = {}
    with session_scope(db_url) as s:
        for job in s.scalars(select(Job).where(Job.id.in_(ids))):
            out[job.id] = {**client[job.id], "created": ts(job.created_at), "enqueued": ts(job.enqueued_at),
                           "started": ts(job.started_at), "finished": ts(job.finished_at)}  # fmt: skip
        for ev in s.scalars(select(JobEvent).where(JobEvent.job_id.in_(ids), JobEvent.attempt > 0)):
            name = {"progress": "progress_event", "log": "log_event"}.get(ev.type)
            if ev.type == "status":
                name = "running_event" if ev.message.startswith("running") else "succeeded_event"
            if name:
                out[ev.job_id][name] = ts(ev.created_at)
        for art in s.scalars(select(Artifact).where(Artifact.job_id.in_(ids))):
            out[art.job_id]["artifact"] = ts(art.created_at)
    return out


def breakdown(db_url: str, client: dict[str, dict[str, float]]) -> dict[str, float]:
    """Median milliseconds of each stage over the jobs in `client` (job id -> the client's stamps)."""
    rows = stamps(db_url, client)
    return {label: pct([r[b] - r[a] for r in rows.values()], 50) for label, a, b in STAGES}


def scaling(http_url: str, key: str, db_url: str, n: int, clients: int) -> dict[str, Any]:
    """Submit `n` jobs from `clients` threads, each message sent twice; wait for all; check the claims."""
    from sqlalchemy import func, select

    from jobs.broker import enqueue, make_celery
    from jobs.db import session_scope
    from jobs.models import Artifact, Job, JobEvent
    from jobs.settings import get_settings

    celery = make_celery(get_settings())
    ids: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(base_url=http_url, headers={"X-API-Key": key}, timeout=120) as http:
            for _ in range(c, n, clients):
                job_id = submit(http)
                enqueue(job_id, "probe", "gpu", app=celery)  # the second message: the claim must drop it
                with lock:
                    ids.append(job_id)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 600
    while True:
        with session_scope(db_url) as s:
            done = s.scalar(select(func.count()).where(Job.id.in_(ids), Job.status == "succeeded")) or 0
        if done == n:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {done} of {n} jobs succeeded in 600 s")
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    with session_scope(db_url) as s:
        attempts = dict(s.execute(select(Job.id, Job.attempt).where(Job.id.in_(ids))).all())
        claims = dict(s.execute(select(JobEvent.job_id, func.count()).where(
            JobEvent.job_id.in_(ids), JobEvent.type == "status", JobEvent.message.startswith("running on")
        ).group_by(JobEvent.job_id)).all())  # fmt: skip
        arts = dict(s.execute(select(Artifact.job_id, func.count()).where(Artifact.job_id.in_(ids))
                              .group_by(Artifact.job_id)).all())  # fmt: skip
    return {
        "jobs": n, "messages": 2 * n, "clients": clients, "wall_s": wall, "jobs_per_s": n / wall,
        "succeeded": done, "attempt_1": sum(a == 1 for a in attempts.values()),
        "one_claim": sum(claims.get(i) == 1 for i in ids), "one_artifact": sum(arts.get(i) == 1 for i in ids),
        "ran_twice": sum(attempts[i] != 1 or claims.get(i) != 1 for i in ids),
    }  # fmt: skip


# ---- measuring and report -----------------------------------------------------------------------
def pct(xs: list[float], p: float) -> float:
    """The p-th percentile in milliseconds, nearest rank."""
    ys = sorted(xs)
    return 1000 * ys[min(len(ys) - 1, max(0, round(p / 100 * len(ys)) - 1))]


def latency(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50_ms": pct(xs, 50), "p90_ms": pct(xs, 90), "max_ms": 1000 * max(xs),
            "jobs_per_s_per_process": len(xs) / sum(xs)}  # fmt: skip


def report(r: dict[str, Any]) -> None:
    cfg = r["config"]
    if "facejobs" not in r:  # only counts without 1 were asked for: no round trips were timed
        return report_scaling(r)
    wait = f"poll every {cfg['poll_ms']} ms" if cfg["poll_ms"] > 0 else "one GET ?wait_seconds=60 (long-poll)"
    print(f"\nqueue overhead: {cfg['round_trips']} round trips, one at a time, 1 worker process; PostgreSQL + Redis; "
          f"probe {cfg['params']}, {wait}")  # fmt: skip
    print(f"{'path':42} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8} {'jobs/s':>8}")
    for name, label in (("raw_celery", "raw Celery apply_async().get()"),
                        ("facejobs", "facejobs POST /jobs -> GET succeeded")):  # fmt: skip
        x = r[name]
        print(f"{label:42} {x['n']:>5} {x['p50_ms']:>8.2f} {x['p90_ms']:>8.2f} {x['max_ms']:>8.2f} "
              f"{x['jobs_per_s_per_process']:>8.1f}")  # fmt: skip
    print(f"overhead_ratio_p50: {r['overhead_ratio_p50']:.2f}x (facejobs p50 / raw Celery p50)")
    print("\nwhere a facejobs round trip goes (median of stored stamps, ms):")
    for label, ms in r["stages_ms"].items():
        print(f"  {label:44} {ms:>8.2f}")
    report_scaling(r)


def report_scaling(r: dict[str, Any]) -> None:
    cfg = r["config"]
    print(f"\nscaling: {cfg['scale_jobs']} jobs per run from {cfg['clients']} clients, every message sent twice")
    print(f"{'processes':>9} {'jobs':>6} {'wall s':>8} {'jobs/s':>8} {'/process':>9} {'attempt 1':>10} "
          f"{'one claim':>10} {'one artifact':>12} {'ran twice':>10}")  # fmt: skip
    for procs, x in r["scaling"].items():
        print(f"{procs:>9} {x['jobs']:>6} {x['wall_s']:>8.2f} {x['jobs_per_s']:>8.1f} "
              f"{x['jobs_per_s_per_process']:>9.1f} {x['attempt_1']:>10} {x['one_claim']:>10} "
              f"{x['one_artifact']:>12} {x['ran_twice']:>10}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer round trips, and 1 and 4 processes only")
    parser.add_argument("--json", type=Path, help="write every printed figure here")
    parser.add_argument("--device", help="cpu hides the GPUs from the workers; default: as the environment has it")
    parser.add_argument("--poll-ms", type=float, default=0.0,
                        help="poll GET /jobs/{id} this often (default 0: one GET ?wait_seconds=60)")  # fmt: skip
    parser.add_argument("--processes", help="worker process counts to scale over, e.g. 16 (default 1,4,16; quick 1,4)")
    parser.add_argument("--raw-worker", metavar="PREFIX", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_worker:
        serve_raw_worker(args.raw_worker)
        return 0
    n_rt, n_scale = (40, 40) if args.quick else (200, 200)
    process_counts: tuple[int, ...] = (1, 4) if args.quick else (1, 4, 16)
    if args.processes:
        process_counts = tuple(int(p) for p in args.processes.split(","))

    home = Path(tempfile.mkdtemp(prefix="facejobs-queue-bench-"))
    prefix = f"facejobs-qbench-{os.getpid()}-{secrets.token_hex(3)}:"
    db_name, db_url = create_database()
    env = stack_env(home, db_url, prefix)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.update(env)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        from jobs.db import session_scope
        from jobs.keys import create_key

        with session_scope(db_url) as s:
            _, key = create_key(s, "bench")
        port = free_port()
        procs.append(start_server([sys.executable, "-m", "stack.cli", "api", "--port", str(port)], env, port,
                                  home / "api.log"))  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        results: dict[str, Any] = {"config": {
            "quick": args.quick, "params": PARAMS, "poll_ms": args.poll_ms, "round_trips": n_rt,
            "scale_jobs": n_scale, "clients": 4, "processes": list(process_counts), "device": args.device or "default",
        }}  # fmt: skip

        raw_cmd = [sys.executable, str(Path(__file__).resolve()), "--raw-worker", prefix + "raw:"]
        raw_log = (home / "raw.log").open("wb")
        raw = subprocess.Popen(raw_cmd, cwd=REPO, env=env, stdout=raw_log, stderr=subprocess.STDOUT)
        procs.append(raw)
        app = raw_app(prefix + "raw:")
        results["scaling"] = {}
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as http:
            for count in process_counts:
                worker = start_workers(env, count, home / f"worker{count}.log")
                procs.append(worker)
                # Warm: jobs from 4 clients at once reach every process, which imports torch and opens its pools.
                scaling(url, key, db_url, 2 * count, 4)
                if count == 1:
                    for i in range(5):  # warm the raw side: worker up, connections and result subscription open
                        raw_round_trip(app, i)
                    # Interleaved, one raw then one facejobs: the other load on the machine hits both alike.
                    raws, rts = [], []
                    for i in range(n_rt):
                        raws.append(raw_round_trip(app, i))
                        rts.append(round_trip(http, args.poll_ms / 1000))
                    stop(raw)  # not needed any more
                    results["raw_celery"] = latency(raws)
                    results["facejobs"] = latency([t for _, t, _ in rts])
                    results["stages_ms"] = breakdown(db_url, {i: c for i, _, c in rts})
                    results["overhead_ratio_p50"] = results["facejobs"]["p50_ms"] / results["raw_celery"]["p50_ms"]
                x = scaling(url, key, db_url, n_scale, 4)
                x["jobs_per_s_per_process"] = x["jobs_per_s"] / count
                results["scaling"][str(count)] = x
                stop(worker)
        report(results)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.json}")
        return 0 if all(x["ran_twice"] == 0 and x["succeeded"] == x["jobs"] for x in results["scaling"].values()) else 1
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p)
        drop_database(db_name)
        delete_redis_keys(prefix)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
