"""A zip's central directory, measured from its end records before `zipfile` parses any of it.

`zipfile.ZipFile` reads the whole central directory into memory and builds one `ZipInfo` per
entry at open: a 60 MB upload listing a million entries costs the API hundreds of MiB before any
member cap can be applied. `check_zip_directory` reads the end-of-central-directory record (and
the zip64 one it points to), then walks the directory's fixed-size headers one at a time, keeping
nothing, so a caller can refuse an archive with too many entries, or a directory larger than its
entries need, at the price of reading the headers once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

EOCD = struct.Struct("<4s4H2LH")  # end of central directory, 22 bytes + comment
EOCD_SIG = b"PK\x05\x06"
ZIP64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes, just before the EOCD
ZIP64_LOCATOR_SIG = b"PK\x06\x07"
ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
ZIP64_EOCD_SIG = b"PK\x06\x06"
CENTRAL = struct.Struct("<4s6H3L5H2L")  # one central directory header, 46 bytes + name/extra/comment
CENTRAL_SIG = b"PK\x01\x02"
MAX_COMMENT = 0xFFFF
# A dataset's member needs its 46-byte header, a path and a few extra fields: more than this on
# average means the directory is padded to make the parser allocate, not to describe files.
MAX_DIRECTORY_BYTES_PER_ENTRY = 1024


class ZipDirectoryError(ValueError):
    """The zip's end records or central directory are unreadable or inconsistent."""


class TooManyEntries(ValueError):
    """The zip lists more entries than allowed; `count` is what it declares (or what was counted)."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"the archive lists {count} entries, more than {limit}")
        self.count, self.limit = count, limit


@dataclass(frozen=True)
class ZipDirectory:
    entries: int  # as declared by the end record (and checked against the headers)
    size: int  # bytes of the central directory
    start: int  # where it starts in the file
    zip64: bool


def read_zip_directory(fp: BinaryIO, file_size: int) -> ZipDirectory:
    """The central directory's entry count, size and place, from the end records alone."""
    tail_len = min(file_size, EOCD.size + MAX_COMMENT)
    fp.seek(file_size - tail_len)
    tail = fp.read(tail_len)
    at = tail.rfind(EOCD_SIG)
    while at >= 0 and at + EOCD.size > len(tail):
        at = tail.rfind(EOCD_SIG, 0, at)
    if at < 0:
        raise ZipDirectoryError("no end-of-central-directory record: not a zip, or truncated")
    eocd_pos = file_size - tail_len + at
    _, _disk, _cd_disk, _disk_entries, entries, size, _offset, _comment = EOCD.unpack_from(tail, at)
    # zip64: the locator sits just before the EOCD and points at the zip64 end record. Some writers
    # (torch.save among them) add the zip64 records even when the plain EOCD's fields fit, and then
    # the directory ends before them, not at the EOCD.
    locator = b""
    if eocd_pos >= ZIP64_LOCATOR.size:
        fp.seek(eocd_pos - ZIP64_LOCATOR.size)
        locator = fp.read(ZIP64_LOCATOR.size)
    if locator[:4] != ZIP64_LOCATOR_SIG:
        if entries == 0xFFFF or size == 0xFFFFFFFF or _offset == 0xFFFFFFFF:
            raise ZipDirectoryError("a zip64 archive without its zip64 locator")
        return ZipDirectory(entries, size, eocd_pos - size, False)
    _, _, rec_offset, _ = ZIP64_LOCATOR.unpack(locator)
    rec_pos = eocd_pos - ZIP64_LOCATOR.size - ZIP64_EOCD.size  # where it is, whatever the locator says
    if rec_pos < 0:
        raise ZipDirectoryError("the zip64 end record is missing")
    fp.seek(rec_pos)
    sig, *_, entries, size, _ = ZIP64_EOCD.unpack(fp.read(ZIP64_EOCD.size))
    if sig != ZIP64_EOCD_SIG:
        raise ZipDirectoryError(f"no zip64 end record where the locator points ({rec_offset})")
    return ZipDirectory(entries, size, rec_pos - size, True)


def check_zip_directory(path: Path, max_entries: int) -> ZipDirectory:
    """Refuse a zip listing over `max_entries` entries before anything allocates per entry.

    The declared count is checked first (a fake count of a million costs nothing), then the
    directory's size against what that many entries can need, then the headers are walked and
    counted, so a directory holding more entries than its end record declares is refused too.

    Raises:
        TooManyEntries: over `max_entries`, declared or counted.
        ZipDirectoryError: the end records or headers are unreadable or disagree.
    """
    file_size = path.stat().st_size
    with path.open("rb") as fp:
        info = read_zip_directory(fp, file_size)
        if info.entries > max_entries:
            raise TooManyEntries(info.entries, max_entries)
        if info.start < 0 or info.size > info.entries * MAX_DIRECTORY_BYTES_PER_ENTRY + CENTRAL.size:
            raise ZipDirectoryError(
                f"the central directory is {info.size} bytes for {info.entries} entries: refused as padded"
            )
        fp.seek(info.start)
        counted, consumed = 0, 0
        while consumed < info.size:
            header = fp.read(CENTRAL.size)
            if len(header) < CENTRAL.size or header[:4] != CENTRAL_SIG:
                raise ZipDirectoryError(f"central directory header {counted + 1} is damaged")
            fields = CENTRAL.unpack(header)
            name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
            variable = name_len + extra_len + comment_len
            fp.seek(variable, 1)
            consumed += CENTRAL.size + variable
            counted += 1
            if counted > max_entries:
                raise TooManyEntries(counted, max_entries)
    if counted != info.entries:
        raise ZipDirectoryError(f"the end record declares {info.entries} entries, the directory holds {counted}")
    return info
