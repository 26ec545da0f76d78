"""Dataset archives (zip, tar, tar.gz): checked from their headers first, then extracted and decoded.

Refused with 400 and a code (nothing is stored):
  `unsupported_archive`, `corrupt_archive`   not a zip/tar we can read
  `too_many_members`                          more than `max_archive_members` (a zip's count is read
                                              from its end record before its directory is parsed)
  `unsafe_path`                               absolute paths, `..`, backslashes or control characters
  `link_member`, `special_member`             symlinks, hardlinks, devices, fifos
  `encrypted_member`, `duplicate_member`
  `archive_too_large`                         uncompressed total over `max_archive_uncompressed_bytes`,
                                              or over `max_archive_ratio` times the archive's size once
                                              past `archive_ratio_free_bytes` (a decompression bomb);
                                              checked member by member from the headers, before the
                                              next header is read (a tar.gz inflates what it skips),
                                              and counted again while extracting
  `no_images`, `mixed_layout`                 nothing to train on, or an ambiguous folder layout
  `invalid_images`                            any undecodable image or decompression bomb: the whole
                                              upload is refused, listing every bad member, so a
                                              dataset never silently loses files
Files that are not images (by extension) and hidden files are skipped and reported.

The `ingest` job (workers/runners/ingest.py) runs the same checks with `keep_data` (also keep
`DATA_SUFFIXES` files: protocols, RecordIO, shards) and `tolerate_bad` (an undecodable image is a
per-file failure in `DatasetContent.failures`, not a refusal of the whole archive).
"""

from __future__ import annotations

import logging
import re
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from api.errors import ApiError
from api.images import BadImage, check_image, is_image_name
from api.zipdir import TooManyEntries, ZipDirectoryError, check_zip_directory
from jobs.redact import new_error_id, scrub_paths
from jobs.settings import Settings

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
MAX_REPORTED = 100
DRIVE_RE = re.compile(r"^[A-Za-z]:")
JUNK_NAMES = frozenset({"Thumbs.db", "desktop.ini"})
DATA_SUFFIXES = (".txt", ".bin", ".rec", ".idx", ".tar")  # kept by the ingest job beside the images


class ArchiveRefused(ApiError):
    """The archive (or an image in it) is refused; `code` says why, `details` lists the members."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(400, code, message, details)


@dataclass
class Member:
    name: str
    parts: tuple[str, ...]
    size: int
    handle: Any  # ZipInfo or TarInfo


@dataclass
class ExtractedImage:
    rel: str  # path inside the dataset, e.g. "s1/1.pgm"
    path: Path
    size: int
    content_type: str = "application/octet-stream"


@dataclass
class DatasetContent:
    images: list[ExtractedImage]
    skipped: list[str]
    layout: str  # identities | flat
    num_identities: int
    size_bytes: int = field(default=0)
    data: list[ExtractedImage] = field(default_factory=list)  # kept non-image files (`keep_data`)
    failures: list[dict[str, str]] = field(default_factory=list)  # bad images (`tolerate_bad`)


def member_parts(name: str) -> tuple[str, ...]:
    """The path segments of a member name, or `ValueError` when it could escape the dataset folder."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("control characters in the name")
    if "\\" in name:
        raise ValueError("backslashes in the name (zip paths use '/')")
    if name.startswith("/") or DRIVE_RE.match(name):
        raise ValueError("absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ValueError("'..' in the path")
    return parts


def detect_format(path: Path, filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise ArchiveRefused("unsupported_archive", "upload a .zip, .tar, .tar.gz or .tgz archive")


def _zip_kind(info: zipfile.ZipInfo) -> str:
    if info.is_dir():
        return "dir"
    mode = info.external_attr >> 16
    ftype = mode & 0o170000
    if ftype == 0o120000:
        return "link"
    if ftype not in (0, 0o100000):
        return "special"
    if info.flag_bits & 0x1:
        return "encrypted"
    return "file"


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "dir"
    if info.issym() or info.islnk():
        return "link"
    if info.isreg():
        return "file"
    return "special"


def _raw_members(archive: Any, fmt: str, max_members: int) -> Iterator[tuple[str, str, int, Any]]:
    items: Any = archive.infolist() if fmt == "zip" else archive
    for n, info in enumerate(items, start=1):
        if n > max_members:
            raise ArchiveRefused(
                "too_many_members", f"the archive has more than {max_members} members", {"limit": max_members}
            )
        if fmt == "zip":
            yield info.filename, _zip_kind(info), info.file_size, info
        else:
            yield info.name, _tar_kind(info), info.size, info


CODES = {"link": "link_member", "special": "special_member", "encrypted": "encrypted_member"}
REASONS = {
    "link": "symbolic or hard link",
    "special": "device, fifo or other special file",
    "encrypted": "encrypted member",
}


def unpack_budget(settings: Settings, archive_bytes: int) -> int:
    """How many bytes an archive of `archive_bytes` may unpack to: the total cap, and the ratio cap."""
    by_ratio = max(int(settings.max_archive_ratio * archive_bytes), settings.archive_ratio_free_bytes)
    return min(settings.max_archive_uncompressed_bytes, by_ratio)


def _too_large(total: int, budget: int, settings: Settings, archive_bytes: int) -> ArchiveRefused:
    return ArchiveRefused(
        "archive_too_large",
        f"the archive unpacks to more than {budget} bytes (at least {total}), over the limit of "
        f"{settings.max_archive_uncompressed_bytes} or {settings.max_archive_ratio:g} times its {archive_bytes} bytes",
        {"limit_bytes": budget},
    )


def scan_members(archive: Any, fmt: str, settings: Settings, archive_bytes: int) -> list[Member]:
    """Every regular file of the archive, after refusing unsafe members from the headers alone.

    The unpacked total is checked after each header, before the next is read: reading a tar.gz's
    next header inflates the member in between, so a 4 GiB member of zeros is refused from its
    header instead of after 4 GiB of inflating.
    """
    members: list[Member] = []
    problems: list[dict[str, str]] = []
    codes: list[str] = []
    seen: set[tuple[str, ...]] = set()
    total = 0
    budget = unpack_budget(settings, archive_bytes)
    for name, kind, size, info in _raw_members(archive, fmt, settings.max_archive_members):
        if kind == "file":
            total += size
            if total > budget:
                raise _too_large(total, budget, settings, archive_bytes)
        try:
            parts = member_parts(name)
        except ValueError as exc:
            problems.append({"member": name[:300], "reason": str(exc)})
            codes.append("unsafe_path")
            continue
        if kind == "dir" or not parts:
            continue
        if kind != "file":
            problems.append({"member": name[:300], "reason": REASONS[kind]})
            codes.append(CODES[kind])
            continue
        if parts in seen:
            problems.append({"member": name[:300], "reason": "the same path appears twice"})
            codes.append("duplicate_member")
            continue
        seen.add(parts)
        members.append(Member(name, parts, size, info))
    if problems:
        raise ArchiveRefused(
            codes[0],
            f"the archive has {len(problems)} unsafe member(s): {problems[0]['member']!r} ({problems[0]['reason']})",
            {"members": problems[:MAX_REPORTED]},
        )
    return members


def is_junk(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1] in JUNK_NAMES


def plan_layout(images: list[Member]) -> tuple[str, list[tuple[str, ...]]]:
    """(layout, path of each image inside the dataset): one folder per identity, or flat.

    A single folder wrapping everything (`faces/s1/1.pgm`) is stripped first.
    """
    paths = [m.parts for m in images]
    if all(len(p) >= 2 for p in paths) and len({p[0] for p in paths}) == 1:
        paths = [p[1:] for p in paths]
    depths = {len(p) for p in paths}
    if depths == {1}:
        return "flat", paths
    if depths == {2}:
        return "identities", paths
    raise ArchiveRefused(
        "mixed_layout",
        "images must be either all at the top level (flat) or all one folder deep (one folder per identity)",
        {"depths": sorted(depths)},
    )


def _copy_limited(src: IO[bytes], dest: Path, budget: int) -> int:
    written = 0
    with dest.open("wb") as out:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            written += len(chunk)
            if written > budget:
                raise ArchiveRefused(
                    "archive_too_large", "the archive unpacks to more bytes than its headers say and over the limit"
                )
            out.write(chunk)
    return written


def _open_member(archive: Any, fmt: str, member: Member) -> IO[bytes]:
    if fmt == "zip":
        handle: IO[bytes] = archive.open(member.handle)
        return handle
    extracted = archive.extractfile(member.handle)
    if extracted is None:
        raise ArchiveRefused("special_member", f"{member.name!r} is not a regular file")
    return extracted


def _open_archive(path: Path, fmt: str, settings: Settings) -> Any:
    if fmt == "tar":
        return tarfile.open(path, "r:*")
    limit = settings.max_archive_members
    try:
        # Before ZipFile parses the directory: it builds one object per entry, however many.
        check_zip_directory(path, limit)
    except TooManyEntries as exc:
        raise ArchiveRefused(
            "too_many_members", f"the archive has more than {limit} members ({exc.count})", {"limit": limit}
        ) from None
    except ZipDirectoryError as exc:
        raise ArchiveRefused("corrupt_archive", f"the archive cannot be read: {exc}") from None
    return zipfile.ZipFile(path)


def is_data_name(name: str) -> bool:
    return name.lower().endswith(DATA_SUFFIXES)


def _data_rel(member: Member, images: list[Member], rels: list[tuple[str, ...]]) -> tuple[str, ...]:
    """A kept data file's path: the images' wrapper folder stripped when it wraps the file too."""
    stripped = bool(images) and len(images[0].parts) == len(rels[0]) + 1
    if stripped and len(member.parts) >= 2 and member.parts[0] == images[0].parts[0]:
        return member.parts[1:]
    return member.parts


def extract_dataset(
    path: Path,
    filename: str,
    dest: Path,
    settings: Settings,
    *,
    keep_data: bool = False,
    tolerate_bad: bool = False,
    check_threads: int = 1,
) -> DatasetContent:
    """Check, extract and decode every image of the archive at `path` into `dest`."""
    fmt = detect_format(path, filename)
    try:
        archive_bytes = path.stat().st_size
        with _open_archive(path, fmt, settings) as archive:
            members = scan_members(archive, fmt, settings, archive_bytes)
            kept = [m for m in members if keep_data and not is_junk(m.parts) and is_data_name(m.parts[-1])]
            kept_names = {m.name for m in kept}
            skipped = [
                m.name
                for m in members
                if (is_junk(m.parts) or not is_image_name(m.parts[-1])) and m.name not in kept_names
            ]
            images = [m for m in members if not is_junk(m.parts) and is_image_name(m.parts[-1])]
            if not images and not kept:
                raise ArchiveRefused(
                    "no_images",
                    "the archive holds no images (png, jpg, pgm, bmp, ...)",
                    {"skipped": skipped[:MAX_REPORTED]},
                )
            layout, rels = plan_layout(images) if images else ("flat", [])
            data_rels = [_data_rel(m, images, rels) for m in kept]
            out: list[ExtractedImage] = []
            budget = unpack_budget(settings, archive_bytes)
            for member, rel in zip([*images, *kept], [*rels, *data_rels], strict=True):
                target = dest.joinpath(*rel)
                if not target.resolve().is_relative_to(dest.resolve()):
                    raise ArchiveRefused("unsafe_path", f"{member.name!r} escapes the dataset folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                with _open_member(archive, fmt, member) as src:
                    size = _copy_limited(src, target, budget)
                budget -= size
                out.append(ExtractedImage("/".join(rel), target, size))
    except ArchiveRefused:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (
        zipfile.BadZipFile,
        tarfile.TarError,
        zlib.error,
        EOFError,
        OSError,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        error_id = new_error_id()
        log.info("archive %r refused as corrupt (error %s)", filename, error_id, exc_info=exc)
        # An OSError about a file names the server's path: the caller gets its reason and the error id.
        reason = exc.strerror if isinstance(exc, OSError) and exc.filename and exc.strerror else str(exc)
        raise ArchiveRefused(
            "corrupt_archive", f"the archive cannot be read: {scrub_paths(reason)[:300]}", {"error_id": error_id}
        ) from None
    data, out = out[len(images) :], out[: len(images)]
    bad: list[dict[str, str]] = []
    good: list[ExtractedImage] = []

    def check(img: ExtractedImage) -> str | None:
        try:
            img.content_type = check_image(img.path, settings.max_image_pixels, img.rel)
        except BadImage as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=check_threads) as pool:  # Pillow decodes without the GIL
        for img, refused in zip(out, pool.map(check, out), strict=True):
            if refused is None:
                good.append(img)
            else:
                bad.append({"member": img.rel, "reason": refused})
    if bad and tolerate_bad:
        good_rels = {img.rel for img in good}
        for img in out:
            if img.rel not in good_rels:
                img.path.unlink(missing_ok=True)
        out = good
    elif bad:
        raise ArchiveRefused(
            "invalid_images",
            f"{len(bad)} image(s) cannot be used (e.g. {bad[0]['member']!r}: {bad[0]['reason']}); nothing was stored",
            {"members": bad[:MAX_REPORTED], "count": len(bad)},
        )
    identities = len({i.rel.split("/", 1)[0] for i in out}) if layout == "identities" else 0
    size = sum(i.size for i in [*out, *data])
    return DatasetContent(out, skipped, layout, identities, size, data, bad if tolerate_bad else [])
