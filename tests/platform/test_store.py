"""The artifact store on a real S3 server (SeaweedFS through the minio SDK) and on a local folder."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from jobs.errors import TransientError
from jobs.settings import Settings
from jobs.store import InvalidKey, LocalStore, ObjectMissing, S3Store, Store, check_key, join_key
from tests.support import wait_for
from tests.support.s3server import S3Server


def s3_settings(server: S3Server, **extra: object) -> Settings:
    return Settings(
        store_backend="s3",
        s3_endpoint=server.endpoint,
        s3_access_key=server.access_key,
        s3_secret_key=server.secret_key,
        s3_bucket=f"fj-{secrets.token_hex(4)}",
        store_retries=1,
        store_backoff_seconds=0.05,
        **extra,
    )


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "s3":
        yield S3Store(s3_settings(request.getfixturevalue("s3_server")))
    else:
        yield LocalStore(tmp_path / "artifacts")


def test_round_trip_list_and_delete(store: Store, tmp_path: Path) -> None:
    data = secrets.token_bytes(3 * 1024 * 1024 + 17)
    obj = store.put_bytes("jobs/a/big.bin", data)
    assert (obj.size, obj.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    src = tmp_path / "src.txt"
    src.write_text("hello")
    assert store.put_file("jobs/a/images/x.txt", src, "text/plain").size == 5
    store.put_bytes("jobs/ab/other.bin", b"1")  # a sibling prefix must not leak into the listing
    assert store.list("jobs/a") == ["jobs/a/big.bin", "jobs/a/images/x.txt"]
    assert store.get_bytes("jobs/a/big.bin") == data
    assert b"".join(store.open_stream("jobs/a/big.bin")) == data
    assert store.download("jobs/a/images/x.txt", tmp_path / "out" / "x.txt").read_text() == "hello"
    assert store.size("jobs/a/big.bin") == len(data)
    store.put_bytes("jobs/a/big.bin", b"v2")  # overwritten in place, as previews are
    assert store.get_bytes("jobs/a/big.bin") == b"v2"
    store.delete("jobs/a/big.bin")
    assert not store.exists("jobs/a/big.bin")
    with pytest.raises(ObjectMissing):
        store.get_bytes("jobs/a/big.bin")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "a/../../b", "a/./b", "a//b", "a\\b", "a/b/", "..", "a/\x00"])
def test_keys_that_escape_are_refused(store: Store, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")


def test_join_key_keeps_names_inside_their_prefix() -> None:
    assert join_key("jobs/1", "images/0_1.png") == "jobs/1/images/0_1.png"
    with pytest.raises(InvalidKey):
        join_key("jobs/1", "../2/backbone.pt")
    assert check_key("datasets/x/s1/1.pgm") == "datasets/x/s1/1.pgm"


def test_presigned_urls_work_then_expire(s3_server: S3Server) -> None:
    store = S3Store(s3_settings(s3_server))
    store.put_bytes("jobs/p/probe.json", b'{"ok": true}', "application/json")
    url = store.presigned_get("jobs/p/probe.json", 2, filename="probe.json")
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["2"]
    resp = httpx.get(url)
    assert (resp.status_code, resp.content) == (200, b'{"ok": true}')
    assert 'filename="probe.json"' in resp.headers["content-disposition"]
    wait_for(lambda: httpx.get(url).status_code == 403, 30, "the 2 s link to expire", poll=0.2)


def test_presigned_urls_use_the_public_endpoint(s3_server: S3Server) -> None:
    port = s3_server.endpoint.rsplit(":", 1)[1]
    store = S3Store(s3_settings(s3_server, s3_public_endpoint=f"http://localhost:{port}"))
    store.put_bytes("jobs/p/a.txt", b"a")
    url = store.presigned_get("jobs/p/a.txt", 60)
    assert url.startswith(f"http://localhost:{port}/")
    assert httpx.get(url).content == b"a"


def test_unreachable_s3_is_a_transient_error_after_retries() -> None:
    settings = Settings(store_backend="s3", s3_endpoint="127.0.0.1:9", store_retries=2, store_backoff_seconds=0.01)
    store = S3Store(settings)
    with pytest.raises(TransientError, match="object store unavailable"):
        store.put_bytes("jobs/x/y", b"1")
