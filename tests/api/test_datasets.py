"""Dataset uploads: layouts, and every hostile archive refused with 400/413 and nothing stored."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from jobs.models import Dataset
from tests.support.factories import bomb_png, client_for, make_tar, make_zip, orl_files, tiny_weights, upload


def nothing_stored(stack: Any) -> None:
    assert stack.store.list("datasets") == []
    with stack.session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0


def refused(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert err["code"] == code, err
    return err


def test_upload_identities_layout_with_real_faces(stack: Any, orl_dir: Path) -> None:
    faces = orl_files(orl_dir)
    members = {f"orl/{k}": v for k, v in faces.items()}
    members |= {"orl/README.txt": b"ORL faces", "__MACOSX/orl/._1.pgm": b"junk", "orl/s1/.DS_Store": b"junk"}
    r = upload(stack.client, "/datasets", "orl.zip", make_zip(members))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["name"], ds["layout"], ds["num_files"], ds["num_identities"]) == ("orl", "identities", 9, 3)
    assert ds["size_bytes"] == sum(len(v) for v in faces.values()) == 9 * 10_318
    assert ds["ref"] == f"dataset:{ds['id']}"
    assert sorted(ds["skipped"]) == ["__MACOSX/orl/._1.pgm", "orl/README.txt", "orl/s1/.DS_Store"]

    prefix = f"datasets/{ds['id']}"
    assert stack.store.list(prefix) == sorted(f"{prefix}/{k}" for k in faces)
    assert stack.store.get_bytes(f"{prefix}/s2/3.pgm") == faces["s2/3.pgm"]
    with Image.open(io.BytesIO(stack.store.get_bytes(f"{prefix}/s3/1.pgm"))) as im:
        assert (im.size, im.mode) == ((92, 112), "L")
    with stack.session() as s:
        row = s.get(Dataset, ds["id"])
        assert row is not None and row.key_prefix == prefix and sorted(row.files["keys"]) == sorted(faces)
    assert stack.client.get(f"/datasets/{ds['id']}").json() == {k: v for k, v in ds.items() if k != "skipped"}
    assert [d["id"] for d in stack.client.get("/datasets").json()["data"]] == [ds["id"]]


def test_upload_flat_tar_gz(stack: Any, orl_dir: Path) -> None:
    faces = {f"face_{i}.pgm": (orl_dir / "s4" / f"{i}.pgm").read_bytes() for i in (1, 2, 3, 4)}
    r = upload(stack.client, "/datasets", "flat.tar.gz", make_tar(faces), name="four faces")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["name"], ds["layout"], ds["num_files"], ds["num_identities"], ds["skipped"]) == (
        "four faces",
        "flat",
        4,
        0,
        [],
    )
    assert stack.store.list(f"datasets/{ds['id']}") == sorted(f"datasets/{ds['id']}/{k}" for k in faces)


@pytest.mark.security
def test_hostile_archives_are_refused_and_nothing_is_stored(stack: Any, orl_dir: Path) -> None:
    face = (orl_dir / "s1" / "1.pgm").read_bytes()
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(png, format="PNG")
    good = {"s1/1.pgm": face, "s2/1.pgm": face}
    c = stack.client

    err = refused(
        upload(c, "/datasets", "slip.zip", make_zip({**good, "../evil.png": png.getvalue()})), 400, "unsafe_path"
    )
    assert err["details"]["members"] == [{"member": "../evil.png", "reason": "'..' in the path"}]
    err = refused(
        upload(c, "/datasets", "abs.zip", make_zip({**good, "/etc/evil.png": png.getvalue()})), 400, "unsafe_path"
    )
    assert err["details"]["members"] == [{"member": "/etc/evil.png", "reason": "absolute path"}]
    tar = make_tar(good, symlinks={"s1/2.png": "/etc/passwd"}, mode="w")
    err = refused(upload(c, "/datasets", "links.tar", tar), 400, "link_member")
    assert err["details"]["members"] == [{"member": "s1/2.png", "reason": "symbolic or hard link"}]

    bomb = bomb_png()
    assert len(bomb) < 100_000  # 400 megapixels in a few tens of kB
    err = refused(upload(c, "/datasets", "bomb.zip", make_zip({**good, "s3/1.png": bomb})), 400, "invalid_images")
    assert err["details"]["count"] == 1
    assert err["details"]["members"][0]["member"] == "s3/1.png"
    assert err["details"]["members"][0]["reason"].startswith("decompression bomb")
    corrupt = {**good, "s3/1.png": b"\x89PNG\r\n\x1a\n not really", "s3/2.pgm": face[: len(face) // 2]}
    err = refused(upload(c, "/datasets", "bad.zip", make_zip(corrupt)), 400, "invalid_images")
    assert sorted(m["member"] for m in err["details"]["members"]) == ["s3/1.png", "s3/2.pgm"]
    assert all(m["reason"].startswith("not a decodable image") for m in err["details"]["members"])

    refused(upload(c, "/datasets", "notes.zip", make_zip({"a.txt": b"hi"})), 400, "no_images")
    refused(upload(c, "/datasets", "mixed.zip", make_zip({"a.pgm": face, "s1/b.pgm": face})), 400, "mixed_layout")
    refused(upload(c, "/datasets", "junk.bin", b"\x00" * 100), 400, "unsupported_archive")
    refused(upload(c, "/datasets", "broken.zip", b"PK\x03\x04 truncated"), 400, "corrupt_archive")
    refused(c.post("/datasets", files={"other": ("x.zip", b"x")}), 400, "unexpected_file")
    refused(c.post("/datasets", files={"name": (None, "no file")}), 422, "missing_file")
    refused(c.post("/datasets", json={"file": "x"}), 415, "multipart_required")
    nothing_stored(stack)


@pytest.mark.security
def test_upload_limits(stack: Any, orl_dir: Path) -> None:
    faces = orl_files(orl_dir, ids=("s1", "s2"), per_id=3)
    archive = make_zip(faces)
    small = client_for(stack, max_upload_bytes=len(archive) - 1)
    err = refused(upload(small, "/datasets", "faces.zip", archive), 413, "payload_too_large")
    assert err["details"] == {"limit_bytes": len(archive) - 1}

    # Without a Content-Length (chunked), the limit is enforced while the body streams in.
    boundary = "fjboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.zip"\r\n\r\n'.encode()
    chunks = [head, *(archive[i : i + 4096] for i in range(0, len(archive), 4096)), f"\r\n--{boundary}--\r\n".encode()]
    r = small.post(
        "/datasets", content=iter(chunks), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    refused(r, 413, "payload_too_large")

    refused(upload(client_for(stack, max_archive_members=5), "/datasets", "f.zip", archive), 400, "too_many_members")
    limited = client_for(stack, max_archive_uncompressed_bytes=5 * 10_318)
    refused(upload(limited, "/datasets", "f.zip", archive), 400, "archive_too_large")
    tiny = client_for(stack, max_image_pixels=92 * 112 - 1)
    err = refused(upload(tiny, "/datasets", "f.zip", archive), 400, "invalid_images")
    assert err["details"]["count"] == 6
    nothing_stored(stack)
    assert upload(client_for(stack, max_upload_bytes=len(archive)), "/datasets", "f.zip", archive).status_code == 201


def test_store_failure_answers_503_and_keeps_nothing(stack: Any, orl_dir: Path) -> None:
    archive = make_zip(orl_files(orl_dir, ids=("s7",), per_id=2) | orl_files(orl_dir, ids=("s8",), per_id=2))
    if stack.name == "services":
        client = client_for(stack, s3_endpoint="127.0.0.1:1", store_retries=0)
    else:
        client = stack.client
        root = stack.store.root  # a local folder: block its prefixes with files where folders must go
        for prefix in ("datasets", "models"):
            (root / prefix).write_bytes(b"not a folder")
    refused(upload(client, "/datasets", "faces.zip", archive), 503, "store_unavailable")
    refused(upload(client, "/models", "w.pt", tiny_weights(), kind="facenet"), 503, "store_unavailable")
    with stack.session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0
    if stack.name == "embedded":
        for prefix in ("datasets", "models"):
            (root / prefix).unlink()
        nothing_stored(stack)
        assert stack.store.list("models") == []
