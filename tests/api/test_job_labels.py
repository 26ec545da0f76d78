"""Names, tags and notes on jobs: set at submit, edited by PATCH, their limits, and the GET /jobs filters."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from jobs.states import JobStatus, utcnow
from tests.support.factories import add_job, key_id


def ids_of(stack: Any, **params: Any) -> list[str]:
    r = stack.client.get("/jobs", params=params)
    assert r.status_code == 200, r.text
    return [j["id"] for j in r.json()["data"]]


def test_labels_at_submit_patch_and_their_limits(stack: Any) -> None:
    c = stack.client
    body = {"kind": "probe", "name": "lr sweep / 0.1", "tags": ["sweep:lr", "v2", "sweep:lr"], "notes": "first try"}
    r = c.post("/jobs", json=body)
    assert r.status_code == 201, r.text
    job = r.json()
    assert (job["name"], job["tags"], job["notes"]) == ("lr sweep / 0.1", ["sweep:lr", "v2"], "first try")
    plain = c.post("/jobs", json={"kind": "probe"}).json()
    assert (plain["name"], plain["tags"], plain["notes"]) == (None, [], None)

    url = f"/jobs/{job['id']}"
    r = c.patch(url, json={"add_tags": ["best", "v2"], "remove_tags": ["sweep:lr", "absent"]})
    assert (r.status_code, r.json()["tags"]) == (200, ["v2", "best"])
    r = c.patch(url, json={"name": "renamed"})
    assert (r.json()["name"], r.json()["notes"], r.json()["tags"]) == ("renamed", "first try", ["v2", "best"])
    r = c.patch(url, json={"notes": None, "tags": ["a.b_c-d:9"]})
    assert (r.json()["name"], r.json()["notes"], r.json()["tags"]) == ("renamed", None, ["a.b_c-d:9"])
    assert c.get(url).json()["tags"] == ["a.b_c-d:9"]  # stored, not only answered

    def refused(method: str, path: str, payload: dict[str, Any]) -> tuple[int, str, list[Any]]:
        r = c.request(method, path, json=payload)
        err = r.json()["error"]
        return (
            r.status_code,
            err["code"],
            [d["loc"][-1] for d in err["details"]] if isinstance(err["details"], list) else [],
        )

    assert refused("POST", "/jobs", {"kind": "probe", "name": "x" * 201}) == (422, "invalid_request", ["name"])
    assert refused("POST", "/jobs", {"kind": "probe", "name": ""}) == (422, "invalid_request", ["name"])
    assert refused("POST", "/jobs", {"kind": "probe", "tags": ["has space"]}) == (422, "invalid_request", [0])
    assert refused("POST", "/jobs", {"kind": "probe", "tags": ["t" * 65]}) == (422, "invalid_request", [0])
    assert refused("POST", "/jobs", {"kind": "probe", "tags": [f"t{i}" for i in range(33)]}) == (
        422, "invalid_request", ["tags"],
    )  # fmt: skip
    assert refused("POST", "/jobs", {"kind": "probe", "notes": "n" * 10_001}) == (422, "invalid_request", ["notes"])
    assert refused("PATCH", url, {"tags": ["ok", "not/ok"]}) == (422, "invalid_request", [1])
    assert refused("PATCH", url, {"colour": "red"}) == (422, "invalid_request", ["colour"])
    c.patch(url, json={"tags": [f"t{i}" for i in range(32)]})
    r = c.patch(url, json={"add_tags": ["one-more"]})
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["details"]) == (
        422, "too_many_tags", {"maximum": 32, "tags": 33},
    )  # fmt: skip
    assert c.get(url).json()["tags"] == [f"t{i}" for i in range(32)]  # the refused edit changed nothing
    assert stack.other.patch(url, json={"name": "theirs"}).status_code == 404
    assert c.get(url).json()["name"] == "renamed"
    assert c.post("/jobs", json={"kind": "probe", "notes": "n" * 10_000}).status_code == 201


def test_list_filters_tags_name_prefix_text_and_time(stack: Any) -> None:
    owner, other = key_id(stack), key_id(stack, stack.other_key)
    base = utcnow() - timedelta(hours=1)
    rows = [  # (name, tags, notes, kind, status)
        ("resnet lr=0.1 seed 0", ["sweep:a", "lr:0.1"], "baseline run", "train_embedding", JobStatus.SUCCEEDED),
        ("resnet lr=0.1 seed 1", ["sweep:a", "lr:0.1"], None, "train_embedding", JobStatus.FAILED),
        ("resnet lr=0.3 seed 0", ["sweep:a", "lr:0.3"], "Diverged at step 40", "train_embedding", JobStatus.SUCCEEDED),
        ("invert s1", ["inv"], "100% of_pixels", "invert", JobStatus.SUCCEEDED),
        (None, [], None, "probe", JobStatus.QUEUED),
    ]
    ids = [
        add_job(stack, owner, base + timedelta(minutes=i), status, kind=kind, name=name, tags=tags, notes=notes)
        for i, (name, tags, notes, kind, status) in enumerate(rows)
    ]
    add_job(stack, other, base, name="resnet lr=0.1 seed 9", tags=["sweep:a", "lr:0.1"], notes="baseline")
    newest_first = ids[::-1]
    assert ids_of(stack) == newest_first
    assert ids_of(stack, tag="sweep:a") == [ids[2], ids[1], ids[0]]
    assert ids_of(stack, tag=["sweep:a", "lr:0.1"]) == [ids[1], ids[0]]  # every tag must match
    assert ids_of(stack, tag=["lr:0.1", "inv"]) == []
    assert ids_of(stack, tag="lr:0") == []  # tags match whole, not by prefix
    assert ids_of(stack, name_prefix="resnet lr=0.1") == [ids[1], ids[0]]
    assert ids_of(stack, name_prefix="Resnet") == []  # a prefix is case-sensitive
    r = stack.client.get("/jobs", params={"name_prefix": "resnet", "limit": 2}).json()  # pages as every filter does
    r2 = stack.client.get("/jobs", params={"name_prefix": "resnet", "limit": 2, "cursor": r["next_cursor"]}).json()
    assert ([j["id"] for j in r["data"]], [j["id"] for j in r2["data"]], r2["next_cursor"]) == (
        [ids[2], ids[1]], [ids[0]], None,
    )  # fmt: skip
    assert ids_of(stack, q="BASELINE") == [ids[0]]  # notes, any case
    assert ids_of(stack, q="diverged") == [ids[2]]
    assert ids_of(stack, q="seed 0") == [ids[2], ids[0]]  # name
    assert ids_of(stack, q="invert") == [ids[3]]  # kind and name
    assert ids_of(stack, q="prob") == [ids[4]]  # kind only
    assert ids_of(stack, q="100%") == [ids[3]]  # LIKE wildcards are literal
    assert ids_of(stack, q="0%") == [ids[3]]
    assert ids_of(stack, q="f_p") == [ids[3]]
    assert ids_of(stack, q="r_n") == []  # `_` is not "any character"
    assert ids_of(stack, q="seed", status="succeeded", kind="train_embedding") == [ids[2], ids[0]]
    after, before = (base + timedelta(minutes=1)).isoformat(), (base + timedelta(minutes=3, seconds=1)).isoformat()
    assert ids_of(stack, created_after=after, created_before=before) == [ids[3], ids[2]]  # strictly after
    assert ids_of(stack, created_after=after + "+00:00", created_before=before + "+00:00") == [ids[3], ids[2]]
    assert ids_of(stack, created_before=(base + timedelta(minutes=1)).isoformat() + "+01:00") == []  # 1 h earlier

    # Filters and keyset pages together: two at a time through the sweep's three.
    r = stack.client.get("/jobs", params={"tag": "sweep:a", "limit": 2}).json()
    assert [j["id"] for j in r["data"]] == [ids[2], ids[1]]
    r = stack.client.get("/jobs", params={"tag": "sweep:a", "limit": 2, "cursor": r["next_cursor"]}).json()
    assert ([j["id"] for j in r["data"]], r["next_cursor"]) == ([ids[0]], None)

    r = stack.client.get("/jobs", params={"tag": [f"t{i}" for i in range(33)]})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "too_many_tags")
    assert stack.client.get("/jobs", params={"q": "x" * 201}).status_code == 422
    assert stack.client.get("/jobs", params={"created_after": "yesterday"}).status_code == 422
    r = stack.client.get("/jobs", params={"created_before": "0001-01-01T00:00:00+01:00"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_time")
    assert [j["name"] for j in stack.other.get("/jobs", params={"tag": "sweep:a"}).json()["data"]] == [
        "resnet lr=0.1 seed 9"
    ]


def test_a_broad_name_prefix_pages_the_same_as_a_selective_one(services_stack: Any) -> None:
    """At or over PREFIX_PROBE matches the list walks the created_at index instead of sorting the matches."""
    from sqlalchemy import insert

    from api.routes.job_labels import PREFIX_PROBE
    from jobs.models import Job
    from tests.support.factories import job_row

    stack = services_stack
    owner = key_id(stack)
    base = utcnow() - timedelta(days=1)
    rows = [job_row(owner, name=f"bulk {i}", created_at=base + timedelta(seconds=i)) for i in range(PREFIX_PROBE)]
    few = [job_row(owner, name=f"rare {i}", created_at=base + timedelta(seconds=i, milliseconds=500)) for i in range(3)]
    cols = ("id", "kind", "params", "status", "queue", "owner_id", "name", "created_at", "updated_at", "max_attempts")
    with stack.session() as s:
        s.execute(insert(Job), [{c: getattr(r, c) for c in cols} | {"tags": []} for r in rows + few])
    newest = [r.id for r in rows[::-1]]
    r = stack.client.get("/jobs", params={"name_prefix": "bulk", "limit": 50}).json()
    r2 = stack.client.get("/jobs", params={"name_prefix": "bulk", "limit": 50, "cursor": r["next_cursor"]}).json()
    assert [j["id"] for j in r["data"] + r2["data"]] == newest[:100]
    assert ids_of(stack, name_prefix="rare") == [r.id for r in few[::-1]]
    assert ids_of(stack, name_prefix="bulk 4999") == [rows[4999].id]
