"""MXNet / insightface RecordIO (`.rec` + `.idx`), read and written without MXNet.

Layout of the `.rec` (dmlc-core's recordio): each record is

    uint32 magic 0xced7230a | uint32 lrecord | payload | zero padding to a multiple of 4

with lrecord = cflag << 29 | length (length < 2**29). cflag 0 is a whole record; a payload that holds
the magic at a 4-aligned position is split there into parts with cflag 1 (first), 2 (middle), 3
(last), and the reader puts the magic back between the parts. The `.idx` is text, one
"<record index>\\t<byte offset>" line per record.

A payload (mxnet.recordio.pack) is an IRHeader, little-endian `<IfQQ` (flag uint32, label float32,
id uint64, id2 uint64), then, when flag > 0, `flag` float32 labels, then the encoded image. In
insightface's training sets record 0 is a header whose labels are [first identity record, end]: records
1 .. first-1 are images (label = identity), records first .. end-1 are identities (labels = [start,
end) of that identity's image records).

`RecordIOReader` reads through any `read(offset, length) -> bytes` (a local file, or ranged reads
from the store): the `.idx` once, then each record by its offset, one read per record.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ml.data.dataset import DatasetError, ImageDataset

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
LENGTH_MASK = (1 << 29) - 1

ReadRange = Callable[[int, int], bytes]


class RecordIOError(DatasetError):
    """A .rec/.idx pair is malformed; the message names the record."""


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def pack(header: IRHeader, image: bytes) -> bytes:
    """mxnet.recordio.pack: an IRHeader (a label tuple sets flag to its length) and the image bytes."""
    if isinstance(header.label, tuple):
        head = struct.pack(IR_FORMAT, len(header.label), 0.0, header.id, header.id2)
        return head + struct.pack(f"<{len(header.label)}f", *header.label) + image
    return struct.pack(IR_FORMAT, 0, header.label, header.id, header.id2) + image


def unpack(payload: bytes) -> tuple[IRHeader, bytes]:
    """(header, image bytes) of a record's payload."""
    if len(payload) < IR_SIZE:
        raise RecordIOError(f"record of {len(payload)} bytes is shorter than its {IR_SIZE}-byte header")
    flag, label, id_, id2 = struct.unpack_from(IR_FORMAT, payload)
    if flag == 0:
        return IRHeader(0, label, id_, id2), payload[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if len(payload) < end:
        raise RecordIOError(f"record header says {flag} labels but the record has {len(payload)} bytes")
    labels = struct.unpack_from(f"<{flag}f", payload, IR_SIZE)
    return IRHeader(flag, tuple(labels), id_, id2), payload[end:]


def _frame(cflag: int, part: bytes) -> bytes:
    pad = (-len(part)) % 4
    return MAGIC_BYTES + struct.pack("<I", cflag << 29 | len(part)) + part + b"\0" * pad


def encode_record(payload: bytes) -> bytes:
    """The bytes dmlc's writer puts in the .rec for `payload`: split at every 4-aligned magic."""
    if len(payload) > LENGTH_MASK:
        raise RecordIOError(f"record of {len(payload)} bytes exceeds RecordIO's 2**29-1")
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i : i + 4] == MAGIC_BYTES]
    if not cuts:
        return _frame(0, payload)
    parts, start = [], 0
    for c in cuts:
        parts.append(payload[start:c])
        start = c + 4
    parts.append(payload[start:])
    flags = [1] + [2] * (len(parts) - 2) + [3]
    return b"".join(_frame(f, p) for f, p in zip(flags, parts, strict=True))


def decode_record(read: ReadRange, offset: int, where: str) -> bytes:
    """The payload of the record at `offset` (one read of header and payload, more for a multipart record)."""
    out, pos, first = bytearray(), offset, True
    while True:
        head = read(pos, 8)
        if len(head) < 8:
            raise RecordIOError(f"{where}: truncated record header at byte {pos}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordIOError(f"{where}: bad magic {magic:#010x} at byte {pos} (expected {MAGIC:#010x})")
        cflag, length = lrec >> 29, lrec & LENGTH_MASK
        part = read(pos + 8, length)
        if len(part) < length:
            raise RecordIOError(f"{where}: record at byte {pos} is truncated")
        if (cflag in (2, 3) and first) or (cflag == 1 and not first) or (cflag == 0 and not first):
            raise RecordIOError(f"{where}: multipart record out of order at byte {pos}")
        if not first:
            out += MAGIC_BYTES
        out += part
        pos += 8 + length + (-length) % 4
        first = False
        if cflag in (0, 3):
            return bytes(out)


class RecordIOWriter:
    """Writes a .rec and its .idx (for tests and conversions)."""

    def __init__(self, rec: str | Path, idx: str | Path) -> None:
        self._rec = Path(rec).open("wb")  # noqa: SIM115 (closed by close() or the with block)
        self._idx = Path(idx).open("w")  # noqa: SIM115
        self._offset = 0

    def write(self, index: int, payload: bytes) -> None:
        data = encode_record(payload)
        self._idx.write(f"{index}\t{self._offset}\n")
        self._rec.write(data)
        self._offset += len(data)

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_insightface(rec: str | Path, idx: str | Path, samples: Iterable[tuple[int, bytes]]) -> int:
    """An insightface-style .rec/.idx of (label, image bytes), labels 0..K-1 grouped by identity in
    order: header record 0, image records 1..N, identity records; the number of images."""
    items = list(samples)
    n = len(items)
    labels = [lab for lab, _ in items]
    if labels != sorted(labels):
        raise RecordIOError("samples must be grouped by label in increasing order")
    ids = sorted(set(labels))
    first_id = n + 1
    with RecordIOWriter(rec, idx) as w:
        w.write(0, pack(IRHeader(2, (float(first_id), float(first_id + len(ids))), 0, 0), b""))
        for i, (label, image) in enumerate(items, start=1):
            w.write(i, pack(IRHeader(0, float(label), i, 0), image))
        for k, lab in enumerate(ids):
            start = labels.index(lab) + 1
            w.write(first_id + k, pack(IRHeader(2, (float(start), float(start + labels.count(lab))), 0, 0), b""))
    return n


def local_reader(path: str | Path) -> ReadRange:
    """`read(offset, length)` over a local file."""
    p = Path(path)

    def read(offset: int, length: int) -> bytes:
        with p.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    return read


class RecordIOReader:
    """Records of a .rec by index, through `read` (local file or ranged store reads) and the .idx text."""

    def __init__(self, read: ReadRange, idx_text: str, name: str = "train.rec") -> None:
        self.read_range, self.name = read, name
        self.offsets: dict[int, int] = {}
        for n, line in enumerate(idx_text.splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or not all(f.isdigit() for f in fields):
                raise RecordIOError(f"{name} .idx line {n}: expected '<index>\\t<offset>', got {line!r}")
            self.offsets[int(fields[0])] = int(fields[1])
        if not self.offsets:
            raise RecordIOError(f"{name}: the .idx lists no records")

    def payload(self, index: int) -> bytes:
        if index not in self.offsets:
            raise RecordIOError(f"{self.name}: record {index} is not in the .idx")
        return decode_record(self.read_range, self.offsets[index], f"{self.name} record {index}")

    def record(self, index: int) -> tuple[IRHeader, bytes]:
        return unpack(self.payload(index))

    def records(self, indices: list[int], block_bytes: int = 4 << 20) -> Iterator[tuple[int, IRHeader, bytes]]:
        """(index, header, image) of `indices` in offset order, neighbouring records fetched together
        in reads of up to `block_bytes` (one ranged GET per block, not per record)."""
        starts = sorted(set(self.offsets.values()))
        end_of = dict(itertools.pairwise(starts))  # a record ends where the next begins
        todo = sorted(indices, key=lambda i: self.offsets[i])
        k = 0
        while k < len(todo):
            first = self.offsets[todo[k]]
            j = k
            while (
                j < len(todo)
                and self.offsets[todo[j]] in end_of
                and end_of[self.offsets[todo[j]]] - first <= block_bytes
            ):
                j += 1
            if j == k:  # the file's last record, or one larger than a block: on its own
                yield (todo[k], *unpack(self.payload(todo[k])))
                k += 1
                continue
            block = self.read_range(first, end_of[self.offsets[todo[j - 1]]] - first)

            def local(offset: int, n: int, block: bytes = block, first: int = first) -> bytes:
                return block[offset - first : offset - first + n]

            for i in todo[k:j]:
                yield (i, *unpack(decode_record(local, self.offsets[i], f"{self.name} record {i}")))
            k = j

    def samples(self) -> list[tuple[int, int]]:
        """(label, record index) of every image, in (label, index) order: from insightface's header
        record 0 when there is one, else every record."""
        head, _ = self.record(min(self.offsets))
        if min(self.offsets) == 0 and head.flag >= 2 and isinstance(head.label, tuple):
            first = int(head.label[0])
            indices = [i for i in sorted(self.offsets) if 1 <= i < first]
        else:
            indices = sorted(self.offsets)
        out = []
        for i, h, _ in self.records(indices):
            label = h.label[0] if isinstance(h.label, tuple) else h.label
            out.append((int(label), i))
        return sorted(out)


def load_recordio(
    reader: RecordIOReader, image_size: tuple[int, int], channels: int | None = None, source: str = ""
) -> ImageDataset:
    """Every image of the .rec as an ImageDataset (decoded as `load_image_folder` decodes files), labels
    renumbered 0..K-1 in label order; `channels` None: the first image's."""
    from ml.data.protocols import ProtocolError, load_images

    samples = reader.samples()
    if not samples:
        raise RecordIOError(f"{reader.name} holds no images")
    got = {i: image for i, _, image in reader.records([i for _, i in samples])}
    images = [got[i] for _, i in samples]
    try:
        x = load_images(images, image_size, channels)
    except ProtocolError as exc:
        raise RecordIOError(f"{reader.name}: {exc}") from exc
    ids = sorted({lab for lab, _ in samples})
    remap = {lab: k for k, lab in enumerate(ids)}
    labels = torch.tensor([remap[lab] for lab, _ in samples], dtype=torch.long)
    return ImageDataset(x, labels, [str(i) for i in ids], source or reader.name)
