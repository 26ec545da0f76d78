"""Model uploads: a real TorchScript generator is accepted, anything else for a generator is refused."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.support.factories import client_for, upload


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """(a TorchScript archive, a plain torch.save state dict), made with the real torch."""
    import torch

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still what generators ship as
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(folder / "gen.pt"))
    torch.save(torch.nn.Linear(2, 2).state_dict(), folder / "state.pt")
    return (folder / "gen.pt").read_bytes(), (folder / "state.pt").read_bytes()


def test_upload_generator_and_weights(stack: Any, torch_files: tuple[bytes, bytes]) -> None:
    script, state = torch_files
    r = upload(
        stack.client, "/models", "../../my gen.pt", script, kind="generator", name="dcgan", meta='{"latent_dim": 2}'
    )
    assert r.status_code == 201, r.text
    model = r.json()
    assert (model["name"], model["kind"], model["filename"], model["meta"]) == (
        "dcgan",
        "generator",
        "my_gen.pt",
        {"latent_dim": 2},
    )
    assert (model["size"], model["sha256"]) == (len(script), hashlib.sha256(script).hexdigest())
    assert model["ref"] == f"model:{model['id']}"
    key = f"models/{model['id']}/my_gen.pt"
    assert stack.store.list(f"models/{model['id']}") == [key]
    assert stack.store.get_bytes(key) == script
    assert stack.client.get(f"/models/{model['id']}").json() == model

    r = upload(stack.client, "/models", "state.pt", state, kind="generator")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "not_torchscript"
    assert r.json()["error"]["message"].startswith("not a TorchScript archive")
    assert upload(stack.client, "/models", "x.pt", b"not a zip at all", kind="generator").status_code == 400

    facenet = upload(stack.client, "/models", "vggface2.pt", state, kind="facenet")
    assert facenet.status_code == 201 and facenet.json()["name"] == "vggface2"
    r = upload(stack.client, "/models", "x.pt", state, kind="decoder")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_model_kind")
    r = upload(stack.client, "/models", "x.pt", state, kind="facenet", meta="[1, 2]")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_meta")
    r = upload(client_for(stack, max_upload_bytes=len(script) - 1), "/models", "g.pt", script, kind="generator")
    assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")

    page = stack.client.get("/models").json()
    assert [m["id"] for m in page["data"]] == [facenet.json()["id"], model["id"]]
    assert sorted(Path(k).name for k in stack.store.list("models")) == ["my_gen.pt", "vggface2.pt"]
