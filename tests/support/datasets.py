"""Datasets put straight into the store with their row, as an operator's registered prefix would be:
the way to give a job files the archive upload skips (a pairs.txt, a verification .bin, shards)."""

from __future__ import annotations

from typing import Any

from jobs.models import Dataset, new_id
from jobs.store import join_key
from tests.support.factories import key_id


def add_dataset(stack: Any, files: dict[str, bytes], key: str | None = None, name: str = "registered") -> str:
    """Store `files` ({"s1/1.pgm": bytes, "pairs.txt": bytes}) under datasets/<id>/ for the key; the ref."""
    ds_id = new_id()
    prefix = f"datasets/{ds_id}"
    for rel, data in files.items():
        stack.store.put_bytes(join_key(prefix, rel), data)
    with stack.session() as s:
        s.add(
            Dataset(
                id=ds_id,
                owner_id=key_id(stack, key),
                name=name,
                key_prefix=prefix,
                num_files=len(files),
                num_identities=len({rel.split("/")[0] for rel in files if "/" in rel}),
                size_bytes=sum(len(d) for d in files.values()),
                files={"keys": sorted(files)},
            )
        )
    return f"dataset:{ds_id}"


def orl_pairs(people: int, folds: int = 10, per_fold: int = 30, seed: int = 0) -> list[tuple[str, int, str, int]]:
    """LFW-style pairs over ORL's people s1..s<people>, 10 images each: per fold `per_fold` same then `per_fold`
    different pairs (name_a, i, name_b, j), seeded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out: list[tuple[str, int, str, int]] = []
    for _ in range(folds):
        for _ in range(per_fold):
            person = int(rng.integers(1, people + 1))
            i, j = (int(v) for v in rng.choice(np.arange(1, 11), 2, replace=False))
            out.append((f"s{person}", i, f"s{person}", j))
        for _ in range(per_fold):
            pa, pb = (int(v) for v in rng.choice(np.arange(1, people + 1), 2, replace=False))
            out.append((f"s{pa}", int(rng.integers(1, 11)), f"s{pb}", int(rng.integers(1, 11))))
    return out


def pairs_text(pairs: list[tuple[str, int, str, int]], folds: int = 10) -> str:
    """The pairs as LFW's pairs.txt writes them (tab separated, a header "<folds>\t<per kind>")."""
    lines = [f"{folds}\t{len(pairs) // (2 * folds)}"]
    for a, i, b, j in pairs:
        lines.append(f"{a}\t{i}\t{j}" if a == b else f"{a}\t{i}\t{b}\t{j}")
    return "\n".join(lines) + "\n"
