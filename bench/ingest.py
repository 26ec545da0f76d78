"""Images/s validated and stored for one archive of ORL faces: `POST /datasets` (checked in the request)
against a multipart upload (`POST /datasets/uploads`, its parts, `complete`) plus its `ingest` job.

Both run in this process on the embedded default (SQLite, the local folder store) through the real
app (a TestClient) and the real job runner (`workers.runner.execute`, the worker's own call), in one
run, on the same archive: the ratio is multipart/archive. A 20-image ingest runs first, as a
running worker has its imports done. Usage:

    python bench/ingest.py [--quick] [--images N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ORL = REPO.parent / "shared" / "data" / "orl"


def make_archive(n: int, path: Path) -> int:
    """A zip of `n` ORL faces (the 400 repeated), 40 identities; its size in bytes."""
    faces = sorted(ORL.glob("s*/*.pgm"))
    if not faces:
        raise SystemExit(f"no ORL faces under {ORL}")
    data = [(f.parent.name, f.read_bytes()) for f in faces]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for i in range(n):
            ident, raw = data[i % len(data)]
            zf.writestr(f"faces/{ident}/{i}.pgm", raw)
    return path.stat().st_size


def setup(home: Path) -> tuple[Any, Any]:
    os.environ.update({"FACEJOBS_ENV": "test", "FACEJOBS_HOME": str(home), "FACEJOBS_DATABASE_URL": "",
                       "FACEJOBS_BROKER_URL": f"sqla+sqlite:///{home / 'broker.db'}",
                       "FACEJOBS_STORE_BACKEND": "local"})  # fmt: skip
    from fastapi.testclient import TestClient

    from api.app import create_app
    from jobs.db import session_scope
    from jobs.keys import create_key
    from jobs.migrate import upgrade
    from jobs.settings import get_settings

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        _, key = create_key(s, "bench")
    return settings, TestClient(create_app(), headers={"X-API-Key": key})


def archive_path(client: Any, archive: Path) -> float:
    t0 = time.perf_counter()
    with archive.open("rb") as f:
        r = client.post("/datasets", files={"file": ("faces.zip", f, "application/zip")})
    assert r.status_code == 201, r.text
    return time.perf_counter() - t0


def multipart_path(client: Any, settings: Any, archive: Path) -> tuple[float, float, dict[str, Any]]:
    from workers.runner import execute

    size = archive.stat().st_size
    t0 = time.perf_counter()
    r = client.post("/datasets/uploads", json={"name": "faces.zip", "size": size})
    assert r.status_code == 201, r.text
    started = r.json()
    parts = []
    with archive.open("rb") as f:
        for part in started["parts"]:
            chunk = f.read(started["part_size"])
            resp = client.put(part["url"], content=chunk)
            assert resp.status_code == 200, resp.text
            parts.append({"number": part["number"], "etag": resp.json()["etag"]})
    r = client.post(f"/datasets/uploads/{started['upload_id']}/complete", json={"parts": parts})
    assert r.status_code == 202, r.text
    t1 = time.perf_counter()
    execute(r.json()["job_id"], settings=settings)
    t2 = time.perf_counter()
    job = client.get(f"/jobs/{r.json()['job_id']}").json()
    assert job["status"] == "succeeded", job
    return t2 - t0, t2 - t1, job["result"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 images instead of 20,000")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    n = args.images or (2000 if args.quick else 20_000)
    with tempfile.TemporaryDirectory(prefix="fj-ingest-") as tmp:
        home = Path(tmp)
        archive = home / "faces.zip"
        archive_bytes = make_archive(n, archive)
        settings, client = setup(home / "home")
        warm = home / "warm.zip"
        make_archive(20, warm)
        multipart_path(client, settings, warm)  # a worker is a long-lived process: its imports are done
        t_archive = archive_path(client, archive)
        t_multi, t_job, result = multipart_path(client, settings, archive)
    assert result["images"] == n, result
    from bench.common import cpu_name

    out = {
        "images": n, "archive_bytes": archive_bytes, "cpu": cpu_name(), "cores": os.cpu_count(),
        "archive_seconds": round(t_archive, 3), "archive_images_per_s": round(n / t_archive, 1),
        "multipart_seconds": round(t_multi, 3), "ingest_job_seconds": round(t_job, 3),
        "ingest_images_per_s": round(n / t_multi, 1),
        "ratio_to_archive": round(t_archive / t_multi, 3),
    }  # fmt: skip
    print(f"{n} ORL images, {archive_bytes / 1e6:.1f} MB zip, {out['cpu']} ({out['cores']} cores)")
    print(f"{'path':<28}{'seconds':>10}{'images/s':>12}")
    print(f"{'archive (POST /datasets)':<28}{t_archive:>10.2f}{n / t_archive:>12.0f}")
    print(f"{'multipart + ingest job':<28}{t_multi:>10.2f}{n / t_multi:>12.0f}")
    print(f"{'  of which the ingest job':<28}{t_job:>10.2f}")
    print(f"ratio multipart/archive: {out['ratio_to_archive']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
