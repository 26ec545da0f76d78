"""Poll benchmark: `GET /jobs` with every filter, text search and tags, and `GET /compare`, at 10k..1M jobs.

    python bench/poll.py [--quick] [--json PATH] [--requests R] [--sizes 10000,100000,1000000]

A PostgreSQL database of its own (dropped at the end) is migrated and filled by COPY with jobs that
carry names, tags, notes, metrics and results (90% of them the measured key's, 10% another key's),
a few progress events per twentieth job, and one 20-job sweep with 100 progress events per child
(what `GET /compare` reads). The label GIN indexes are dropped during each COPY and rebuilt after
it (as a bulk load does), then the table is analysed. Each scenario is `R` requests through the
real app in this process (httpx via Starlette's TestClient: key check, query, serialisation); p50
and p99 in ms, and the ratio of each p50 to plain `GET /jobs?limit=50` (the baseline, same run).

Every statement a scenario's request runs is captured (SQLAlchemy `before_cursor_execute`) and
EXPLAINed with its own parameters; the plan's node types are printed, and a sequential scan of
jobs, job_events or artifacts at 100,000 jobs or more fails the bench (exit 1): the filters must
stay index scans. `--quick`: 10,000 and 100,000 jobs, 60 requests a scenario (about a minute on 2
cores); the full run adds 1,000,000 jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, event, text  # noqa: E402

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LABEL_INDEXES = ("ix_jobs_tags", "ix_jobs_name_trgm", "ix_jobs_notes_trgm", "ix_jobs_kind_trgm", "ix_jobs_owner_name")
KINDS = ("train_embedding", "invert", "embed", "train_gan", "evaluate", "probe")
STATUSES = ("succeeded",) * 6 + ("failed", "cancelled", "queued", "running")
WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "po", "ri", "su", "te", "vo", "ze") for b in
         ("ba", "de", "fi", "go", "hu", "ja", "ke", "li", "mo", "ny")]  # fmt: skip
RARE = "quokka"  # in one job of 20,000's notes
COMMON_TAG, MEDIUM_TAG = "v2", "arch:resnet"  # on ~1/3 and ~1/8 of the jobs
SCAN_TABLES = {"jobs", "job_events", "artifacts"}
T0 = datetime(2026, 1, 1)


def job_rows(start: int, n: int, owner: str, other: str, rng: random.Random) -> Any:
    """COPY rows (text format) of jobs start..start+n; created one second apart, oldest first."""
    for i in range(start, start + n):
        kind = KINDS[i % len(KINDS)]
        lr, seed = (0.1, 0.3, 1.0)[i % 3], i % 5
        tags = [f"sweep:{i // 6}"]  # six jobs share each sweep tag: the rare tag
        if i % 3 == 0:
            tags.append(COMMON_TAG)
        if i % 8 == 0:
            tags.append(MEDIUM_TAG)
        notes = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 40)))
        if i % 20_000 == 7:
            notes += " " + RARE
        created = T0 + timedelta(seconds=i)
        metrics = json.dumps({"loss": round(rng.random(), 4), "accuracy": round(rng.random(), 4)})
        status = STATUSES[i % len(STATUSES)]
        result = metrics if status == "succeeded" else None
        yield (secrets.token_hex(16), kind, json.dumps({"lr": lr, "seed": seed, "epochs": 3}), status, 0, "gpu",
               other if i % 10 == 9 else owner, f"{kind} lr={lr} seed={seed} #{i}", tags, notes or None,
               1, 0, 0, 0, 3, False, 3, 3, metrics, result, created, created)  # fmt: skip


JOB_COLUMNS = ("id, kind, params, status, priority, queue, owner_id, name, tags, notes, attempt, preemptions, "
               "attempt_base, reaped, max_attempts, cancel_requested, progress_step, progress_total, metrics, "
               "result, created_at, updated_at")  # fmt: skip


def copy_rows(engine: Any, table: str, columns: str, rows: Any) -> None:
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def grow(engine: Any, have: int, want: int, owner: str, other: str) -> None:
    """Add jobs have..want (and their events) with the label GIN indexes dropped, then rebuild and analyse."""
    rng = random.Random(have)
    with engine.begin() as conn:
        defs = dict(conn.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs' "
                                      "AND indexname = ANY(:n)"), {"n": list(LABEL_INDEXES)}).all())  # fmt: skip
        for name in defs:
            conn.execute(text(f"DROP INDEX {name}"))
    copy_rows(engine, "jobs", JOB_COLUMNS, job_rows(have, want - have, owner, other, rng))
    with engine.begin() as conn:
        conn.execute(text("SET maintenance_work_mem = '256MB'"))
        for ddl in defs.values():
            conn.execute(text(ddl))
        # A few progress points for every twentieth new job, so job_events is not empty around the sweep's.
        conn.execute(text(
            "INSERT INTO job_events (job_id, attempt, type, message, data, created_at) "
            "SELECT j.id, 1, 'progress', '', jsonb_build_object('step', s, 'total', 3, 'loss', 1.0 / s), j.created_at "
            "FROM (SELECT id, created_at FROM jobs ORDER BY created_at DESC LIMIT :n) j, generate_series(1, 3) s "
            "WHERE abs(hashtext(j.id)) % 20 = 0"
        ), {"n": want - have})  # fmt: skip
        # And a JSON artifact for every tenth new job (a plot for every fortieth), as workers store them.
        conn.execute(text(
            "INSERT INTO artifacts (id, job_id, name, key, size, sha256, content_type, created_at) "
            "SELECT md5(j.id || a.name), j.id, a.name, 'jobs/' || j.id || '/' || a.name, 1000, md5(j.id), a.ctype, "
            "j.created_at FROM (SELECT id, created_at FROM jobs ORDER BY created_at DESC LIMIT :n) j, "
            "(VALUES ('result.json', 'application/json', 10), ('plots/roc.png', 'image/png', 40)) "
            "a(name, ctype, every) "
            "WHERE abs(hashtext(j.id)) % a.every = 0"
        ), {"n": want - have})  # fmt: skip
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE jobs, job_events"))


def add_sweep(engine: Any, owner: str, when: datetime) -> list[str]:
    """20 succeeded jobs (2 settings x 10 seeds) with 100 progress events each: what compare reads."""
    ids = [secrets.token_hex(16) for _ in range(20)]
    with engine.begin() as conn:
        for n, jid in enumerate(ids):
            params = json.dumps({"lr": (0.1, 0.3)[n % 2], "seed": n // 2, "epochs": 3})
            conn.execute(text(
                "INSERT INTO jobs (id, kind, params, status, priority, queue, owner_id, name, tags, attempt, "
                "preemptions, attempt_base, reaped, max_attempts, cancel_requested, progress_step, progress_total, "
                "metrics, result, created_at, updated_at) VALUES (:id, 'train_embedding', CAST(:p AS json), "
                "'succeeded', 0, 'gpu', :o, :name, ARRAY['bench-sweep'], 1, 0, 0, 0, 3, false, 100, "
                "100, CAST(:m AS json), CAST(:m AS json), :t, :t)"
            ), {"id": jid, "p": params, "o": owner, "name": f"sweep child {n}", "t": when,
                "m": json.dumps({"loss": 1.0 / (n + 1), "accuracy": n / 20})})  # fmt: skip
            conn.execute(text(
                "INSERT INTO job_events (job_id, attempt, type, message, data, created_at) "
                "SELECT :id, 1, 'progress', '', jsonb_build_object('step', s, 'total', 100, 'loss', 1.0 / s, "
                "'lr', 0.1), :t FROM generate_series(1, 100) s"
            ), {"id": jid, "t": when})  # fmt: skip
            conn.execute(text(
                "INSERT INTO artifacts (id, job_id, name, key, size, sha256, content_type, created_at) VALUES "
                "(md5(:id), :id, 'plots/roc.png', 'jobs/' || :id || '/plots/roc.png', 1000, md5(:id), 'image/png', :t)"
            ), {"id": jid, "t": when})  # fmt: skip
    return ids


def plan_nodes(plan: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    out = [(plan["Node Type"], plan.get("Relation Name"), plan.get("Index Name"))]
    for child in plan.get("Plans", []):
        out += plan_nodes(child)
    return out


def explain(engine: Any, statements: list[tuple[str, Any]]) -> tuple[list[str], bool]:
    """Node types of each captured statement's plan (the key lookup left out); whether none seq-scans a big table."""
    shown, ok = [], True
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            for sql, params in statements:
                if "FROM api_keys" in sql:
                    continue
                cur.execute("EXPLAIN (FORMAT JSON) " + sql, params)
                nodes = plan_nodes(cur.fetchone()[0][0]["Plan"])
                ok &= not any(t == "Seq Scan" and r in SCAN_TABLES for t, r, _ in nodes)
                shown.append(" > ".join(t + (f"({i})" if i else f"[{r}]" if r else "") for t, r, i in nodes))
        raw.rollback()
    finally:
        raw.close()
    return shown, ok


def measure(client: Any, engine: Any, path: str, n: int) -> dict[str, Any]:
    captured: list[tuple[str, Any]] = []

    def grab(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    first = client.get(path)
    event.remove(engine, "before_cursor_execute", grab)
    assert first.status_code == 200, (path, first.text[:300])
    body = first.json()
    rows = len(body["data"]) if "data" in body else len(body["jobs"])
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200
    times.sort()
    plans, uses_index = explain(engine, captured)
    return {"p50_ms": statistics.median(times), "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
            "rows": rows, "statements": len(captured), "plans": plans, "uses_index": uses_index}  # fmt: skip


def scenarios(size: int, sweep: list[str], cursor: str) -> dict[str, str]:
    mid = (T0 + timedelta(seconds=size // 2)).isoformat()
    end = (T0 + timedelta(seconds=size // 2 + 3600)).isoformat()
    return {
        "plain": "/jobs?limit=50",
        "page 2 (cursor)": f"/jobs?limit=50&cursor={cursor}",
        "status=failed": "/jobs?limit=50&status=failed",
        "kind=invert": "/jobs?limit=50&kind=invert",
        f"tag={COMMON_TAG} (1/3)": f"/jobs?limit=50&tag={COMMON_TAG}",
        "tag=sweep:N (6 jobs)": f"/jobs?limit=50&tag=sweep:{size // 12}",
        "two tags (1/24)": f"/jobs?limit=50&tag={COMMON_TAG}&tag={MEDIUM_TAG}",
        "name_prefix": "/jobs?limit=50&name_prefix=invert%20lr%3D0.3%20seed%3D1%20%231",  # i = 1 mod 30, "#1..."
        "name_prefix broad (1/6)": "/jobs?limit=50&name_prefix=invert",
        "q common word": "/jobs?limit=50&q=kaba",
        f"q rare word ({RARE})": f"/jobs?limit=50&q={RARE}",
        "created 1 h window": f"/jobs?limit=50&created_after={mid}&created_before={end}",
        "tag + q + status": f"/jobs?limit=50&tag={MEDIUM_TAG}&q=lo&status=succeeded",
        "compare 20 jobs": "/compare?ids=" + ",".join(sweep),
    }


def report(results: dict[str, Any]) -> None:
    for size, rows in results["sizes"].items():
        print(f"\n{int(size):,} jobs")
        print("| scenario | p50 ms | p99 ms | x plain | rows | index only | plan |\n|---|---:|---:|---:|---:|---|---|")
        base = rows["plain"]["p50_ms"]
        for name, r in rows.items():
            print(f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p50_ms'] / base:.2f} | {r['rows']} | "
                  f"{'yes' if r['uses_index'] else 'NO'} | {' ; '.join(r['plans'])} |")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10k and 100k jobs, 60 requests a scenario")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--requests", type=int, help="requests per scenario (default 60 quick, 200 full)")
    ap.add_argument("--sizes", help="comma-separated job counts (default 10000,100000[,1000000])")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [10_000, 100_000] + ([] if args.quick else
                                                                                               [1_000_000])  # fmt: skip
    n_req = args.requests or (60 if args.quick else 200)

    from fastapi.testclient import TestClient

    from api.app import create_app
    from jobs.db import dispose_engines, get_engine, session_scope
    from jobs.keys import create_key
    from jobs.migrate import upgrade
    from jobs.settings import Settings

    name = f"facejobs_bench_poll_{secrets.token_hex(3)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    results: dict[str, Any] = {"config": {"sizes": sizes, "requests": n_req, "quick": args.quick,
                                          "cpus": os.cpu_count(), "load_avg_1m_start": os.getloadavg()[0]},
                               "sizes": {}}  # fmt: skip
    try:
        upgrade(url)
        tmp = Path(tempfile.mkdtemp(prefix="fj-poll-"))
        settings = Settings(env="test", home=tmp, database_url=url, broker_url=f"sqla+sqlite:///{tmp / 'b.db'}",
                            store_backend="local", store_dir=tmp / "store")  # fmt: skip
        with session_scope(url) as s:
            owner_row, key = create_key(s, "bench")
            other_row, _ = create_key(s, "other")
            owner, other = owner_row.id, other_row.id
        engine = get_engine(url)
        client = TestClient(create_app(settings), headers={"X-API-Key": key})
        have, sweep_at = 0, T0 - timedelta(days=1)
        sweep = add_sweep(engine, owner, sweep_at)  # older than every job: compare is by id, not by recency
        for size in sizes:
            t = time.perf_counter()
            grow(engine, have, size, owner, other)
            have = size
            fill_s = time.perf_counter() - t
            cursor = client.get("/jobs?limit=50").json()["next_cursor"]
            rows = {name: measure(client, engine, path, n_req) for name, path in scenarios(size, sweep, cursor).items()}
            results["sizes"][str(size)] = rows
            results[f"fill_seconds_{size}"] = round(fill_s, 1)
            print(f"filled {size:,} jobs in {fill_s:.1f} s", flush=True)
        client.close()
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    results["config"]["load_avg_1m_end"] = os.getloadavg()[0]
    report(results)
    print(f"\nload average (1 min) {results['config']['load_avg_1m_start']:.1f} at the start, "
          f"{results['config']['load_avg_1m_end']:.1f} at the end, on {os.cpu_count()} CPUs")  # fmt: skip
    label = {10_000: "10k", 100_000: "100k", 1_000_000: "1m"}
    ok = True
    for size, rows in results["sizes"].items():
        tag = label.get(int(size), size)
        results[f"list_p50_ms_{tag}"] = round(rows["plain"]["p50_ms"], 3)
        results[f"list_p99_ms_{tag}"] = round(rows["plain"]["p99_ms"], 3)
        results[f"worst_filter_p99_ms_{tag}"] = round(max(r["p99_ms"] for r in rows.values()), 3)
        results[f"compare_p99_ms_{tag}"] = round(rows["compare 20 jobs"]["p99_ms"], 3)
        results[f"plans_use_indexes_{tag}"] = all(r["uses_index"] for r in rows.values())
        if int(size) >= 100_000 and not results[f"plans_use_indexes_{tag}"]:
            ok = False
            bad = [n for n, r in rows.items() if not r["uses_index"]]
            print(f"FAIL: sequential scans at {int(size):,} jobs: {', '.join(bad)}")
    summary = {k: v for k, v in results.items() if k.startswith(("list_", "worst_", "compare_", "plans_", "fill_"))}
    print("\n" + json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
