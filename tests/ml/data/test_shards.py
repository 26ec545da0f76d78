"""Tar shards (WebDataset layout) streamed through a bounded cache: ranks read disjoint shards, a
stream stopped mid-epoch resumes at the same sample, disk use stays under the cache limit."""

from __future__ import annotations

import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from ml.data.cache import CacheFullError, ShardCache
from ml.data.folders import list_identities
from ml.data.shards import ShardError, ShardSampler, ShardStream, iter_shard, write_shards


def orl_shards(orl_dir: Path, folder: Path, people: int = 10, per_shard: int = 10) -> list[Path]:
    samples = [
        (f"{name}_{p.stem}", "pgm", p.read_bytes(), label)
        for label, (name, paths) in enumerate(list_identities(orl_dir)[:people])
        for p in paths
    ]
    return write_shards(samples, folder, "orl", per_shard)


def copying_cache(src: Path, root: Path, max_bytes: int, log: list[str] | None = None) -> ShardCache:
    def fetch(name: str, dest: Path) -> None:
        if log is not None:
            log.append(f"fetch {name}")
        shutil.copyfile(src / name, dest)

    return ShardCache(root, max_bytes, fetch, lambda name: (src / name).stat().st_size)


def test_shards_hold_webdataset_members_and_read_back(orl_dir: Path, tmp_path: Path) -> None:
    paths = orl_shards(orl_dir, tmp_path, people=2, per_shard=8)
    assert [p.name for p in paths] == ["orl-000000.tar", "orl-000001.tar", "orl-000002.tar"]
    with tarfile.open(paths[0]) as tar:
        assert tar.getnames()[:4] == ["s1_1.pgm", "s1_1.cls", "s1_2.pgm", "s1_2.cls"]
    samples = [s for p in paths for s in iter_shard(p)]
    assert [(k, lab) for k, _, lab in samples][:3] == [("s1_1", 0), ("s1_2", 0), ("s1_3", 0)]
    assert len(samples) == 20 and (samples[-1][0], samples[-1][2]) == ("s2_10", 1)
    assert samples[0][1] == (orl_dir / "s1" / "1.pgm").read_bytes()


def test_a_sample_without_label_is_refused(tmp_path: Path) -> None:
    write_shards([("a", "png", b"x", 1)], tmp_path, "d", 5)
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        tar.add(tmp_path / "d-000000.tar", arcname="a.png")
    with pytest.raises(ShardError, match=r"'a' lacks a \.cls label"):
        list(iter_shard(tmp_path / "bad.tar"))


def test_ranks_read_disjoint_shards_covering_the_epoch() -> None:
    for world in (1, 2, 3):
        parts = [ShardSampler(10, r, world, seed=4).shards() for r in range(world)]
        flat = [s for p in parts for s in p]
        assert sorted(flat) == list(range(10)) and len(set(flat)) == 10
    s = ShardSampler(10, 0, 1, seed=4)
    assert s.shards(0) != s.shards(1)  # a new order each epoch
    with pytest.raises(ShardError):
        ShardSampler(4, 2, 2)


def test_a_stream_stopped_mid_epoch_resumes_at_the_same_sample(orl_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "shards"
    names = [p.name for p in orl_shards(orl_dir, src)]
    full = ShardStream(names, copying_cache(src, tmp_path / "c1", 10**7), ShardSampler(len(names), seed=2))
    expected = [k for k, _, _ in full.epoch()]
    assert len(expected) == 100 and full.sampler.state.epoch == 1
    stream = ShardStream(names, copying_cache(src, tmp_path / "c2", 10**7), ShardSampler(len(names), seed=2))
    it = stream.epoch()
    first = [next(it)[0] for _ in range(37)]
    saved = stream.sampler.state.to_json()
    assert saved == {"epoch": 0, "seed": 2, "shard_index": 3, "sample_offset": 7}
    resumed = ShardSampler(len(names))
    resumed.load_state(saved)
    rest = [k for k, _, _ in ShardStream(names, copying_cache(src, tmp_path / "c3", 10**7), resumed).epoch()]
    assert first + rest == expected


def test_disk_use_stays_under_the_cache_limit_on_a_dataset_larger_than_it(orl_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "shards"
    paths = orl_shards(orl_dir, src, people=20)  # 20 shards of 10 faces, ~104 kB each
    total = sum(p.stat().st_size for p in paths)
    limit = 3 * max(p.stat().st_size for p in paths)
    assert total > 6 * limit
    cache = copying_cache(src, tmp_path / "cache", limit)
    stream = ShardStream([p.name for p in paths], cache, ShardSampler(len(paths), seed=0))
    seen, peak = 0, 0
    for _ in stream.epoch():
        seen += 1
        peak = max(peak, cache.disk_bytes())
    assert seen == 200 and cache.fetches == 20
    assert peak <= limit and cache.peak_bytes <= limit
    with pytest.raises(CacheFullError, match="larger than the whole cache"):
        copying_cache(src, tmp_path / "tiny", 1000).get(paths[0].name)


@pytest.mark.timeout(30)
def test_the_next_shard_is_fetched_while_the_current_one_is_read(orl_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "shards"
    names = [p.name for p in orl_shards(orl_dir, src, people=3)]
    log: list[str] = []
    lock = threading.Lock()

    def fetch(name: str, dest: Path) -> None:
        with lock:
            log.append(f"fetch {name}")
        shutil.copyfile(src / name, dest)

    cache = ShardCache(tmp_path / "cache", 10**7, fetch, lambda n: (src / n).stat().st_size)
    stream = ShardStream(names, cache, ShardSampler(3, seed=0))
    order = [names[i] for i in stream.sampler.shards()]
    it = stream.epoch()
    next(it)  # the first sample of the first shard
    while len(log) < 2:  # the read-ahead thread fetches the second shard without being asked
        threading.Event().wait(0.01)
    assert log == [f"fetch {order[0]}", f"fetch {order[1]}"] and stream.sampler.state.sample_offset == 1
    list(it)
    assert log == [f"fetch {n}" for n in order]
