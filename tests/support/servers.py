"""Servers a fault test owns and may break: a Redis, a restartable S3 server and a TCP proxy.

The machine's shared PostgreSQL and Redis are never stopped: a test that needs a broker to crash
starts its own `redis-server`, and one that needs the database to go away puts a proxy of its own in
front of it and cuts that.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support.s3server import PORT_FLAGS, free_ports, weed_binary
from tests.support.services import Stack


def wait_port(port: int, up: bool, timeout: float = 30.0) -> None:
    """Wait until 127.0.0.1:`port` accepts connections (`up`) or refuses them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not go {'up' if up else 'down'} within {timeout}s")


def _kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(15)


class RedisServer:
    """A `redis-server` of this test's own, without persistence, that can crash and come back."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary, self.workdir = binary, workdir
        (self.port,) = free_ports(1)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(self.workdir)]  # fmt: skip
        log = (self.workdir / f"redis-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        wait_port(self.port, up=True)

    def crash(self) -> None:
        """SIGKILL: everything in memory (queued messages, unacked ones) is gone."""
        if self.proc is not None:
            _kill_group(self.proc)
        wait_port(self.port, up=False)


class RestartableS3:
    """SeaweedFS on fixed ports and one data folder, so a stopped server comes back as the same server."""

    access_key = "facejobs"
    secret_key = "facejobs-secret-key"

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['s3.port']}"

    def start(self, timeout: float = 60.0) -> None:
        args = [
            weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]  # fmt: skip
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log = (self.data_dir / f"weed-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {log.name}")
            # weed moves to another port silently when one is busy: it must answer on the one we chose, and
            # its gateway answers before the filer and volume behind it can: wait for a real write and read.
            if self._round_trip():
                return
            time.sleep(0.2)
        raise RuntimeError(f"S3 server did not come back on {self.endpoint} within {timeout}s")

    def _round_trip(self) -> bool:
        import io

        from minio import Minio
        from minio.error import S3Error
        from urllib3 import PoolManager, Retry, Timeout
        from urllib3.exceptions import HTTPError

        http = PoolManager(timeout=Timeout(connect=1, read=5), retries=Retry(total=0))
        client = Minio(self.endpoint, self.access_key, self.secret_key, secure=False, http_client=http)
        try:
            if not client.bucket_exists("readiness"):
                client.make_bucket("readiness")
            client.put_object("readiness", "probe", io.BytesIO(b"ok"), 2)
            resp = client.get_object("readiness", "probe")
            try:
                return resp.read() == b"ok"
            finally:
                resp.close()
                resp.release_conn()
        except (S3Error, HTTPError, OSError, ValueError):
            return False
        finally:
            http.clear()

    def stop(self) -> None:
        """SIGKILL the whole server (master, volume, filer, S3 gateway): connections are refused at once."""
        if self.proc is not None:
            _kill_group(self.proc)
        wait_port(self.ports["s3.port"], up=False)


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`; `cut()` drops every connection and refuses new ones."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        (self.port,) = free_ports(1)
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0  # connections clients opened, forwarded or not (a refused upstream is still a try)

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        wait_port(self.port, up=False)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            with self._lock:
                self.accepted += 1
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _forward(self, src: socket.socket, dst: socket.socket) -> None:
        """What the client sends (a subclass may look at it first)."""
        self._pipe(src, dst)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


class TripwireProxy(TcpProxy):
    """A `TcpProxy` that calls `on_trip()` the first time a client sends `marker`, instead of forwarding it.

    In front of S3 with the marker `PUT /<bucket>/<key>`, it catches the moment one object's upload
    starts: `on_trip` takes the server down, and the request that tripped it never reaches the server,
    so the upload is cut after it began and before anything was stored, every time.
    """

    def __init__(self, target_port: int, marker: bytes, on_trip: Callable[[], None]) -> None:
        super().__init__(target_port)
        self.marker, self.on_trip = marker, on_trip
        self.tripped = threading.Event()
        self._trip_lock = threading.Lock()

    def _forward(self, src: socket.socket, dst: socket.socket) -> None:
        tail = b""  # the end of the previous chunk: the marker may straddle two reads
        try:
            while data := src.recv(65536):
                if self.marker in tail + data:
                    with self._trip_lock:
                        if not self.tripped.is_set():
                            self.on_trip()
                            self.tripped.set()
                    for conn in (src, dst):
                        with contextlib.suppress(OSError):
                            conn.shutdown(socket.SHUT_RDWR)
                    return
                dst.sendall(data)
                tail = data[-len(self.marker) :]
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@dataclass
class RedisStack:
    stack: Stack
    redis: RedisServer


@dataclass
class S3Stack:
    stack: Stack
    s3: RestartableS3
