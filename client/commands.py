"""The `facejobs` commands that use a running stack, over HTTP only: submit, jobs, show, cancel, ...

Each command is a thin face over `client.sdk.Client` (STYLE habit 12): what the command line can do,
a notebook can do with the same calls, and none of it reaches into the server's packages.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from client.sdk import TERMINAL, Client
from jobs.settings import get_settings


def client_from_settings(args: argparse.Namespace) -> Client:
    """A client for `--url`/`--api-key`, else the settings, else the dev key `facejobs up` wrote."""
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
    job = client.submit(args.kind, parse_params(args.param or []), queue=args.queue, name=args.name,
                        tags=args.tag or None, notes=args.notes)  # fmt: skip
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
    filters = {"tag": args.tag or None, "q": args.q, "name_prefix": args.name}
    page = client.list_jobs(status=args.status, kind=args.kind, limit=args.limit, **filters)
    print(f"{'id':32}  {'kind':16} {'status':10} {'progress':>8} {'att':>3}  {'created':27} name [tags]")
    for j in page["data"]:
        labels = (j.get("name") or "") + (f" [{' '.join(j['tags'])}]" if j.get("tags") else "")
        print(f"{j['id']:32}  {j['kind']:16} {j['status']:10} {100 * j['progress']:7.1f}% {j['attempt']:>3}  "
              f"{j['created_at']:27} {labels}".rstrip())  # fmt: skip
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    """`facejobs tag JOB +a -b c`: add a and c, remove b."""
    add = [t.removeprefix("+") for t in args.changes if not t.startswith("-")]
    remove = [t[1:] for t in args.changes if t.startswith("-")]
    job = client_from_settings(args).tag(args.id, add=add, remove=remove)
    print(f"{job['id']}: {' '.join(job['tags']) or '(no tags)'}")
    return 0


def cmd_note(args: argparse.Namespace) -> int:
    labels: dict[str, Any] = {"notes": args.text or None}
    if args.name is not None:
        labels["name"] = args.name or None
    job = client_from_settings(args).update_job(args.id, **labels)
    print(f"{job['id']}: name {job['name']!r}, notes {len(job['notes'] or '')} characters")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    client = client_from_settings(args)
    if args.format == "json":
        print(json.dumps(client.compare(args.ids), indent=2))
    else:
        print(client.compare_csv(args.ids, table=args.table), end="")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    gone = client_from_settings(args).delete_job(args.id)
    print(f"deleted {len(gone['job_ids'])} job(s), {gone['objects']} stored objects, {gone['bytes']} bytes")
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
        load = w.get("load") or {}
        use = " ".join(f"{k.removeprefix('sys/')}={v:g}" for k, v in load.items())
        print(f"{w['id']:40} {w['queues']:10} {w['device']:30} job={job} "
              f"heartbeat={w['last_heartbeat']}{stale}{'  ' + use if use else ''}")  # fmt: skip
    return 0


# ---- logs (issue 16) ----------------------------------------------------------------------
def cmd_logs(args: argparse.Namespace) -> int:
    """Print a job's log (the latest attempt, or `--attempt N`); `-f` follows it until the job ends."""
    client = client_from_settings(args)
    if args.download:
        dest = client.download_logs(args.id, Path(args.download), attempt=args.attempt)
        print(f"saved the log of job {args.id} to {dest}")
        return 0
    for text in client.iter_logs(args.id, attempt=args.attempt, follow=args.follow):
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0


def add_logs_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser("logs", help="a job's log (stdout, stderr, logging): logs JOB [-f] [--attempt N]")
    sp.add_argument("id")
    sp.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    sp.add_argument("--attempt", type=int, help="one attempt (default: the latest; -f then follows each new one)")
    sp.add_argument("--download", metavar="FILE", help="save the whole log (every attempt, or --attempt) to FILE")
    sp.set_defaults(func=cmd_logs)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the HTTP commands on the `facejobs` parser's subcommands."""
    sp = sub.add_parser("submit", help="submit a job: submit KIND --param k=v ... [--follow]")
    sp.add_argument("kind")
    sp.add_argument("--param", "-p", action="append", metavar="K=V")
    sp.add_argument("--queue", choices=["gpu", "cpu"])
    sp.add_argument("--follow", "-f", action="store_true", help="show progress until the job ends")
    sp.add_argument("--name")
    sp.add_argument("--tag", "-t", action="append", metavar="TAG")
    sp.add_argument("--notes")
    sp.set_defaults(func=cmd_submit)
    sp = sub.add_parser("jobs", help="list your jobs, newest first")
    sp.add_argument("--status")
    sp.add_argument("--kind")
    sp.add_argument("--tag", "-t", action="append", metavar="TAG", help="repeatable: jobs with every tag")
    sp.add_argument("--q", help="text in the name, notes or kind")
    sp.add_argument("--name", help="names starting with this")
    sp.add_argument("--limit", type=int, default=50)
    sp.set_defaults(func=cmd_jobs)
    # No option prefix: "-b" is a tag to remove, not an option (so `tag -h` is a tag too; `facejobs -h` lists it).
    sp = sub.add_parser("tag", help="add and remove tags: tag JOB +a -b c", prefix_chars="\0", add_help=False)
    sp.add_argument("id")
    sp.add_argument("changes", nargs="+", metavar="[+|-]TAG")
    sp.set_defaults(func=cmd_tag)
    sp = sub.add_parser("note", help='set a job\'s notes (and --name): note JOB "text"; "" clears')
    sp.add_argument("id")
    sp.add_argument("text")
    sp.add_argument("--name")
    sp.set_defaults(func=cmd_note)
    sp = sub.add_parser("compare", help="compare jobs: CSV (jobs or --table groups) or --format json")
    sp.add_argument("ids", nargs="+")
    sp.add_argument("--format", choices=["csv", "json"], default="csv")
    sp.add_argument("--table", choices=["jobs", "groups"], default="jobs")
    sp.set_defaults(func=cmd_compare)
    sp = sub.add_parser("delete", help="delete an ended job, its files and its children")
    sp.add_argument("id")
    sp.set_defaults(func=cmd_delete)
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
    add_logs_command(sub)
