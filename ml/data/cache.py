"""A bounded local cache of fetched files (dataset shards): at most `max_bytes` on disk, least
recently used out, files in use pinned.

`fetch(name, dest)` brings one file to `dest` (a ranged/streamed store download in a worker, a copy in
tests); the cache knows nothing about the store, so `ml` stays free of `jobs`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from ml.data.dataset import DatasetError

Fetch = Callable[[str, Path], object]


class CacheFullError(DatasetError):
    """A file does not fit in the cache next to the files in use."""


class ShardCache:
    """`get(name)` -> a local path, fetched on a miss; `release(name)` when done with it."""

    def __init__(self, root: str | Path, max_bytes: int, fetch: Fetch, sizes: Callable[[str], int]) -> None:
        self.root, self.max_bytes, self._fetch, self._size_of = Path(root), int(max_bytes), fetch, sizes
        self.root.mkdir(parents=True, exist_ok=True)
        self._files: OrderedDict[str, int] = OrderedDict()  # name -> bytes, oldest first
        self._pins: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Event] = {}
        self.fetches = 0
        self.peak_bytes = 0

    def _path(self, name: str) -> Path:
        return self.root / name.replace("/", "__")

    @property
    def used_bytes(self) -> int:
        return sum(self._files.values())

    def _make_room(self, size: int, name: str) -> None:
        if size > self.max_bytes:
            raise CacheFullError(f"{name} ({size} bytes) is larger than the whole cache ({self.max_bytes} bytes)")
        for victim in list(self._files):
            if self.used_bytes + size <= self.max_bytes:
                return
            if self._pins.get(victim):
                continue
            self._path(victim).unlink(missing_ok=True)
            del self._files[victim]
        if self.used_bytes + size > self.max_bytes:
            raise CacheFullError(
                f"{name} ({size} bytes) does not fit next to the files in use "
                f"({self.used_bytes} of {self.max_bytes} bytes): raise the cache size"
            )

    def get(self, name: str) -> Path:
        """The local file of `name`, pinned until `release(name)`; fetched (after evictions) on a miss."""
        while True:
            with self._lock:
                self._pins[name] = self._pins.get(name, 0) + 1
                if name in self._files:
                    self._files.move_to_end(name)
                    return self._path(name)
                waiting = self._loading.get(name)
                if waiting is None:
                    size = self._size_of(name)
                    try:
                        self._make_room(size, name)
                    except CacheFullError:
                        self._unpin(name)
                        raise
                    self._files[name] = size  # reserved before the download, so the limit holds during it
                    self._files.move_to_end(name)
                    event = self._loading[name] = threading.Event()
                    break
                self._unpin(name)
            waiting.wait()
        try:
            self._fetch(name, self._path(name))
            self.fetches += 1
        except BaseException:
            with self._lock:
                self._files.pop(name, None)
                self._unpin(name)
                self._path(name).unlink(missing_ok=True)
            raise
        finally:
            with self._lock:
                self._loading.pop(name, None)
                self.peak_bytes = max(self.peak_bytes, self.used_bytes)
            event.set()
        return self._path(name)

    def _unpin(self, name: str) -> None:
        left = self._pins.get(name, 0) - 1
        if left > 0:
            self._pins[name] = left
        else:
            self._pins.pop(name, None)

    def release(self, name: str) -> None:
        with self._lock:
            self._unpin(name)

    def disk_bytes(self) -> int:
        """What the cache folder holds on disk now (for checks)."""
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())
