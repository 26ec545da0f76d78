"""The threaded decode -> detect/align -> embed pipeline behind `ml.faces.embed.embed_dataset`.

Three kinds of worker keep the embedding network busy:
- a thread pool decodes files (Pillow releases the GIL), a bounded window ahead of detection;
- one detection thread groups decoded images by detection size, runs MTCNN on full batches and
  aligns the faces on the device;
- the calling thread embeds aligned crops in large batches as they arrive.

Results come out one chunk of files at a time. Everything that could change a number (which
images share a detection batch, which crops share an embedding batch) depends only on the file
order inside the chunk, never on thread timing or on earlier chunks, so a run resumed at chunk k
computes exactly what an uninterrupted run computed for chunk k.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ml.arcface.model import apply_warp
from ml.core.device_errors import raise_if_device_error
from ml.faces.align import AlignError, align_faces
from ml.faces.decode import DecodeLimits, Failure, decode_file
from ml.faces.detect import Detection, FaceDetector, Prepared
from ml.faces.models import FaceModel


@dataclass(frozen=True)
class FaceRecord:
    """One embedded face: the file (index in the file list, key, size) and its detection."""

    index: int
    key: str
    face: int
    width: int
    height: int
    detection: Detection


@dataclass
class ChunkOutput:
    """What one chunk of files gave: embeddings in (file, face) order, their records, the failures."""

    chunk: int
    embeddings: torch.Tensor
    faces: list[FaceRecord]
    failures: list[tuple[int, Failure]]
    images: int


@dataclass(frozen=True)
class PipelineConfig:
    """Resolved per-run settings of the pipeline (see `ml.faces.embed.EmbedSettings`)."""

    align_size: int
    warp: str
    keep_aspect_ratio: bool
    flip_tta: bool
    embed_batch_size: int
    num_workers: int
    prefetch: int
    limits: DecodeLimits


@dataclass
class _Accumulator:
    records: list[FaceRecord] = field(default_factory=list)
    crops: list[torch.Tensor] = field(default_factory=list)
    pending: int = 0
    embeddings: list[torch.Tensor] = field(default_factory=list)
    failures: list[tuple[int, Failure]] = field(default_factory=list)


def face_crops(
    detector: FaceDetector, model: FaceModel, prep: Prepared, faces: list[Detection], cfg: PipelineConfig
) -> torch.Tensor:
    """The crops (F, 3, S, S) in [0, 1] the model embeds: aligned faces, or the whole image resized.

    A whole image (detector method "none") goes to the model's input size as training fed it:
    resized, then warped into the model's space.

    Raises:
        AlignError: landmarks that give no usable similarity transform.
    """
    if detector.whole_image:
        x = prep.image.unsqueeze(0)
        size = tuple(model.input_size)
        if tuple(x.shape[2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        return apply_warp(x, cfg.warp).expand(len(faces), -1, -1, -1)
    lm = torch.from_numpy(np.stack([f.landmarks for f in faces]))
    return align_faces(prep.image, lm, cfg.align_size, cfg.warp, cfg.keep_aspect_ratio)


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put unless the consumer has gone away (then False)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class Pipeline:
    """Decode, detect, align and embed files chunk by chunk (see the module docstring)."""

    def __init__(self, model: FaceModel, detector: FaceDetector, config: PipelineConfig) -> None:
        self.model = model
        self.detector = detector
        self.config = config
        self.device = detector.device
        # Images waiting for a same-size batch, at most: heterogeneous sizes must not pile up.
        self.max_pending = 4 * detector.settings.batch_size

    # -- detection thread ------------------------------------------------------------------------

    def _decoded(
        self, pool: ThreadPoolExecutor, files: Sequence[tuple[str, Path]], lo: int, hi: int
    ) -> Iterator[tuple[int, str, np.ndarray | Failure]]:
        """Decoded files lo..hi-1 in order, at most `prefetch` decoding ahead."""
        window: deque[tuple[int, str, Any]] = deque()
        nxt = lo
        while nxt < hi and len(window) < self.config.prefetch:
            key, path = files[nxt]
            window.append((nxt, key, pool.submit(decode_file, key, path, self.config.limits)))
            nxt += 1
        while window:
            i, key, fut = window.popleft()
            if nxt < hi:
                k2, p2 = files[nxt]
                window.append((nxt, k2, pool.submit(decode_file, k2, p2, self.config.limits)))
                nxt += 1
            yield i, key, fut.result()

    def _detect(self, batch: list[Prepared]) -> list[list[Detection] | Failure]:
        """MTCNN on a batch; if the batch call fails, image by image, so one bad image costs one row.

        A device fault or out of memory is no fact about an image: it propagates (the worker hands
        the job to a fresh process, or names the sizes to lower) instead of becoming `no_face` rows.
        """
        try:
            return list(self.detector.detect(batch))
        except (RuntimeError, ValueError, IndexError) as exc:
            raise_if_device_error(exc)
        out: list[list[Detection] | Failure] = []
        for p in batch:
            try:
                out.append(self.detector.detect([p])[0])
            except (RuntimeError, ValueError, IndexError) as exc:
                raise_if_device_error(exc)
                out.append(Failure("", "no_face", f"the detector failed on this image: {exc}"))
        return out

    def _flush(
        self, chunk: int, items: list[tuple[int, str, Prepared]], q: queue.Queue[Any], stop: threading.Event
    ) -> None:
        cfg = self.config
        results = self._detect([p for _, _, p in items])
        records: list[FaceRecord] = []
        crops: list[torch.Tensor] = []
        for (i, key, prep), faces in zip(items, results, strict=True):
            if isinstance(faces, Failure):
                _put(q, ("fail", chunk, i, Failure(key, faces.reason, faces.detail)), stop)
                continue
            if not faces:
                _put(q, ("fail", chunk, i, Failure(key, "no_face", "MTCNN found no face")), stop)
                continue
            try:
                crop = face_crops(self.detector, self.model, prep, faces, cfg)
            except AlignError as exc:
                _put(q, ("fail", chunk, i, Failure(key, "no_face", str(exc))), stop)
                continue
            h, w = prep.image.shape[1:]
            records.extend(FaceRecord(i, key, n, int(w), int(h), f) for n, f in enumerate(faces))
            crops.append(crop)
        if records:
            _put(q, ("faces", chunk, records, torch.cat(crops)), stop)

    def _produce(
        self,
        files: Sequence[tuple[str, Path]],
        chunks: Sequence[tuple[int, int, int]],
        q: queue.Queue[Any],
        stop: threading.Event,
    ) -> None:
        pool = ThreadPoolExecutor(max(1, self.config.num_workers), thread_name_prefix="embed-decode")
        try:
            decoded = self._decoded(pool, files, chunks[0][1], chunks[-1][2])
            batch_size = self.detector.settings.batch_size
            for chunk, lo, hi in chunks:
                pending: dict[tuple[int, int], list[tuple[int, str, Prepared]]] = {}
                waiting = 0
                for _ in range(hi - lo):
                    if stop.is_set():
                        return
                    i, key, res = next(decoded)
                    if isinstance(res, Failure):
                        _put(q, ("fail", chunk, i, res), stop)
                        continue
                    prep = self.detector.prepare(res)
                    if isinstance(prep, str):
                        _put(q, ("fail", chunk, i, Failure(key, prep.reason, prep)), stop)
                        continue
                    bucket = pending.setdefault(prep.size, [])
                    bucket.append((i, key, prep))
                    waiting += 1
                    if len(bucket) >= batch_size:
                        waiting -= len(bucket)
                        self._flush(chunk, pending.pop(prep.size), q, stop)
                    elif waiting > self.max_pending:
                        oldest = pending.pop(next(iter(pending)))
                        waiting -= len(oldest)
                        self._flush(chunk, oldest, q, stop)
                for size in list(pending):
                    self._flush(chunk, pending.pop(size), q, stop)
                _put(q, ("end", chunk, hi - lo), stop)
            _put(q, ("done",), stop)
        except BaseException as exc:  # handed to the consumer, which re-raises it in the caller's thread
            _put(q, ("error", exc), stop)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- calling thread --------------------------------------------------------------------------

    def _embed_some(self, acc: _Accumulator, n: int) -> None:
        crops = acc.crops[0] if len(acc.crops) == 1 else torch.cat(acc.crops)
        batch, rest = crops[:n], crops[n:]
        acc.crops = [rest] if rest.shape[0] else []
        acc.pending -= batch.shape[0]
        acc.embeddings.append(self.model.embed(batch, self.config.flip_tta).cpu())

    def _finish(self, acc: _Accumulator, chunk: int, images: int) -> ChunkOutput:
        emb = torch.cat(acc.embeddings) if acc.embeddings else torch.zeros(0, self.model.embedding_size)
        order = sorted(range(len(acc.records)), key=lambda k: (acc.records[k].index, acc.records[k].face))
        return ChunkOutput(
            chunk=chunk,
            embeddings=emb[order].contiguous() if order else emb,
            faces=[acc.records[k] for k in order],
            failures=sorted(acc.failures, key=lambda f: f[0]),
            images=images,
        )

    def run(
        self,
        files: Sequence[tuple[str, Path]],
        chunks: Sequence[tuple[int, int, int]],
        should_stop: Callable[[], bool] | None = None,
    ) -> Generator[ChunkOutput, None, None]:
        """Yield a `ChunkOutput` per (chunk number, first file, end) in `chunks`, in order.

        When `should_stop()` answers True in the middle of a chunk (asked at most twice a second),
        the generator ends without that chunk, so a cancel does not wait for a long chunk. Closing
        the generator early shuts the threads down.
        """
        if not chunks:
            return
        q: queue.Queue[Any] = queue.Queue(maxsize=16)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(files, chunks, q, stop), name="embed-detect", daemon=True)
        worker.start()
        bs = self.config.embed_batch_size
        asked = time.monotonic()
        try:
            acc = _Accumulator()
            while True:
                item = q.get()
                tag = item[0]
                if tag == "done":
                    return
                if tag == "error":
                    raise item[1]
                if tag == "fail":
                    acc.failures.append((item[2], item[3]))
                elif tag == "faces":
                    acc.records.extend(item[2])
                    acc.crops.append(item[3])
                    acc.pending += item[3].shape[0]
                    while acc.pending >= bs:
                        self._embed_some(acc, bs)
                    if should_stop is not None and time.monotonic() - asked > 0.5:
                        asked = time.monotonic()
                        if should_stop():
                            return
                elif tag == "end":
                    while acc.pending:
                        self._embed_some(acc, min(bs, acc.pending))
                    yield self._finish(acc, item[1], item[2])
                    acc = _Accumulator()
        finally:
            stop.set()
            while worker.is_alive():
                with contextlib.suppress(queue.Empty):
                    q.get(timeout=0.05)
            worker.join()
