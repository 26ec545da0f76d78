"""Tar shards in the WebDataset layout, streamed: `<key>.jpg|png|pgm` + `<key>.cls` per sample, in
shards `name-000000.tar`, read by our own reader over `tarfile`.

Why not the `webdataset` package: it is not installed in the project's environment, and a worker
reads shards from the store through our own fetcher (`ShardCache` + store downloads), which would
bypass webdataset's URL openers anyway; the layout needs only `tarfile`.

- `write_shards`: samples -> shards of `per_shard` samples (tests, conversions).
- `iter_shard`: (key, image bytes, label) of one shard, members read as data (never extracted).
- `ShardSampler`: each epoch a seeded shard order, split across DDP ranks (rank::world_size), with a
  resumable state (epoch, seed, shard index, sample offset).
- `ShardStream`: samples of a rank through a bounded `ShardCache`, the next shard fetched in a
  thread while the current one is read.
"""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ml.data.cache import ShardCache
from ml.data.dataset import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp")


class ShardError(DatasetError):
    """A shard is malformed (a sample without an image or a label, a bad label)."""


def shard_name(name: str, i: int) -> str:
    return f"{name}-{i:06d}.tar"


def write_shards(
    samples: Iterable[tuple[str, str, bytes, int]], folder: str | Path, name: str, per_shard: int
) -> list[Path]:
    """Shards of (key, image extension, image bytes, label) samples; the shard paths in order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    tar: tarfile.TarFile | None = None
    for n, (key, ext, data, label) in enumerate(samples):
        if n % per_shard == 0:
            if tar is not None:
                tar.close()
            paths.append(folder / shard_name(name, len(paths)))
            tar = tarfile.open(paths[-1], "w")  # noqa: SIM115 (closed below)
        assert tar is not None
        for member, blob in ((f"{key}.{ext.lstrip('.')}", data), (f"{key}.cls", str(label).encode())):
            info = tarfile.TarInfo(member)
            info.size, info.mtime = len(blob), 0
            tar.addfile(info, io.BytesIO(blob))
    if tar is not None:
        tar.close()
    return paths


def _split(member: str) -> tuple[str, str]:
    base = member.rsplit("/", 1)[-1]
    if "." not in base:
        return member, ""
    dot = len(member) - len(base) + base.index(".")
    return member[:dot], member[dot:].lower()


def iter_shard(path: str | Path) -> Iterator[tuple[str, bytes, int]]:
    """(key, image bytes, label) of every sample of a shard, in the shard's order."""
    name = Path(path).name
    key, image, label = None, None, None

    def done() -> tuple[str, bytes, int]:
        if image is None or label is None:
            raise ShardError(f"{name}: sample {key!r} lacks {'an image' if image is None else 'a .cls label'}")
        return str(key), image, label

    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue  # directories, links, devices: never followed
                k, ext = _split(m.name)
                if k != key and key is not None:
                    yield done()
                    image, label = None, None
                key = k
                f = tar.extractfile(m)
                data = f.read() if f is not None else b""
                if ext == ".cls":
                    text = data.decode("ascii", errors="replace").strip()
                    if not text.lstrip("-").isdigit():
                        raise ShardError(f"{name}: {m.name} holds {text[:20]!r}, not an integer label")
                    label = int(text)
                elif ext in IMAGE_SUFFIXES:
                    image = data
            if key is not None:
                yield done()
    except tarfile.TarError as exc:
        raise ShardError(f"{name} is not a readable tar: {exc}") from exc


@dataclass
class SamplerState:
    """Where a rank is: epoch, the shard-order seed, the index into its shards, samples done in it."""

    epoch: int = 0
    seed: int = 0
    shard_index: int = 0
    sample_offset: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


class ShardSampler:
    """Shards of one rank per epoch: a permutation seeded by (seed, epoch), dealt rank::world_size
    (ranks read disjoint shards; a remainder shard goes to the first ranks)."""

    def __init__(
        self, num_shards: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ) -> None:
        if not 0 <= rank < world_size:
            raise ShardError(f"rank {rank} is not in 0..{world_size - 1}")
        self.num_shards, self.rank, self.world_size, self.shuffle = num_shards, rank, world_size, shuffle
        self.state = SamplerState(seed=seed)

    def shards(self, epoch: int | None = None) -> list[int]:
        e = self.state.epoch if epoch is None else epoch
        order = np.arange(self.num_shards)
        if self.shuffle:
            order = np.random.default_rng([self.state.seed, e]).permutation(self.num_shards)
        return [int(i) for i in order[self.rank :: self.world_size]]

    def load_state(self, state: dict[str, int]) -> None:
        self.state = SamplerState(**state)


class ShardStream:
    """Samples of the sampler's current epoch from the shards `names`, through `cache`, resuming at
    the sampler's state; the state advances with every sample handed out."""

    def __init__(self, names: Sequence[str], cache: ShardCache, sampler: ShardSampler, read_ahead: bool = True) -> None:
        if sampler.num_shards != len(names):
            raise ShardError(f"sampler has {sampler.num_shards} shards, {len(names)} names given")
        self.names, self.cache, self.sampler, self.read_ahead = list(names), cache, sampler, read_ahead
        self.prefetched: list[str] = []

    def _prefetch(self, name: str) -> threading.Thread:
        def run() -> None:
            try:
                self.cache.get(name)
                self.prefetched.append(name)
            except DatasetError:
                pass  # no room now: the main loop fetches it when it gets there
            finally:
                self.cache.release(name)

        t = threading.Thread(target=run, name=f"read-ahead {name}", daemon=True)
        t.start()
        return t

    def epoch(self) -> Iterator[tuple[str, bytes, int]]:
        """The rest of the current epoch; at its end the state moves to the next epoch."""
        st = self.sampler.state
        order = self.sampler.shards()
        ahead: threading.Thread | None = None
        while st.shard_index < len(order):
            name = self.names[order[st.shard_index]]
            if ahead is not None:
                ahead.join()
            path = self.cache.get(name)
            try:
                nxt = st.shard_index + 1
                ahead = self._prefetch(self.names[order[nxt]]) if self.read_ahead and nxt < len(order) else None
                for n, sample in enumerate(iter_shard(path)):
                    if n < st.sample_offset:
                        continue
                    st.sample_offset = n + 1
                    yield sample
            finally:
                self.cache.release(name)
            st.shard_index, st.sample_offset = st.shard_index + 1, 0
        if ahead is not None:
            ahead.join()
        st.epoch, st.shard_index, st.sample_offset = st.epoch + 1, 0, 0
