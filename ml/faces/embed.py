"""Bulk face embedding: MTCNN detection, 5-point alignment, batched embedding, resumable by chunk.

`embed_dataset(files, model, settings, callbacks, device)` embeds every face of a list of files
(`ml.faces.decode.list_files(root)` lists a folder) with a `FaceModel` (`ml.faces.models`):

- each file gives its faces (the largest, or all) or exactly one failure row with a reason
  (`ml.faces.decode.REASONS`: undecodable, no_face, too_large, too_small, not_image); bad data never
  raises;
- files are processed in fixed chunks of `chunk_size`; after each chunk its embeddings, index rows
  and failures are saved with `callbacks.save_checkpoint`, and `callbacks.should_stop()` then stops
  the run with `ml.core.errors.Stopped`. A new run with the same callbacks store starts at the next
  unfinished chunk, so no face is embedded twice and the final outputs equal an uninterrupted run's;
- inside a chunk, decoding, detection and embedding overlap (`ml.faces.pipeline`).

The result holds float32 L2-normalised embeddings (N x d), one index row per face (key, face
number, box, landmarks, detection probability, model, alignment settings) and the failures;
`EmbedResult.write(folder)` stores embeddings.npy, index.csv, failures.csv and config.json.
`embed_image(data, ...)` embeds the largest face of one encoded image (verification);
`embed_image_face` also gives the aligned crop.

The checkpoint holds every finished chunk's embeddings (d * 4 bytes a face), so it grows with the
run: fine up to a few hundred thousand faces per job; split larger datasets into several jobs.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.core.callbacks import Callbacks, LocalCallbacks
from ml.core.defaults import shared_defaults
from ml.core.errors import InputError, Stopped, stop_message
from ml.core.fingerprint import fingerprint, resumable
from ml.faces.align import ALIGN_SIZES, AlignError
from ml.faces.decode import DecodeLimits, Failure, decode_bytes
from ml.faces.detect import DetectorSettings, DetectorSettingsError, FaceDetector, make_detector
from ml.faces.models import FaceModel
from ml.faces.pipeline import ChunkOutput, FaceRecord, Pipeline, PipelineConfig, face_crops
from ml.faces.warp import SPACES

CHECKPOINT_KIND = "embed"
INDEX_COLUMNS = (
    ["row", "key", "face", "x1", "y1", "x2", "y2", "prob"]
    + [f"lm{i}_{a}" for i in range(5) for a in ("x", "y")]
    + ["image_width", "image_height", "model", "align_size", "warp", "keep_aspect_ratio", "flip_tta"]
)
FAILURE_COLUMNS = ("key", "reason", "detail")


class EmbedSettingsError(InputError):
    """An embedding setting is invalid, or a checkpoint belongs to other settings or files."""


# The settings a job's params also expose take their one default from ml/faces/defaults.json.
_SHARED = shared_defaults("faces", "EmbedSettings")


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that defines a bulk-embedding run besides the files and the model.

    Attributes:
        detector: MTCNN and detection batching (`ml.faces.detect.DetectorSettings`).
        align_size: crop side, 112 (ArcFace template) or 160 (the template scaled); None: the
            model's own (160 FaceNet, 112 trained backbones).
        warp: RoI-tanh space applied in the aligned frame (`ml.faces.warp.SPACES`); None: the model's.
        keep_aspect_ratio: the warp's option.
        flip_tta: embedding = normalise(f(x) + f(mirrored x)).
        embed_batch_size: crops per network call.
        chunk_size: files per checkpoint.
        num_workers: decoding threads.
        prefetch: files decoded ahead of detection, at most.
        limits: file size, pixel count and minimum side of a decodable image.
    """

    detector: DetectorSettings = field(default_factory=DetectorSettings)
    align_size: int | None = _SHARED["align_size"]
    warp: str | None = _SHARED["warp"]
    keep_aspect_ratio: bool = _SHARED["keep_aspect_ratio"]
    flip_tta: bool = _SHARED["flip_tta"]
    embed_batch_size: int = _SHARED["embed_batch_size"]
    chunk_size: int = _SHARED["chunk_size"]
    num_workers: int = _SHARED["num_workers"]
    prefetch: int = 64
    limits: DecodeLimits = field(default_factory=DecodeLimits)

    def validate(self) -> None:
        problems = []
        try:
            self.detector.validate()
        except DetectorSettingsError as exc:
            problems.append(str(exc))
        if self.align_size is not None and self.align_size not in ALIGN_SIZES:
            problems.append(f"align_size must be one of {ALIGN_SIZES} or None, got {self.align_size}")
        if self.warp is not None and self.warp not in SPACES:
            problems.append(f"warp must be one of {', '.join(SPACES)} or None, got {self.warp!r}")
        for name in ("embed_batch_size", "chunk_size", "num_workers", "prefetch"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        lim = self.limits
        if lim.max_pixels < 1 or lim.max_file_bytes < 1 or lim.min_size < 1:
            problems.append(f"limits must be positive, got {lim}")
        if problems:
            raise EmbedSettingsError("invalid embedding settings: " + "; ".join(problems))

    def pipeline_config(self, model: FaceModel) -> PipelineConfig:
        return PipelineConfig(
            align_size=self.align_size or model.align_size,
            warp=model.warp if self.warp is None else self.warp,
            keep_aspect_ratio=self.keep_aspect_ratio,
            flip_tta=self.flip_tta,
            embed_batch_size=self.embed_batch_size,
            num_workers=self.num_workers,
            prefetch=self.prefetch,
            limits=self.limits,
        )

    def resolved(self, model: FaceModel) -> dict[str, Any]:
        """The settings as used with `model` (config.json), every None resolved."""
        cfg = self.pipeline_config(model)
        d = asdict(self)
        d.update(align_size=cfg.align_size, warp=cfg.warp)
        d["detector"]["thresholds"] = list(self.detector.thresholds)
        return d


@dataclass
class EmbedResult:
    """Embeddings (N, d) float32, one index row per face (dicts keyed by `INDEX_COLUMNS`), failures."""

    embeddings: np.ndarray
    index: list[dict[str, Any]]
    failures: list[Failure]
    config: dict[str, Any]

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write embeddings.npy, index.csv, failures.csv and config.json; name -> path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {n: folder / n for n in ("embeddings.npy", "index.csv", "failures.csv", "config.json")}
        np.save(paths["embeddings.npy"], self.embeddings)
        with paths["index.csv"].open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=INDEX_COLUMNS)
            writer.writeheader()
            writer.writerows(self.index)
        with paths["failures.csv"].open("w", newline="") as fh:
            fw = csv.writer(fh)
            fw.writerow(FAILURE_COLUMNS)
            fw.writerows((f.key, f.reason, f.detail) for f in self.failures)
        paths["config.json"].write_text(json.dumps(self.config, indent=2, sort_keys=True, default=str))
        return paths


def _face_row(rec: FaceRecord, model_id: str, cfg: PipelineConfig) -> dict[str, Any]:
    det = rec.detection
    row: dict[str, Any] = {"key": rec.key, "face": rec.face}
    row.update(zip(("x1", "y1", "x2", "y2"), (round(float(v), 4) for v in det.box), strict=True))
    row["prob"] = round(float(det.prob), 6)
    for i, (x, y) in enumerate(det.landmarks):
        row[f"lm{i}_x"], row[f"lm{i}_y"] = round(float(x), 4), round(float(y), 4)
    row.update(
        image_width=rec.width,
        image_height=rec.height,
        model=model_id,
        align_size=cfg.align_size,
        warp=cfg.warp,
        keep_aspect_ratio=cfg.keep_aspect_ratio,
        flip_tta=cfg.flip_tta,
    )
    return row


def _part(out: ChunkOutput, model_id: str, cfg: PipelineConfig) -> dict[str, Any]:
    """A chunk as checkpoint state: plain tensors, lists and dicts only."""
    return {
        "chunk": out.chunk,
        "images": out.images,
        "embeddings": out.embeddings.float().contiguous(),
        "rows": [_face_row(r, model_id, cfg) for r in out.faces],
        "failures": [[f.key, f.reason, f.detail] for _, f in out.failures],
    }


def _fingerprint(files: Sequence[tuple[str, Path]], model: FaceModel, settings: EmbedSettings) -> str:
    numeric = settings.resolved(model)
    for name in ("num_workers", "prefetch"):  # how fast, not what: may change between attempts
        numeric.pop(name)
    return fingerprint(model.model_id, numeric, [k for k, _ in files])


def _stopped(chunks_done: int, chunks: int) -> Stopped:
    return Stopped(stop_message("embedding", "chunk", chunks_done, chunks), chunks_done, chunks)


def embed_dataset(
    files: Sequence[tuple[str, Path]],
    model: FaceModel,
    settings: EmbedSettings | None = None,
    callbacks: Callbacks | None = None,
    device: torch.device | str = "cpu",
    detector: FaceDetector | None = None,
) -> EmbedResult:
    """Embed every face of `files` ((key, path) pairs, e.g. `ml.faces.decode.list_files(root)`).

    Args:
        files: the files, in the order of the output.
        model: the embedding network (`ml.faces.models.load_facenet` / `load_trained_model`).
        settings: detection, alignment, batching, chunking and decoding limits.
        callbacks: progress, log, checkpoints and stop requests; None keeps them in memory.
        device: where detection, alignment and embedding run.
        detector: a loaded `FaceDetector` to reuse (its settings replace `settings.detector`).

    Raises:
        EmbedSettingsError: invalid settings, or a checkpoint from other settings, model or files.
        Stopped: `callbacks.should_stop()` after a chunk's checkpoint (resume by calling again).
    """
    settings = settings or EmbedSettings()
    if detector is not None:
        settings = replace(settings, detector=detector.settings)
    settings.validate()
    cb: Callbacks = callbacks if callbacks is not None else LocalCallbacks()
    device = torch.device(device)
    model.to(device)
    detector = detector or make_detector(settings.detector, device)
    cfg = settings.pipeline_config(model)
    key = _fingerprint(files, model, settings)
    n = len(files)
    n_chunks = (n + settings.chunk_size - 1) // settings.chunk_size
    parts: list[dict[str, Any]] = []
    mismatch = "the checkpoint found belongs to other settings, model or files; cannot resume"
    state = resumable(cb.load_checkpoint(), CHECKPOINT_KIND, key, EmbedSettingsError, mismatch)
    if state is not None:
        parts = list(state["parts"])
        cb.log(f"resumed after chunk {len(parts)} of {n_chunks}")
    size = settings.chunk_size
    chunks = [(c, c * size, min(n, (c + 1) * size)) for c in range(len(parts), n_chunks)]
    started = time.monotonic()
    done_before = sum(int(p["images"]) for p in parts)
    generator = Pipeline(model, detector, cfg).run(files, chunks, cb.should_stop)
    try:
        for out in generator:
            parts.append(_part(out, model.model_id, cfg))
            cb.save_checkpoint({"kind": CHECKPOINT_KIND, "fingerprint": key, "parts": parts})
            done = sum(int(p["images"]) for p in parts)
            rate = (done - done_before) / max(time.monotonic() - started, 1e-9)
            faces = sum(len(p["rows"]) for p in parts)
            fails = sum(len(p["failures"]) for p in parts)
            cb.progress(done, n, faces=faces, failures=fails, images_per_second=rate)
            cb.log(f"chunk {out.chunk + 1}/{n_chunks}: {len(out.faces)} faces, {len(out.failures)} failures")
            if len(parts) < n_chunks and cb.should_stop():
                raise _stopped(len(parts), n_chunks)
    finally:
        generator.close()
    if len(parts) < n_chunks:  # the pipeline saw a stop request in the middle of a chunk
        raise _stopped(len(parts), n_chunks)
    return _assemble(parts, model, settings, n)


def _assemble(parts: list[dict[str, Any]], model: FaceModel, settings: EmbedSettings, n: int) -> EmbedResult:
    embs = [p["embeddings"] for p in parts if p["embeddings"].shape[0]]
    embeddings = torch.cat(embs).numpy() if embs else np.zeros((0, model.embedding_size), np.float32)
    rows = [dict(r) for p in parts for r in p["rows"]]
    for i, r in enumerate(rows):
        r["row"] = i
    failures = [Failure(*f) for p in parts for f in p["failures"]]
    counts: dict[str, int] = {}
    for f in failures:
        counts[f.reason] = counts.get(f.reason, 0) + 1
    config = {
        "settings": settings.resolved(model),
        "model": model.model_id,
        "embedding_size": int(embeddings.shape[1]),
        "model_input": {"size": list(model.input_size), "channels": model.in_channels},
        "files": n,
        "faces": len(rows),
        "images_with_faces": len({r["key"] for r in rows}),
        "failures": len(failures),
        "failure_reasons": counts,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    return EmbedResult(embeddings.astype(np.float32, copy=False), rows, failures, config)


@dataclass
class ImageFace:
    """The largest face of one image: its embedding (d,), index row (box, landmarks, ...), the
    aligned crop (3, S, S) in [0, 1] that the model embedded, and the decoded image (H, W, 3) uint8."""

    embedding: np.ndarray
    row: dict[str, Any]
    crop: torch.Tensor
    image: np.ndarray


def embed_image(
    data: bytes,
    model: FaceModel,
    settings: EmbedSettings | None = None,
    device: torch.device | str = "cpu",
    detector: FaceDetector | None = None,
    key: str = "image",
) -> tuple[np.ndarray, dict[str, Any]] | Failure:
    """The embedding (d,) and index row of the largest face in an encoded image, or a `Failure`."""
    out = embed_image_face(data, model, settings, device, detector, key)
    return out if isinstance(out, Failure) else (out.embedding, out.row)


def embed_image_face(
    data: bytes,
    model: FaceModel,
    settings: EmbedSettings | None = None,
    device: torch.device | str = "cpu",
    detector: FaceDetector | None = None,
    key: str = "image",
) -> ImageFace | Failure:
    """`embed_image`, with the aligned crop the model embedded (what a page shows)."""
    settings = settings or EmbedSettings()
    if detector is not None:
        settings = replace(settings, detector=detector.settings)
    device = torch.device(device)
    model.to(device)
    detector = detector or make_detector(settings.detector, device)
    cfg = settings.pipeline_config(model)
    decoded = decode_bytes(key, data, None, settings.limits)
    if isinstance(decoded, Failure):
        return decoded
    prep = detector.prepare(decoded)
    if isinstance(prep, str):
        return Failure(key, prep.reason, prep)
    faces = detector.detect([prep])[0]
    if not faces:
        return Failure(key, "no_face", "MTCNN found no face")
    face = faces[0]
    try:
        crop = face_crops(detector, model, prep, [face], cfg)
    except AlignError as exc:
        return Failure(key, "no_face", str(exc))
    emb = model.embed(crop, cfg.flip_tta)[0].cpu().numpy()
    h, w = decoded.shape[:2]
    row = _face_row(FaceRecord(0, key, 0, w, h, face), model.model_id, cfg)
    return ImageFace(emb, row, crop[0].detach().float().cpu().clamp(0, 1), decoded)
