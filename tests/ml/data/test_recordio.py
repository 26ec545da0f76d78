"""RecordIO without MXNet: the byte layout against the format, multipart records, insightface's
header record, and a .rec of ORL loading to exactly the tensors of the same images as a folder."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from ml.data.folders import list_identities, load_image_folder
from ml.data.recordio import (
    MAGIC,
    IRHeader,
    RecordIOError,
    RecordIOReader,
    RecordIOWriter,
    encode_record,
    load_recordio,
    local_reader,
    pack,
    unpack,
    write_insightface,
)


def test_record_bytes_follow_the_format(tmp_path: Path) -> None:
    payload = pack(IRHeader(0, 7.0, 3, 0), b"JPEGDATA!")  # 24 + 9 = 33 bytes
    with RecordIOWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        w.write(5, payload)
        w.write(6, b"abcd")
    raw = (tmp_path / "a.rec").read_bytes()
    magic, lrec = struct.unpack_from("<II", raw)
    assert (magic, lrec >> 29, lrec & (2**29 - 1)) == (0xCED7230A, 0, 33)
    flag, label, id_, id2 = struct.unpack_from("<IfQQ", raw, 8)
    assert (flag, label, id_, id2) == (0, 7.0, 3, 0)
    assert raw[8 + 24 : 8 + 33] == b"JPEGDATA!" and raw[8 + 33 : 8 + 36] == b"\0\0\0"  # padded to 4
    assert struct.unpack_from("<II", raw, 44) == (MAGIC, 4) and len(raw) == 44 + 12
    assert (tmp_path / "a.idx").read_text() == "5\t0\n6\t44\n"
    reader = RecordIOReader(local_reader(tmp_path / "a.rec"), (tmp_path / "a.idx").read_text())
    assert reader.record(5) == (IRHeader(0, 7.0, 3, 0), b"JPEGDATA!")
    assert reader.payload(6) == b"abcd"


def test_a_payload_holding_the_magic_is_split_and_joined_back() -> None:
    magic = struct.pack("<I", MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + b"ij"
    data = encode_record(payload)
    heads = [struct.unpack_from("<II", data, o) for o in (0, 12, 24)]
    assert [(m, lr >> 29, lr & 0xFFFF) for m, lr in heads] == [(MAGIC, 1, 4), (MAGIC, 2, 4), (MAGIC, 3, 2)]

    def read(offset: int, n: int) -> bytes:
        return data[offset : offset + n]

    assert RecordIOReader(read, "0\t0\n").payload(0) == payload


def test_label_arrays_and_bad_records() -> None:
    assert unpack(pack(IRHeader(2, (1.0, 4.0), 0, 0), b"x")) == (IRHeader(2, (1.0, 4.0), 0, 0), b"x")
    bad = b"\x00" * 16
    with pytest.raises(RecordIOError, match="bad magic 0x00000000 at byte 0"):
        RecordIOReader(lambda o, n: bad[o : o + n], "0\t0\n", "x.rec").payload(0)
    with pytest.raises(RecordIOError, match="line 1"):
        RecordIOReader(lambda o, n: b"", "zero 0\n")


def test_an_insightface_rec_of_orl_loads_as_the_same_images_as_the_folder(orl_dir: Path, tmp_path: Path) -> None:
    people = list_identities(orl_dir)[:6]
    samples = [(label, path.read_bytes()) for label, (_, paths) in enumerate(people) for path in paths]
    assert write_insightface(tmp_path / "train.rec", tmp_path / "train.idx", samples) == 60
    reader = RecordIOReader(local_reader(tmp_path / "train.rec"), (tmp_path / "train.idx").read_text())
    head, _ = reader.record(0)
    assert head == IRHeader(2, (61.0, 67.0), 0, 0)
    assert reader.record(62)[0].label == (11.0, 21.0)  # identity 1: image records 11..20
    assert reader.samples() == [(i // 10, i + 1) for i in range(60)]
    data = load_recordio(reader, (32, 32), 1)
    folder = tmp_path / "folder"
    for name, paths in people:
        (folder / name).mkdir(parents=True)
        for p in paths:
            (folder / name / p.name).write_bytes(p.read_bytes())
    ref = load_image_folder(folder, image_size=32, channels="grey")
    assert torch.equal(data.images, ref.images) and torch.equal(data.labels, ref.labels)
    assert data.class_names == [str(i) for i in range(6)]


def test_records_come_in_block_reads_with_the_same_bytes(tmp_path: Path) -> None:
    samples = [(i // 4, bytes([i]) * (100 + i)) for i in range(20)]
    write_insightface(tmp_path / "t.rec", tmp_path / "t.idx", samples)
    read = local_reader(tmp_path / "t.rec")
    calls: list[tuple[int, int]] = []

    def counted(offset: int, n: int) -> bytes:
        calls.append((offset, n))
        return read(offset, n)

    reader = RecordIOReader(counted, (tmp_path / "t.idx").read_text())
    got = [(i, image) for i, _, image in reader.records(list(range(1, 21)), block_bytes=1000)]
    assert got == [(i + 1, data) for i, (_, data) in enumerate(samples)]
    # Record 0 (header) is 40 bytes; records of 140-160 bytes go 7, 6, 6 to a block of at most 1000,
    # the last record (whose end the .idx does not give: the identity records follow) in a block too.
    assert calls == [(40, 956), (996, 856), (1852, 896), (2748, 152)]
