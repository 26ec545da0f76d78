"""Reading a dataset's files for bulk embedding: listing, safe decoding, and failure rows.

Every file becomes either an RGB uint8 array or a `Failure` with one of `REASONS`; nothing here
raises for bad data. Decoding is safe for untrusted uploads: the file size is capped before
reading, only raster formats are opened (no EPS/Ghostscript), and the pixel count is checked from
the header before any pixel is decoded: the `Image.MAX_IMAGE_PIXELS` rule applied with our own
limit and as an error (Pillow only warns between 1x and 2x its limit), so a decompression bomb
never allocates. The check is explicit rather than through Pillow's global limit and warning
filters because decoding runs in threads and those are process-wide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ml.core.defaults import shared_defaults

REASONS = ("undecodable", "no_face", "too_large", "too_small", "not_image")
RASTER_FORMATS = ("PNG", "JPEG", "PPM", "BMP", "GIF", "TIFF", "WEBP")


@dataclass(frozen=True)
class Failure:
    """A file that gave no face: its key, one of `REASONS`, and a human-readable detail."""

    key: str
    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown failure reason {self.reason!r}; one of {', '.join(REASONS)}")


# The settings a job's params also expose take their one default from ml/faces/defaults.json.
_SHARED = shared_defaults("faces", "DecodeLimits")


@dataclass(frozen=True)
class DecodeLimits:
    """What a file may be: at most `max_file_bytes` and `max_pixels`, at least `min_size` on each side."""

    max_pixels: int = _SHARED["max_pixels"]
    max_file_bytes: int = _SHARED["max_file_bytes"]
    min_size: int = _SHARED["min_size"]


def _natural_key(text: str) -> list[object]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def looks_like_image(head: bytes) -> bool:
    """True when the first bytes carry the signature of a raster format we read (a corrupt image
    then fails as `undecodable`, anything else as `not_image`)."""
    if head[:1] == b"P" and head[1:2] in b"123456" and len(head) > 2 and head[2:3].isspace():
        return True  # PNM: P1..P6 and whitespace
    return head.startswith(
        (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
    ) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _head(data: bytes | None, path: Path | None) -> bytes:
    if data is not None:
        return data[:16]
    try:
        with path.open("rb") as fh:  # type: ignore[union-attr]
            return fh.read(16)
    except OSError:
        return b""


def list_files(root: str | Path) -> list[tuple[str, Path]]:
    """(key, path) of every regular file under `root`, in natural order of the key.

    The key is the path relative to `root` with "/" separators. Hidden files and folders (".x",
    "__MACOSX") are left out; everything else is listed, images or not, so a stray non-image
    becomes a `not_image` row instead of vanishing. Symbolic links are not followed.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(_hidden(p) for p in rel.parts) or path.is_symlink() or not path.is_file():
            continue
        found.append((rel.as_posix(), path))
    return sorted(found, key=lambda kp: _natural_key(kp[0]))


def decode_bytes(key: str, data: bytes | None, path: Path | None, limits: DecodeLimits) -> np.ndarray | Failure:
    """Decode one image from `data` or `path` into an (H, W, 3) uint8 RGB array, or a `Failure`.

    EXIF orientation is applied (phone photos), multi-frame files give their first frame, and any
    mode (grey, palette, 16-bit, alpha) is converted to RGB.
    """
    import io

    try:
        size = len(data) if data is not None else path.stat().st_size  # type: ignore[union-attr]
    except OSError as exc:
        return Failure(key, "undecodable", f"cannot read the file: {exc}")
    if size > limits.max_file_bytes:
        return Failure(key, "too_large", f"{size} bytes is over the limit of {limits.max_file_bytes}")
    if size == 0:
        return Failure(key, "not_image", "empty file")
    source = io.BytesIO(data) if data is not None else path
    try:
        with Image.open(source, formats=RASTER_FORMATS) as im:  # type: ignore[arg-type]
            width, height = im.size
            if width * height > limits.max_pixels:
                return Failure(key, "too_large", f"{width}x{height} pixels is over the limit of {limits.max_pixels}")
            if min(width, height) < limits.min_size:
                return Failure(key, "too_small", f"{width}x{height} is under {limits.min_size} pixels a side")
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Failure(key, "too_large", f"decompression bomb: {exc}")
    except UnidentifiedImageError:
        if looks_like_image(_head(data, path)):
            return Failure(key, "undecodable", "an image signature, but Pillow cannot read the file")
        return Failure(key, "not_image", "not an image in a supported raster format")
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for corrupt data
        return Failure(key, "undecodable", f"{type(exc).__name__}: {str(exc)[:200]}")


def decode_file(key: str, path: Path, limits: DecodeLimits) -> np.ndarray | Failure:
    """`decode_bytes` of a file on disk."""
    return decode_bytes(key, None, path, limits)


def write_builtin_images(ref: str, dest: str | Path, folder: str | Path | None = None) -> Path:
    """Write a built-in dataset ("builtin:digits", "builtin:mnist") as PNGs `<label>/<index>.png` under `dest`.

    Bulk embedding reads files; a built-in lives in memory (`ml.data.load_dataset`), so it is
    written out once (grey, 8-bit, at its native loading size: digits 32x32, MNIST 28x28) and the
    keys carry the labels. `folder` is MNIST's IDX folder. Idempotent: a finished folder is reused.
    """
    import torch

    from ml.data import load_dataset

    dest = Path(dest) / ref.replace(":", "-")
    done = dest / ".complete"
    if done.exists():
        return dest
    ds = load_dataset(ref, folder)
    pixels = (ds.images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    width = len(str(len(ds)))
    for i in range(len(ds)):
        label = ds.class_names[int(ds.labels[i])]
        path = dest / label / f"{i:0{width}d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img = pixels[i, 0] if pixels.shape[1] == 1 else pixels[i].transpose(1, 2, 0)
        Image.fromarray(img).save(path)
    done.write_text("ok")
    return dest
