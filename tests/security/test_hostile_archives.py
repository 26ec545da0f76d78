"""Archives built to cost the API memory or disk are refused from their headers, with bounded memory.

The API runs as a real process (`python -m stack.cli api` on an embedded home); its peak resident
memory (VmHWM in /proc/PID/status) and bytes written (/proc/PID/io) are read around each upload.
Measured before the fix: a zip whose central directory lists 1,000,000 entries (47 MB) cost
+420 MiB while `zipfile` parsed it; a 4 MB tar.gz holding a 4 GiB member was inflated (and
written to disk) in full before the refusal.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from jobs.models import Dataset, Model
from tests.support.factories import make_tar, make_zip, orl_files
from tests.support.jobs import wait_http
from tests.support.s3server import free_ports
from tests.support.services import REPO, Stack

pytestmark = pytest.mark.security
MIB = 1024 * 1024
MEMORY_BOUND = 100 * MIB  # peak RSS growth allowed for any hostile upload
CENTRAL = struct.Struct("<4s6H3L5H2L")
EOCD = struct.Struct("<4s4H2LH")


class ServedApi:
    """The API as its own process on the embedded stack's database and store."""

    def __init__(self, stack: Stack, home: Path) -> None:
        (self.port,) = free_ports(1)
        env = {**os.environ, **stack.env, "PYTHONPATH": str(REPO), "FACEJOBS_API_PORT": str(self.port)}
        self.log = (home / "api.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", "api", "--port", str(self.port)], cwd=REPO, env=env,
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(f"{self.url}/healthz", timeout=90)
        self.client = httpx.Client(base_url=self.url, headers={"X-API-Key": stack.key}, timeout=120)

    def status(self, field: str) -> int:
        """A `kB` field of /proc/PID/status (VmHWM, VmRSS), in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")

    def written(self) -> int:
        """Bytes this process has written (files and sockets), from /proc/PID/io."""
        for line in Path(f"/proc/{self.proc.pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
        raise AssertionError("no wchar in /proc/PID/io")

    def upload(self, filename: str, data: bytes) -> httpx.Response:
        return self.client.post("/datasets", files={"file": (filename, data, "application/octet-stream")})

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture
def api(embedded_stack: Stack, tmp_path: Path, orl_dir: Path) -> Iterator[ServedApi]:
    served = ServedApi(embedded_stack, tmp_path)
    try:
        # Warm up every code path a refusal takes (multipart, zip, tar.gz, Pillow), so the peak
        # measured afterwards is what the hostile archive adds, not the first import of a module.
        faces = orl_files(orl_dir, ids=("s1", "s2"), per_id=2)
        assert served.upload("warm.zip", make_zip(faces)).status_code == 201
        assert served.upload("warm.tar.gz", make_tar(faces)).status_code == 201
        yield served
    finally:
        served.stop()


def refused(resp: httpx.Response, code: str) -> dict[str, object]:
    assert resp.status_code == 400, resp.text
    err: dict[str, object] = resp.json()["error"]
    assert err["code"] == code, err
    return err


def _zip64_end(cd_offset: int, cd_size: int, entries: int) -> bytes:
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, cd_offset + cd_size, 1)
    return record + locator + EOCD.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)


def zip_with_fake_count(entries: int, png: bytes) -> bytes:
    """A real one-member zip whose zip64 end record claims `entries` entries."""
    real = make_zip({"a.png": png})
    at = real.rindex(b"PK\x05\x06")
    *_, cd_size, cd_offset, _ = EOCD.unpack_from(real, at)
    return real[:at] + _zip64_end(cd_offset, cd_size, entries)


def central_directory(entries: int) -> bytes:
    """`entries` central directory headers, each for a one-letter name (47 bytes apiece)."""
    header = CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0) + b"a"
    return header * entries


def tar_gz_of_zeros(member_bytes: int) -> bytes:
    """A gzip'd tar holding one `member_bytes` member of zeros, made without compressing them all.

    Deflate after a full flush starts from an empty window, so each MiB of zeros compresses to the
    same bytes: one is compressed and repeated. The gzip trailer's CRC is computed over all of it.
    """
    info = tarfile.TarInfo("zeros.png")
    info.size = member_bytes
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff", deflate.compress(header), deflate.flush(zlib.Z_FULL_FLUSH)]
    mib = bytes(MIB)
    block = deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH) == block  # the repetition is exact
    assert member_bytes % MIB == 0
    parts += [block] * (member_bytes // MIB)  # the check's output was not kept: every MiB is here
    end = bytes(1024)  # two zero blocks: the end of the tar
    parts += [deflate.compress(end), deflate.flush(zlib.Z_FINISH)]
    crc = zlib.crc32(header)
    for _ in range(member_bytes // MIB):
        crc = zlib.crc32(mib, crc)
    crc = zlib.crc32(end, crc)
    total = len(header) + member_bytes + len(end)
    return b"".join(parts) + struct.pack("<LL", crc, total & 0xFFFFFFFF)


def test_zip_entry_counts_are_read_before_the_directory_is_parsed(
    api: ServedApi, embedded_stack: Stack, orl_dir: Path
) -> None:
    png = (orl_dir / "s1" / "1.pgm").read_bytes()
    fake = zip_with_fake_count(1_000_000, png)
    assert zipfile.ZipFile(io.BytesIO(fake)).namelist() == ["a.png"]  # zipfile itself ignores the count
    peak = api.status("VmHWM")

    err = refused(api.upload("fake-count.zip", fake), "too_many_members")
    assert err["message"] == "the archive has more than 200000 members (1000000)"

    # The case: a directory that really lists 1,000,000 entries (47 MB), counted honestly.
    cd = central_directory(1_000_000)
    honest = cd + _zip64_end(0, len(cd), 1_000_000)
    err = refused(api.upload("million.zip", honest), "too_many_members")
    assert err["details"] == {"limit": 200_000}

    # The same directory behind an end record that claims 5 entries: refused as padded, not parsed.
    lying = cd + EOCD.pack(b"PK\x05\x06", 0, 0, 5, 5, len(cd), 0, 0)
    err = refused(api.upload("lying.zip", lying), "corrupt_archive")
    assert (
        err["message"]
        == f"the archive cannot be read: the central directory is {len(cd)} bytes for 5 entries: refused as padded"
    )

    # A model upload is a zip too (TorchScript, torch weights): the same directory is refused there.
    for kind in ("generator", "backbone", "facenet"):
        resp = api.client.post(
            "/models", files={"file": ("million.pt", honest, "application/octet-stream")}, data={"kind": kind}
        )
        err = refused(resp, "too_many_members")
        assert err["details"] == {"limit": 100_000}

    grown = api.status("VmHWM") - peak
    assert grown < MEMORY_BOUND, f"the API's peak RSS grew by {grown / MIB:.0f} MiB"
    with embedded_stack.session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 2  # the two warm-up uploads only
        assert s.scalar(select(func.count()).select_from(Model)) == 0


def test_a_tar_gz_bomb_is_refused_from_its_header_before_it_is_inflated(api: ServedApi, embedded_stack: Stack) -> None:
    bomb = tar_gz_of_zeros(4 * 1024 * MIB)
    assert len(bomb) < 5 * MIB
    with tarfile.open(fileobj=io.BytesIO(bomb), mode="r:gz") as tar:
        first = tar.next()
        assert first is not None and (first.name, first.size) == ("zeros.png", 4 * 1024 * MIB)
    peak, written = api.status("VmHWM"), api.written()

    err = refused(api.upload("bomb.tar.gz", bomb), "archive_too_large")
    assert err["details"] == {"limit_bytes": 100 * len(bomb)}  # max_archive_ratio 100 x its size

    grown = api.status("VmHWM") - peak
    assert grown < MEMORY_BOUND, f"the API's peak RSS grew by {grown / MIB:.0f} MiB"
    # The upload itself is written once (5 MB); the 4 GiB member never is.
    assert api.written() - written < 3 * len(bomb) + MIB
    with embedded_stack.session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 2  # the two warm-up uploads only
    assert len(embedded_stack.store.list("datasets")) == 8  # their four faces each
