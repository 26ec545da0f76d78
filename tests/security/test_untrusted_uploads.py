"""Caller files that reach a worker are data: uploads are checked at `POST /models` (400, nothing
stored), and objects written straight into the store fail their job with the reason, through a
real worker, while the payload's canary file stays absent (issue 11.1).
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import update

from jobs.models import Job
from jobs.states import JobStatus
from jobs.weights_file import WeightsFileError, check_weights_file
from tests.security.payloads import Payload, saved, tiny_model, with_payload
from tests.support.factories import add_artifact, add_job, key_id, upload
from tests.support.jobs import submit
from tests.support.services import Stack

pytestmark = pytest.mark.security
UNSAFE = "was refused: its pickle names posix.system, which is not tensor data"


def refused(resp: Any, code: str, message: str) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == code, error
    assert error["message"].startswith(message), error["message"]


def test_model_uploads_that_are_not_plain_weights_get_400_and_nothing_is_stored(stack: Stack, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    paths = tiny_model(tmp_path / "model")
    good = paths["backbone.pt"].read_bytes()
    for protocol, legacy in ((2, False), (4, False), (2, True)):
        evil = with_payload(paths["backbone.pt"], canary, protocol, legacy)
        refused(upload(stack.client, "/models", "backbone.pt", evil, kind="backbone"), "unsafe_weights",
                f"backbone.pt {UNSAFE}")  # fmt: skip
        refused(upload(stack.client, "/models", "vggface2.pt", evil, kind="facenet"), "unsafe_weights",
                f"vggface2.pt {UNSAFE}")  # fmt: skip
    facenet_evil = saved({"conv.weight": torch.zeros(2), "logits.weight": Payload(canary)})
    refused(upload(stack.client, "/models", "w.pt", facenet_evil, kind="facenet"), "unsafe_weights", f"w.pt {UNSAFE}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "ts.pt"))
    refused(upload(stack.client, "/models", "ts.pt", (tmp_path / "ts.pt").read_bytes(), kind="facenet"),
            "unsafe_weights", "ts.pt is a TorchScript archive (a program), not weights")  # fmt: skip
    state = saved(torch.nn.Linear(2, 2).state_dict())
    refused(upload(stack.client, "/models", "backbone.pt", state, kind="backbone"), "invalid_weights",
            "backbone.pt is not a facejobs backbone file")  # fmt: skip
    refused(upload(stack.client, "/models", "w.pt", saved({"w": [1.0]}), kind="facenet"), "invalid_weights",
            "w.pt: the state dict['w'] is a list, not a tensor")  # fmt: skip
    refused(upload(stack.client, "/models", "w.pt", b"PK\x03\x04 not really", kind="facenet"), "invalid_weights",
            "w.pt is not a torch file")  # fmt: skip
    header = torch.load(paths["backbone.pt"], weights_only=True)
    header["image_size"] = [16, 10**6]
    refused(upload(stack.client, "/models", "backbone.pt", saved(header), kind="backbone"), "invalid_weights",
            "backbone.pt: image_size must be [height, width], each 1..1024")  # fmt: skip
    assert not canary.exists()
    assert stack.store.list("models") == []
    assert stack.client.get("/models").json()["data"] == []

    ok = upload(stack.client, "/models", "backbone.pt", good, kind="backbone")
    assert (ok.status_code, ok.json()["kind"], ok.json()["size"]) == (201, "backbone", len(good)), ok.text
    # torch's format before 1.6, as facenet-pytorch's published weights are: read as data too.
    legacy = upload(stack.client, "/models", "vggface2.pt", saved({"w": torch.zeros(2)}, legacy=True), kind="facenet")
    assert legacy.status_code == 201, legacy.text
    assert sorted(stack.store.list("models")) == sorted(
        [f"models/{ok.json()['id']}/backbone.pt", f"models/{legacy.json()['id']}/vggface2.pt"]
    )


def test_the_published_legacy_format_reads_as_data() -> None:
    """facenet-pytorch ships its MTCNN weights in torch's pre-1.6 format, as its FaceNet downloads are."""
    import facenet_pytorch

    folder = Path(facenet_pytorch.__file__).parent / "data"
    counts = {f: len(check_weights_file(folder / f, "facenet", f)) for f in ("pnet.pt", "rnet.pt", "onet.pt")}
    expected = {f: len(torch.load(folder / f, weights_only=True)) for f in counts}
    assert counts == expected == {"pnet.pt": 13, "rnet.pt": 16, "onet.pt": 21}


def test_hostile_objects_in_the_store_fail_their_jobs_on_a_real_worker(stack: Stack, tmp_path: Path) -> None:
    """An uploaded backbone.pt replaced in the store, a job's arcface.pt and a checkpoint: each job fails
    at once (no retry) with the file and the refused global in its error, and nothing runs."""
    canaries = {name: tmp_path / f"canary-{name}" for name in ("model", "arcface", "checkpoint")}
    paths = tiny_model(tmp_path / "model")

    # model:<id>: a valid upload, then the object swapped for a payload behind the API's back.
    model = upload(stack.client, "/models", "backbone.pt", paths["backbone.pt"].read_bytes(), kind="backbone")
    assert model.status_code == 201, model.text
    model_key = f"models/{model.json()['id']}/backbone.pt"
    stack.store.put_bytes(model_key, with_payload(paths["backbone.pt"], canaries["model"]), "application/octet-stream")
    evaluate = submit(stack, {"model": f"model:{model.json()['id']}", "dataset": "builtin:digits"}, kind="evaluate")

    # job:<id>: a succeeded training job whose arcface.pt carries the payload.
    trained = add_job(stack, key_id(stack), status=JobStatus.SUCCEEDED, kind="train_embedding", attempt=1)
    for name in ("backbone.pt", "config.json"):
        add_artifact(stack, trained, name, paths[name].read_bytes(), "application/octet-stream")
    add_artifact(stack, trained, "arcface.pt", with_payload(paths["arcface.pt"], canaries["arcface"]),
                 "application/octet-stream")  # fmt: skip
    invert = submit(stack, {"model": f"job:{trained}", "iterations": 2, "checkpoint_every": 0}, kind="invert")

    # A checkpoint object the job row points at, as a new attempt would find it.
    probe = submit(stack, {"matmul_size": 32, "duration_seconds": 2})  # a probe of some duration resumes
    key = f"jobs/{probe}/checkpoint.pt"
    stack.store.put_bytes(key, saved({"step": 1, "rng": Payload(canaries["checkpoint"])}), "application/octet-stream")
    with stack.session() as s:
        s.execute(update(Job).where(Job.id == probe).values(checkpoint_key=key, checkpoint_step=1))

    stack.start_worker()
    expected = {
        evaluate: f"model model:{model.json()['id']}: backbone.pt was refused: it names posix.system",
        invert: f"model job:{trained}: arcface.pt was refused: it names posix.system",
        probe: f"cannot resume from the checkpoint: {key} was refused: it names posix.system",
    }
    for job_id, message in expected.items():
        job = stack.wait_job(job_id, timeout=180)
        assert (job["status"], job["attempt"]) == ("failed", 1), job
        assert job["error"].startswith(message), job["error"]
        assert "Traceback" not in job["error"]
    assert [name for name, path in canaries.items() if path.exists()] == []


def _rezip(data: bytes, replace: dict[str, bytes]) -> bytes:
    """The torch archive `data` with the members whose names end with a key of `replace` swapped."""
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            swap = [v for k, v in replace.items() if info.filename.endswith(k)]
            dst.writestr(info.filename, swap[0] if swap else src.read(info))
    return out.getvalue()


@pytest.mark.parametrize(
    ("replace", "code", "message"),
    [
        ({"/data/0": b"\0" * 8}, "invalid_weights", "w.pt: storage '0' is missing or not 4 float32 values"),
        ({"/data.pkl": b"\x80\x02\x82\x01."}, "unsafe_weights", "w.pt's pickle uses an extension code (EXT1)"),
        ({"/data.pkl": b"\x80\x02ctorch\nFloatStorage\n}b."}, "invalid_weights",
         "w.pt: a tensor or storage record carries extra state"),
        ({"/data.pkl": b"\x80\x02ctorch\nFloatStorage\n."}, "invalid_weights",
         "w.pt: the state dict must be a non-empty dict of tensors"),
        ({"/data.pkl": b"\x80\x02cbuiltins\neval\n."}, "unsafe_weights",
         "w.pt was refused: its pickle names builtins.eval"),
    ],
)  # fmt: skip
def test_the_upload_reader_checks_storages_and_refuses_tricks(
    tmp_path: Path, replace: dict[str, bytes], code: str, message: str
) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(_rezip(saved({"w": torch.zeros(4)}), replace))
    with pytest.raises(WeightsFileError) as err:
        check_weights_file(path, "facenet", "w.pt")
    assert (err.value.code, str(err.value)[: len(message)]) == (code, message)
