"""Checking one uploaded image with Pillow: decodable, a known raster format, and not a decompression bomb."""

from __future__ import annotations

import warnings
from pathlib import Path, PurePosixPath

from PIL import Image

from jobs.redact import scrub_paths

# Raster formats a face dataset uses; anything else (EPS would run Ghostscript) is never opened.
PIL_FORMATS = ("PNG", "JPEG", "PPM", "BMP", "GIF", "TIFF", "WEBP")
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".pnm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)


class BadImage(ValueError):
    """An image that cannot be decoded, or whose pixel count is over the limit (a decompression bomb)."""


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def check_image(path: Path, max_pixels: int, name: str | None = None) -> str:
    """Fully decode the image at `path`; its MIME type, or `BadImage` saying what is wrong.

    `name` is what the caller called the file (a form field, a member of an archive): messages use
    it instead of `path`, which is a folder of the server's.

    The pixel count is checked from the header before anything is decoded, both by Pillow
    (`MAX_IMAGE_PIXELS`, with its bomb warning turned into an error) and explicitly here.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=PIL_FORMATS) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise BadImage(f"decompression bomb: {width}x{height} pixels is over the limit of {max_pixels}")
                im.load()
                fmt = im.format or ""
    except BadImage:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadImage(f"decompression bomb: {exc}") from None
    except Exception as exc:  # Pillow raises many types for bad data: OSError, SyntaxError, ValueError...
        # Pillow names the file it read: the caller sees the upload's name, never the server's folder.
        detail = scrub_paths(str(exc).replace(str(path), name or path.name))[:200]
        raise BadImage(f"not a decodable image ({type(exc).__name__}: {detail})") from None
    return Image.MIME.get(fmt, "application/octet-stream")
