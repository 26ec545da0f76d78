"""`make demo`: start the embedded stack and run a real pipeline on `builtin:digits`.

probe -> train_embedding (ArcFace on sklearn's digits) -> evaluate -> invert (a short run) ->
embed (the digits, through the trained model). Every job shows on the dashboard while it runs; the
stack keeps serving afterwards until Ctrl-C (or exits at once with --exit-when-done).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from jobs.cli import _stop, follow, start_embedded
from jobs.kinds import registry
from jobs.settings import get_settings


def pipeline(train_job: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The demo's jobs in order; `{train}` in a param is replaced by the training job's id."""
    return [
        ("probe", {"matmul_size": 512}),
        (
            "train_embedding",
            {
                "dataset": "builtin:digits",
                "backbone": "se_resnet18",
                "base_width": 32,  # half the published width: a CPU trains it in a minute or two
                "image_size": 32,
                "epochs": 8,
                # Ten digits are too few identities to hold some out: hold out a quarter of each digit.
                "split_by": "sample",
                "seed": 0,
            },
        ),
        ("evaluate", {"model": "job:{train}", "dataset": "builtin:digits"}),
        (
            "invert",
            {
                "model": "job:{train}",
                "images_per_class": 2,
                "iterations": 300,
                "flip": False,  # digits are not mirror-symmetric
                "checkpoint_every": 100,
                "preview_every": 25,
            },
        ),
        # Digits are whole images already: no face detection; a mirrored digit is another glyph, so no flip TTA.
        ("embed", {"dataset": "builtin:digits", "model": "job:{train}", "detector": "none", "flip_tta": False}),
    ]


def _fill(params: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    return {k: v.format(**ids) if isinstance(v, str) and "{" in v else v for k, v in params.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--exit-when-done", action="store_true")
    args = ap.parse_args(argv)
    from api.client import Client

    settings = get_settings()
    port = args.port or settings.api_port
    procs, key = start_embedded(settings, port)
    url = f"http://{settings.api_host}:{port}"
    print(f"dashboard: {url}/   API key: {key}")
    client = Client(url, key)
    ids: dict[str, str] = {}
    failed = False
    try:
        for kind, params in pipeline():
            if kind not in registry():
                print(f"- {kind}: not available in this build, skipped")
                continue
            needs_train = any(isinstance(v, str) and "{train}" in v for v in params.values())
            if needs_train and "train" not in ids:
                continue
            job = client.submit(kind, _fill(params, ids))
            print(f"- {kind}: job {job['id']}")
            job = follow(client, job["id"])
            print(f"  {job['status']}: {_summary(job)}")
            if job["status"] != "succeeded":
                failed = True
                print(job.get("error") or "", file=sys.stderr)
                break
            if kind == "train_embedding":
                ids["train"] = job["id"]
        print(f"\nAll results are on the dashboard: {url}/  (API key {key})")
        if not args.exit_when_done:
            print("Ctrl-C stops the stack.")
            while all(p.poll() is None for p in procs):
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(procs)
    return 1 if failed else 0


def _summary(job: dict[str, Any]) -> str:
    result = job.get("result") or {}
    flat = {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return ", ".join(f"{k}={v:.4g}" for k, v in list(flat.items())[:6]) or "done"


if __name__ == "__main__":
    sys.exit(main())
