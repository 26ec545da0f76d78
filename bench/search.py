"""Benchmark of face search: exact (flat inner product) against approximate (HNSW), latency and recall@10.

    python bench/search.py [--quick] [--json PATH] [--device cpu|cuda] [--threads N] [--search-threads N] [--queries N]

For N = 100k and 1M random 512-d unit vectors (`ml.index.synthetic`: a random linear map of 32-d
Gaussian codes plus a little noise; uniform vectors on the sphere have no neighbour structure,
see that module), in one process and one run:

- `flat`: `ml.index.build_index` forced exact (faiss IndexFlatIP);
- `hnsw`: the approximate index `build_index` makes above `exact_max` (IndexHNSWFlat, M=32,
  efConstruction=40, efSearch=256: the defaults of `ml.index.IndexSettings`).

Latency is one query at a time (what `POST /search` does) on --search-threads faiss threads (1, as
a worker process runs; on a loaded 2-core machine 2 OpenMP threads made a flat query 4x slower),
p50 and p99 over --queries queries after 10 warm-up queries (flat: a tenth as many, at least 20;
a 1M scan is slow). recall@10 is the share of the exact top 10 that the approximate top 10 holds,
averaged over the queries; the exact top 10 come from the flat index in one batch (--device cuda:
from torch on the GPU). The queries are new draws, not rows of the index. JSON keys:
recall_at_10_1m (target >= 0.95), p50_ms_1m (target <= 5 ms on 2 cores), and the same for 100k
(`_100k`), plus p99, build seconds and the flat figures.

`--quick` measures N = 10k and 30k instead (about a minute on 2 cores) and says so; its JSON has
`_10k`/`_30k` keys and no 1M ones. The full run builds a 1M HNSW graph: ~25-30 min on 2 loaded
cores and ~4.5 GB of memory at its peak (the vectors, then the flat copy or the graph).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from typing import Any  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import add_device_arg, device_from, device_name  # noqa: E402
from ml.index import FaceIndex, IndexSettings, build_index  # noqa: E402
from ml.index.synthetic import draw_like, synthetic_embeddings  # noqa: E402

DIM, K, SEED = 512, 10, 0
SIZES = {"100k": 100_000, "1m": 1_000_000}
QUICK_SIZES = {"10k": 10_000, "30k": 30_000}


EF_SWEEP = (64, 128, 256, 512)  # efSearch values timed on each built graph besides the default


def latencies_ms(index: FaceIndex, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-query milliseconds of n single-query searches after 10 warm-ups, their top-K rows).

    `queries` starts with the 10 warm-up queries; the timed ones are the n after them.
    """
    for q in queries[:10]:
        index.search(q[None], K)
    times, rows = [], []
    for q in queries[10 : 10 + n]:
        t0 = time.perf_counter()
        _, r = index.search(q[None], K)
        times.append((time.perf_counter() - t0) * 1000)
        rows.append(r[0])
    return np.array(times), np.array(rows)


def exact_top(xb: np.ndarray, xq: np.ndarray, flat: FaceIndex, device: torch.device) -> np.ndarray:
    """Exact top-K rows of every query: faiss's flat batch search, or torch on `device` (cuda)."""
    if device.type != "cuda":
        return flat.search(xq, K)[1]
    base = torch.from_numpy(xb).to(device)
    tops = [
        torch.topk(torch.from_numpy(xq[i : i + 256]).to(device) @ base.T, K, dim=1).indices.cpu()
        for i in range(0, xq.shape[0], 256)
    ]
    return torch.cat(tops).numpy()


def measure(label: str, n: int, queries: int, device: torch.device, threads: tuple[int, int]) -> dict[str, Any]:
    """Build both indexes of n rows (threads[0] faiss threads), time single queries (threads[1])."""
    faiss.omp_set_num_threads(threads[0])
    began = time.monotonic()
    xb, rng = synthetic_embeddings(n, DIM, SEED)
    xq = draw_like(rng, queries + 10, DIM, SEED)
    keys, who = [f"r{i}" for i in range(n)], [""] * n
    t0 = time.monotonic()
    flat = build_index(xb, keys, who, IndexSettings(exact_max=n))
    flat_build = time.monotonic() - t0
    truth = exact_top(xb, xq[10:], flat, device)
    faiss.omp_set_num_threads(threads[1])
    flat_ms, flat_rows = latencies_ms(flat, xq, max(20, queries // 10))
    flat_recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(flat_rows, truth, strict=False)]))
    del flat  # its copy of the vectors goes before the graph's
    faiss.omp_set_num_threads(threads[0])
    t0 = time.monotonic()
    hnsw = build_index(xb, keys, who, IndexSettings(exact_max=n - 1))
    hnsw_build = time.monotonic() - t0
    del xb
    faiss.omp_set_num_threads(threads[1])
    hnsw_ms, hnsw_rows = latencies_ms(hnsw, xq, queries)
    recall = np.array([len(set(a) & set(b)) / K for a, b in zip(hnsw_rows, truth, strict=True)])
    # The same graph at other efSearch values (searches only): what the recall knob costs at this N.
    ef_sweep = []
    for ef in EF_SWEEP:
        tuned = replace(hnsw, settings=replace(hnsw.settings, ef_search=ef))
        ms, ef_rows = latencies_ms(tuned, xq, queries)
        hits = [len(set(a) & set(b)) / K for a, b in zip(ef_rows, truth, strict=True)]
        ef_sweep.append({"ef_search": ef, "p50_ms": float(np.percentile(ms, 50)),
                         "p99_ms": float(np.percentile(ms, 99)), "recall_at_10": float(np.mean(hits))})  # fmt: skip
    return {
        "label": label,
        "n": n,
        "kind": hnsw.kind,
        "settings": hnsw.settings.to_json(),
        "queries": queries,
        "flat_queries": len(flat_ms),
        "flat_build_seconds": flat_build,
        "flat_p50_ms": float(np.percentile(flat_ms, 50)),
        "flat_p99_ms": float(np.percentile(flat_ms, 99)),
        "flat_recall_at_10": flat_recall,
        "hnsw_build_seconds": hnsw_build,
        "p50_ms": float(np.percentile(hnsw_ms, 50)),
        "p99_ms": float(np.percentile(hnsw_ms, 99)),
        "recall_at_10": float(recall.mean()),
        "recall_at_10_min": float(recall.min()),
        "recall_at_10_stderr": float(recall.std(ddof=1) / np.sqrt(recall.size)),
        "ef_sweep": ef_sweep,
        "seconds": time.monotonic() - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 10k and 30k instead of 100k and 1M (~1 min)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    add_device_arg(parser)
    parser.add_argument("--threads", type=int, default=2, help="faiss (OpenMP) threads for building the indexes")
    parser.add_argument(
        "--search-threads", type=int, default=1, help="faiss threads while timing single queries (a worker's 1)"
    )
    parser.add_argument("--queries", type=int, default=1000, help="timed single queries (flat: a tenth)")
    args = parser.parse_args()
    device = device_from(args.device)
    sizes = QUICK_SIZES if args.quick else SIZES
    began = time.monotonic()
    rows = []
    for label, n in sizes.items():
        rows.append(measure(label, n, args.queries, device, (args.threads, args.search_threads)))
        # a row as soon as it is measured: a 1M run is long, and the 100k figures should not wait for it
        print(f"  measured N={n}: {json.dumps(rows[-1])}", flush=True)
    figures: dict[str, Any] = {
        "quick": args.quick,
        "dim": DIM,
        "k": K,
        "threads": args.threads,
        "search_threads": args.search_threads,
        "device": args.device,
        "device_name": device_name(device),
        "rows": rows,
        "wall_seconds": time.monotonic() - began,
        "load_average": list(os.getloadavg()),
        "faiss": faiss.__version__,
    }
    for r in rows:
        for key in ("recall_at_10", "p50_ms", "p99_ms", "flat_p50_ms", "flat_p99_ms", "hnsw_build_seconds"):
            figures[f"{key}_{r['label']}"] = r[key]
    note = " (--quick: N = 10k and 30k, not 100k and 1M)" if args.quick else ""
    print(
        f"bench/search.py{note}: d={DIM}, k={K}, {args.threads} faiss thread(s) building, "
        f"{args.search_threads} searching, {args.queries} single queries,"
        f" ground truth on {args.device} ({figures['device_name']})"
    )
    print(f"  {'N':>9} {'index':<6} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>10}")
    for r in rows:
        print(
            f"  {r['n']:>9} {'flat':<6} {r['flat_build_seconds']:8.1f} {r['flat_p50_ms']:8.3f} "
            f"{r['flat_p99_ms']:8.3f} {r['flat_recall_at_10']:10.4f}"
        )
        print(
            f"  {r['n']:>9} {'hnsw':<6} {r['hnsw_build_seconds']:8.1f} {r['p50_ms']:8.3f} "
            f"{r['p99_ms']:8.3f} {r['recall_at_10']:10.4f}  (min {r['recall_at_10_min']:.1f}, "
            f"stderr {r['recall_at_10_stderr']:.4f})"
        )
    print(f"  efSearch on the same graphs: {'N':>9} {'ef':>5} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>10}")
    for r in rows:
        for e in r["ef_sweep"]:
            print(f"  {'':27} {r['n']:>9} {e['ef_search']:>5} {e['p50_ms']:8.3f} {e['p99_ms']:8.3f} "
                  f"{e['recall_at_10']:10.4f}")  # fmt: skip
            for key in ("recall_at_10", "p50_ms", "p99_ms"):
                figures[f"ef{e['ef_search']}_{key}_{r['label']}"] = e[key]
    if not args.quick:
        print(
            f"  1M targets: recall@10 >= 0.95: {figures['recall_at_10_1m']:.4f}; "
            f"p50 <= 5 ms: {figures['p50_ms_1m']:.3f} ms"
        )
    print(f"  wall {figures['wall_seconds']:.0f} s, load average {figures['load_average'][0]:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
