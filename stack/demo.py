"""`make demo`: start the embedded stack and run a real pipeline on sklearn's digits, built in and uploaded.

probe -> train_embedding (ArcFace on sklearn's digits) -> evaluate -> invert (a short run) ->
embed (the digits, through the trained model) -> an uploaded dataset: the digits written as PNGs in
one folder per digit, zipped and uploaded through the API client as a user's faces would be, then
train_embedding and evaluate on `dataset:<id>`. Every job shows on the dashboard while it runs; the
stack keeps serving afterwards until Ctrl-C (or exits at once with --exit-when-done).
"""

from __future__ import annotations

import argparse
import io
import string
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from client.commands import follow
from jobs.kinds import registry
from jobs.settings import get_settings
from stack.embedded import Stopping, start_embedded, stop_children_on_signals

# Digits per class in the uploaded archive: 400 images, enough for a held-out split of every digit
# and small enough that training on them adds seconds, not minutes, to the demo.
UPLOAD_PER_CLASS = 40


def pipeline() -> list[tuple[str, dict[str, Any]]]:
    """The demo's jobs in order.

    A `{name}` in a param is replaced by an id: `{train}` and `{train_upload}` by the id of the
    train_embedding job on builtin:digits and on the uploaded dataset (see `SAVE_AS`), `{upload}` by
    the id of the dataset archive the demo uploads (`digits_archive`) before the first step needing it.
    """
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
        # The upload path: an uploaded archive is cached under the worker's home (`.facejobs/` by default).
        (
            "train_embedding",
            {
                "dataset": "dataset:{upload}",
                "backbone": "se_resnet18",
                "base_width": 16,
                "embedding_size": 64,
                "image_size": 32,
                "epochs": 6,
                "batch_size": 64,
                "split_by": "sample",
                "seed": 0,
            },
        ),
        ("evaluate", {"model": "job:{train_upload}", "dataset": "dataset:{upload}"}),
    ]


# Which id a succeeded step's job is saved as, by its dataset (the steps above that later ones name).
SAVE_AS = {("train_embedding", "builtin:digits"): "train", ("train_embedding", "dataset:{upload}"): "train_upload"}


def placeholders(params: dict[str, Any]) -> set[str]:
    """The `{name}`s the step's params need filled."""
    return {
        name for v in params.values() if isinstance(v, str) for _, name, _, _ in string.Formatter().parse(v) if name
    }


def _fill(params: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    return {k: v.format(**ids) if isinstance(v, str) and "{" in v else v for k, v in params.items()}


def digits_archive(dest: Path, per_class: int = UPLOAD_PER_CLASS) -> Path:
    """A zip of sklearn's digits as a user's dataset would be: `digits/<digit>/<n>.png`, 8x8 grey PNGs.

    Built from data that ships with scikit-learn, so the demo needs no download.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[int, int] = {}
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for image, label in zip(digits.images, digits.target, strict=True):
            n = counts.get(int(label), 0)
            if n >= per_class:
                continue
            counts[int(label)] = n + 1
            png = io.BytesIO()
            # sklearn's 17 grey levels (0..16) -> 0..255
            Image.fromarray(np.round(image * 255 / 16).astype(np.uint8), "L").save(png, "PNG")
            zf.writestr(f"digits/{label}/{n}.png", png.getvalue())
    return dest


def _upload_digits(client: Any) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        dataset = client.upload_dataset(digits_archive(Path(tmp) / "digits.zip"), name="digits-upload")
    print(f"- uploaded dataset {dataset['ref']}: {dataset['num_files']} images of {dataset['num_identities']} digits")
    return str(dataset["id"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--exit-when-done", action="store_true")
    args = ap.parse_args(argv)
    from client.sdk import Client

    settings = get_settings()
    port = args.port or settings.api_port
    url = f"http://{settings.api_host}:{port}"
    procs: list[Any] = []
    ids: dict[str, str] = {}
    failed = False
    # SIGTERM/SIGHUP/Ctrl-C stop the API and worker too, as `facejobs up` does (no orphans on the port).
    try:
        with stop_children_on_signals(procs):
            _, key = start_embedded(settings, port, procs=procs)
            print(f"dashboard: {url}/   API key: {key}")
            failed = _run_pipeline(Client(url, key), ids)
            print(f"\nAll results are on the dashboard: {url}/  (API key {key})")
            if not args.exit_when_done:
                print("Ctrl-C stops the stack.")
                while all(p.poll() is None for p in procs):
                    time.sleep(1)
    except (KeyboardInterrupt, Stopping):
        pass
    return 1 if failed else 0


def _run_pipeline(client: Any, ids: dict[str, str]) -> bool:
    """Submit and follow every demo step in order; True when one did not succeed."""
    failed = False
    for kind, params in pipeline():
        if kind not in registry():
            print(f"- {kind}: not available in this build, skipped")
            continue
        needs = placeholders(params)
        if "upload" in needs and "upload" not in ids:
            ids["upload"] = _upload_digits(client)
        if needs - set(ids):
            continue  # the step it builds on was skipped
        job = client.submit(kind, _fill(params, ids))
        print(f"- {kind}: job {job['id']}")
        job = follow(client, job["id"])
        print(f"  {job['status']}: {_summary(job)}")
        if job["status"] != "succeeded":
            failed = True
            print(job.get("error") or "", file=sys.stderr)
            break
        save_as = SAVE_AS.get((kind, str(params.get("dataset"))))
        if save_as:
            ids[save_as] = job["id"]
    return failed


def _summary(job: dict[str, Any]) -> str:
    result = job.get("result") or {}
    flat = {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return ", ".join(f"{k}={v:.4g}" for k, v in list(flat.items())[:6]) or "done"


if __name__ == "__main__":
    sys.exit(main())
