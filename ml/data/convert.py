"""Conversions of an identity folder into streamable formats, image bytes copied as they are (never
re-encoded): tar shards in the WebDataset layout or an insightface RecordIO `.rec` + `.idx`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from ml.data.folders import list_identities
from ml.data.recordio import write_insightface
from ml.data.shards import write_shards

Progress = Callable[[int, int], None]


def convert_folder(
    folder: str | Path, out: str | Path, to: str, per_shard: int = 1000, name: str = "data",
    progress: Progress | None = None,
) -> tuple[list[Path], int, int]:  # fmt: skip
    """(written files, images, identities) of `folder` converted into `out` ("shards" or "recordio")."""
    groups = list_identities(folder)
    items = [(label, ident, p) for label, (ident, paths) in enumerate(groups) for p in paths]
    total = len(items)

    def read() -> Iterator[tuple[int, str, Path, bytes]]:
        for n, (label, ident, p) in enumerate(items, start=1):
            yield label, ident, p, p.read_bytes()
            if progress is not None and (n % 200 == 0 or n == total):
                progress(n, total)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if to == "recordio":
        write_insightface(out / "train.rec", out / "train.idx", ((lab, data) for lab, _, _, data in read()))
        files = [out / "train.rec", out / "train.idx"]
    else:
        samples = ((f"{ident}_{p.stem}", p.suffix, data, lab) for lab, ident, p, data in read())
        files = write_shards(samples, out, name, per_shard)
    return files, total, len(groups)
