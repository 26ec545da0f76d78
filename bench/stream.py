"""Streaming: images/s a training loop receives from RecordIO and tar shards in the store (SeaweedFS,
S3) against the same images in a local folder.

    python bench/stream.py [--quick] [--json PATH] [--copies N]

The images are ORL's 300 faces (92x112 PGM, ~10 kB) repeated `--copies` times (quick: 4, 1,200
images; full: 20, 6,000). The "training loop" takes every image decoded to a 112x112 grey float
tensor, as `load_image_folder` decodes files (`ml.data.protocols.load_images`), in batches of 256:

- `local folder`: files read from a local identity folder;
- `recordio (S3)`: train.rec + train.idx in a SeaweedFS bucket, the .idx read once, records read by
  ranged GETs in 4 MB blocks (`RecordIOReader.records`);
- `tar shards (S3)`: 1,000-sample shards (quick: 200) fetched through the bounded `ShardCache` (limit 3 shards)
  with read-ahead of the next shard (`ShardStream`).

Each is timed twice, the best kept; `stream_fraction_of_local` is the slower stream's images/s over the
local folder's. The SeaweedFS server and the temporary files are removed at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402

from bench.common import cpu_name  # noqa: E402

BATCH = 256
SIZE = (112, 112)


def consume(images: Iterable[bytes | Path]) -> int:
    from ml.data.protocols import load_images

    n, batch = 0, []
    for img in images:
        batch.append(img)
        if len(batch) == BATCH:
            n += load_images(batch, SIZE, 1).shape[0]
            batch = []
    if batch:
        n += load_images(batch, SIZE, 1).shape[0]
    return n


def best_of(fn: Callable[[], int], runs: int = 2) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(runs):
        t0 = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - t0)
    return best, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--copies", type=int)
    args = ap.parse_args()
    copies = args.copies or (4 if args.quick else 20)
    per_shard = 200 if args.quick else 1000

    from jobs.settings import Settings
    from jobs.store import S3Store
    from ml.data.cache import ShardCache
    from ml.data.folders import list_identities
    from ml.data.recordio import RecordIOReader, write_insightface
    from ml.data.shards import ShardSampler, ShardStream, write_shards
    from tests.support.s3server import start_s3

    orl = REPO.parent / "shared" / "data" / "orl"
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    server = start_s3(tmp / "weed")
    try:
        people = list_identities(orl)
        samples = [(c * len(people) + label, path.read_bytes()) for c in range(copies)
                   for label, (_, paths) in enumerate(people) for path in paths]  # fmt: skip
        folder = tmp / "folder"
        for label, data in samples:
            d = folder / f"id{label}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{len(list(d.iterdir())) + 1}.pgm").write_bytes(data)
        files = [p for _, paths in list_identities(folder) for p in paths]
        write_insightface(tmp / "train.rec", tmp / "train.idx", samples)
        shards = write_shards(
            ((f"k{i}", "pgm", d, lab) for i, (lab, d) in enumerate(samples)), tmp / "shards", "b", 1000
        )
        os.environ.update({"FACEJOBS_STORE_BACKEND": "s3", "FACEJOBS_S3_ENDPOINT": server.endpoint,
                           "FACEJOBS_S3_ACCESS_KEY": server.access_key, "FACEJOBS_S3_SECRET_KEY": server.secret_key,
                           "FACEJOBS_S3_BUCKET": f"bench-{secrets.token_hex(4)}"})  # fmt: skip
        store = S3Store(Settings())
        store.ensure_bucket()
        for p in (tmp / "train.rec", tmp / "train.idx", *shards):
            store.put_file(f"ds/{p.name}", p)

        def recordio() -> int:
            idx = store.get_bytes("ds/train.idx").decode()
            reader = RecordIOReader(lambda o, n: store.get_range("ds/train.rec", o, n), idx)
            first = int(reader.record(0)[0].label[0])  # type: ignore[index]
            return consume(img for _, _, img in reader.records(list(range(1, first))))

        def tar_shards() -> int:
            root = tmp / f"cache-{secrets.token_hex(3)}"
            limit = 3 * max(p.stat().st_size for p in shards)
            cache = ShardCache(root, limit, lambda name, dest: store.download(f"ds/{name}", dest),
                               lambda name: store.size(f"ds/{name}"))  # fmt: skip
            stream = ShardStream([p.name for p in shards], cache, ShardSampler(len(shards), seed=0))
            n = consume(img for _, img, _ in stream.epoch())
            shutil.rmtree(root)
            return n

        rows = {}
        for name, fn in (("local folder", lambda: consume(files)), ("recordio (S3)", recordio),
                         ("tar shards (S3)", tar_shards)):  # fmt: skip
            seconds, n = best_of(fn)
            assert n == len(samples), (name, n)
            rows[name] = {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1)}
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    local = rows["local folder"]["images_per_s"]
    fractions = {k: round(v["images_per_s"] / local, 3) for k, v in rows.items() if k != "local folder"}
    out = {
        "machine": cpu_name(), "images": len(samples), "samples_per_shard": per_shard, "batch": BATCH,
        "size": list(SIZE), "rows": rows,
        "fraction_of_local": fractions, "stream_fraction_of_local": min(fractions.values()),
    }  # fmt: skip
    print(f"{'source':<18} {'images':>7} {'seconds':>8} {'images/s':>9} {'of local':>9}")
    for k, v in rows.items():
        print(f"{k:<18} {v['images']:>7} {v['seconds']:>8.3f} {v['images_per_s']:>9.1f} {fractions.get(k, 1.0):>9.3f}")
    print(f"stream_fraction_of_local = {out['stream_fraction_of_local']}  ({cpu_name()})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
