"""A TorchScript generator is a program: only pure tensor operations may run (issue 11, section 2).

The programs of tests/security/programs.py read a secret file into the pixels, write a file from
forward, and write one from `__setstate__` at load time. Each is shown to work when nothing guards
it, then refused by the static archive check (`jobs.torchscript_check`, what the API and the worker
run before `torch.jit.load`) and by the graph check of the loaded module (`ml.gan.script_guard`),
through `load_generator` exactly as the worker calls it. The project's own generators (scripted and
traced DCGAN, and the modules other tests upload) pass both. The HTTP and worker sides are in
tests/security/test_torchscript_jobs.py.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from jobs.torchscript_check import NotTorchScriptError, UnsafeTorchScriptError, check_torchscript_archive
from jobs.torchscript_ops import ALLOWED_OPS
from ml.gan.dcgan import DCGANGenerator
from ml.gan.generator import GeneratorContractError, load_generator, quiet_jit, save_generator
from ml.gan.script_guard import UnsafeScriptError, check_script_module
from tests.security.programs import (
    CODE,
    LATENT_DIM,
    SECRET,
    FileReader,
    FileWriter,
    LoadTimeWriter,
    Plain,
    rewrite,
    save,
    scripted,
    with_source,
)
from workers.runners.gan import _check_generator_archive

pytestmark = pytest.mark.security


def refused(err: UnsafeTorchScriptError) -> list[str]:
    """What was refused, without the '(file line N)' of each entry."""
    return sorted({r.rsplit(" (", 1)[0] for r in err.refused})


def guarded(path: Path) -> tuple[torch.jit.ScriptModule, object]:
    """`load_generator` as the worker calls it (workers/runners/gan.py)."""
    return load_generator(path, latent_dim=LATENT_DIM, check_archive=_check_generator_archive, allowed_ops=ALLOWED_OPS)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secrets" / "worker.env"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def test_the_projects_generators_pass_both_checks(tmp_path: Path) -> None:
    dcgan = DCGANGenerator(latent_dim=LATENT_DIM, channels=1, image_size=16, width=4).eval()
    paths = save_generator(dcgan, tmp_path / "scripted", latent_dim=LATENT_DIM)  # what train_generator exports
    with quiet_jit():
        traced = torch.jit.trace(dcgan, torch.randn(2, LATENT_DIM))
    traced_path = tmp_path / "traced.pt"
    traced.save(str(traced_path))
    linear = save(scripted(nn.Linear(2, 2)), tmp_path / "linear.pt")  # tests/api/test_models.py's upload
    for path in (paths["generator.pt"], traced_path, linear, save(scripted(Plain()), tmp_path / "plain.pt")):
        check_torchscript_archive(path)
        check_torchscript_archive(path.read_bytes())
        with quiet_jit():
            check_script_module(torch.jit.load(str(path)), ALLOWED_OPS)
    for path in (paths["generator.pt"], traced_path):
        module, info = guarded(path)
        assert (info.channels, info.image_size) == (1, (16, 16))
        z = torch.randn(3, LATENT_DIM)
        with torch.no_grad():
            assert torch.equal(module(z), dcgan(z))


LAYERS = {
    "upsample-bilinear": nn.Upsample(scale_factor=2, mode="bilinear"), "upsample-nearest": nn.Upsample(scale_factor=2),
    "pixel-shuffle": nn.PixelShuffle(2), "reflect-conv": nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"),
    "instance-norm": nn.InstanceNorm2d(3, affine=True), "group-norm": nn.GroupNorm(1, 3), "layer-norm": nn.LayerNorm(4),
    "embedding": nn.Embedding(10, 4), "activations": nn.Sequential(nn.SiLU(), nn.GELU(), nn.ELU(), nn.PReLU(),
    nn.Softplus(), nn.Sigmoid(), nn.Hardtanh(), nn.LeakyReLU(0.2, True)), "dropout2d": nn.Dropout2d(),
    "pooling": nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    "padding": nn.Sequential(nn.ZeroPad2d(1), nn.ReplicationPad2d(1)), "attention": nn.TransformerEncoderLayer(4, 2, 8),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_common_generator_layers_pass_both_checks(name: str) -> None:
    data = scripted(LAYERS[name])
    check_torchscript_archive(data)
    with quiet_jit():
        check_script_module(torch.jit.load(io.BytesIO(data)), ALLOWED_OPS)


def test_a_file_reading_graph_works_unguarded_and_is_refused_by_both_checks(tmp_path: Path, secret: Path) -> None:
    path = save(scripted(FileReader(str(secret))), tmp_path / "reader.pt")
    with quiet_jit():
        loose, _ = load_generator(path, latent_dim=LATENT_DIM)  # nothing guards it: the secret becomes pixels
    pixels = ((loose(torch.zeros(1, LATENT_DIM)) + 1) * 127.5).round().to(torch.uint8).flatten()
    assert bytes(pixels.tolist()) == SECRET[:16]

    with pytest.raises(UnsafeTorchScriptError) as static:
        check_torchscript_archive(path)
    assert refused(static.value) == ["aten::from_file"]
    assert "aten::from_file" in str(static.value) and "only pure tensor operations" in str(static.value)
    with quiet_jit(), pytest.raises(UnsafeScriptError) as graph:
        check_script_module(torch.jit.load(str(path)), ALLOWED_OPS)
    assert graph.value.refused == {"aten::from_file": "<root>.forward"}
    with pytest.raises(GeneratorContractError, match=r"reader\.pt: the TorchScript program uses .*aten::from_file"):
        guarded(path)


def test_a_file_writing_graph_works_unguarded_and_is_refused_before_it_writes(tmp_path: Path) -> None:
    existing, created = tmp_path / "data" / "weights.bin", tmp_path / "data" / "planted.bin"
    save(b"original weights", existing)
    for target in (existing, created):
        path = save(scripted(FileWriter(str(target))), tmp_path / f"writer-{target.stem}.pt")
        with pytest.raises(GeneratorContractError, match=r"uses .*aten::from_file"):
            guarded(path)
        with quiet_jit(), pytest.raises(UnsafeScriptError) as graph:
            check_script_module(torch.jit.load(str(path)), ALLOWED_OPS)  # load alone runs no forward
        assert graph.value.refused == {"aten::from_file": "<root>.forward"}
    assert existing.read_bytes() == b"original weights" and not created.exists()

    with quiet_jit():
        load_generator(path, latent_dim=LATENT_DIM)  # unguarded, the probe batch writes the file
    assert created.read_bytes() == b"X" * 16


def test_a_graph_that_writes_at_load_time_is_refused_before_torch_loads_it(tmp_path: Path) -> None:
    target = tmp_path / "planted.bin"
    path = save(scripted(LoadTimeWriter(str(target))), tmp_path / "loadtime.pt")
    with pytest.raises(UnsafeTorchScriptError) as static:
        check_torchscript_archive(path)
    assert refused(static.value) == ["a __setstate__ method in class LoadTimeWriter (code run while loading)",
                                     "aten::from_file"]  # fmt: skip
    with pytest.raises(GeneratorContractError, match=r"uses .*__setstate__.*aten::from_file"):
        guarded(path)
    assert not target.exists()  # the static check ran first: torch.jit.load never ran __setstate__
    with quiet_jit():
        module = torch.jit.load(str(path))  # what a graph check alone would come too late for
    assert target.read_bytes() == b"X" * 16
    with pytest.raises(UnsafeScriptError) as graph:
        check_script_module(module, ALLOWED_OPS)
    assert graph.value.refused == {"aten::from_file": "<root>.__setstate__"}


class HookedReader(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z[:, :1, None, None].expand(-1, 1, 4, 4))


def _reading_hook(module, inputs: tuple[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    return out + 0.0 * torch.from_file("/etc/hostname", False, 1, dtype=torch.uint8).float()


@torch.jit.script
class _Helper:
    def __init__(self, n: int) -> None:
        self.n = n

    def read(self) -> torch.Tensor:
        return torch.from_file("/etc/hostname", False, self.n, dtype=torch.uint8)


def _read_function(n: int) -> torch.Tensor:
    return torch.from_file("/etc/hostname", False, n, dtype=torch.uint8)


class Indirect(nn.Module):
    """The read hides in a called function and in a TorchScript class's method, inside a branch."""

    def __init__(self) -> None:
        super().__init__()
        self.helper = _Helper(1)
        self.inner = nn.Sequential(nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.inner(z[:, :1, None, None].expand(-1, 1, 4, 4))
        if bool(z.sum() > 1e9):
            out = out + self.helper.read().float().sum() + _read_function(1).float().sum()
        return out


def test_the_graph_check_sees_hooks_called_functions_class_methods_and_branches() -> None:
    hooked = HookedReader()
    hooked.register_forward_hook(_reading_hook)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modules = [torch.jit.load(io.BytesIO(scripted(m))) for m in (hooked, Indirect())]
    with pytest.raises(UnsafeScriptError) as err:
        check_script_module(modules[0], ALLOWED_OPS)  # a hook is no method, but runs on every call
    assert err.value.refused == {"aten::from_file": "<root>.forward hook _reading_hook"}
    with pytest.raises(UnsafeScriptError) as err:
        check_script_module(modules[1], ALLOWED_OPS)
    assert err.value.refused == {"aten::from_file": "<root>.forward"}


HAND_WRITTEN = [
    ("return ops.aten.from_file('/etc/passwd', False, 4)", ["aten::from_file"]),
    ("return torch.ops.aten.from_file('/etc/passwd')", ["torch.ops.aten.from_file"]),
    ("return getattr(torch, 'from_file')('/etc/passwd')", ["a call of a Call expression", "getattr on torch"]),
    ("return ops.torchvision.nms(z, z, 0.5)", ["torchvision::nms (namespace 'torchvision' is not allowed)"]),
    ("return torch.as_strided(z, [1 << 30], [1])", ["aten::as_strided"]),
    ("return torch.empty([1 << 20])", ["aten::empty"]),
    ("return (z).as_strided([1 << 30], [1])", ["attribute or method 'as_strided'"]),
    ("f = getattr(z, 'set_')\n    return f(z)", ["attribute or method 'set_'"]),
    ("_0 = fork(__torch__.f, z)\n    return z", ["unknown name 'fork'"]),
    ("_0 = print(z)\n    return z", ["unknown name 'print'"]),
    ("_0 = Storage(z)\n    return z", ["a call of the type Storage"]),
    ("_0 = fork(z)\n    fork = 1\n    return z", ["a local named 'fork' (hides a builtin)"]),
    ("return __torch__.torch.classes.evil.Reader(z)", ["custom class __torch__.torch.classes.evil.Reader"]),
    ("import os\n    return z", ["Import statement"]),
    ("return (lambda: z)()", ["a call of a Lambda expression", "a nested function or class"]),
    (
        "return z\n  def __setstate__(self, state: int) -> NoneType:\n    return None",
        ["a __setstate__ method in class Plain (code run while loading)"],
    ),
    ("return z(", ["code/__torch__/tests/security/programs.py"]),
]


@pytest.mark.parametrize(("body", "what"), HAND_WRITTEN, ids=[w[0] for _, w in HAND_WRITTEN])
def test_hand_written_source_is_refused_statically(body: str, what: list[str]) -> None:
    with pytest.raises(UnsafeTorchScriptError) as err:
        check_torchscript_archive(with_source(body))
    assert refused(err.value) == what


def test_a_top_level_import_and_the_plain_template_itself() -> None:
    check_torchscript_archive(with_source("return torch.tanh(z)"))
    with pytest.raises(UnsafeTorchScriptError) as err:
        check_torchscript_archive(with_source("return z", head="import os\n"))
    assert refused(err.value) == ["top-level Import statement"]


def test_the_archive_layout_and_its_pickles_are_checked() -> None:
    plain = scripted(Plain())
    cases = {
        "{root}/../escape.txt": ["entry 'archive/../escape.txt'"],
        "/etc/cron.d/x": ["entry '/etc/cron.d/x'", "several top-level folders ['', 'archive']"],
        "{root}/a\\b": ["entry " + repr("archive/a\\b")],  # repr doubles the backslash
        "{root}/extra.pkl": ["entry 'archive/extra.pkl'"],
        "{root}/code/__torch__/evil.sh": ["entry 'archive/code/__torch__/evil.sh'"],
        "other/data.pkl": ["data.pkl: unreadable pickle", "several top-level folders ['archive', 'other']"],
    }
    for name, what in cases.items():
        with pytest.raises(UnsafeTorchScriptError) as err:
            check_torchscript_archive(rewrite(plain, add={name: b"x"}))
        assert refused(err.value) == what, name
    system = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."  # os.system("id")
    with pytest.raises(UnsafeTorchScriptError) as err:
        check_torchscript_archive(rewrite(plain, {"data.pkl": system}))
    assert refused(err.value) == ["data.pkl: pickle global posix.system"]
    with pytest.raises(UnsafeTorchScriptError) as err:
        check_torchscript_archive(rewrite(plain, {"data.pkl": b"not a pickle"}))
    assert refused(err.value)[0].startswith("data.pkl: unreadable pickle")
    check_torchscript_archive(rewrite(plain, add={"{root}/extra/generator.json": b"{}"}))  # torch's extra files


def test_code_that_inflates_past_the_bounds_is_refused_without_being_kept() -> None:
    plain, mib = scripted(Plain()), 1024 * 1024
    big = rewrite(plain, add={"{root}/code/__torch__/big.py": b"#" * (5 * mib)})  # 5 MiB in a 5 KiB zip
    assert len(big) < 64 * 1024
    with pytest.raises(UnsafeTorchScriptError) as err:
        check_torchscript_archive(big)
    assert err.value.refused == ["archive/code/__torch__/big.py (larger than 4194304 bytes)"]
    many = rewrite(plain, add={f"{{root}}/code/__torch__/m{i}.py": b"#" * (4 * mib - 1) for i in range(5)})
    with pytest.raises(UnsafeTorchScriptError) as err:
        check_torchscript_archive(many)
    assert err.value.refused == ["code past 16777216 bytes in all"]


def test_an_entry_that_does_not_inflate_is_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/code/__torch__/x.py", b"class X(Module):\n  pass\n" * 200)
    data = bytearray(out.getvalue())
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("archive/code/__torch__/x.py")
    start = info.header_offset + 30 + len(info.filename)  # the local header, then the deflated bytes
    data[start : start + 8] = b"\xff" * 8
    with pytest.raises(UnsafeTorchScriptError) as err:
        check_torchscript_archive(bytes(data))
    assert err.value.refused == [
        "archive/code/__torch__/x.py (unreadable: Error -3 while decompressing data: invalid block type)"
    ]


def test_what_is_not_torchscript_is_told_apart(tmp_path: Path) -> None:
    state_dict = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, state_dict)
    no_code = rewrite(scripted(Plain()), {CODE: None, f"{CODE}.debug_pkl": None})
    for data in (state_dict.getvalue(), b"\x00" * 100, no_code):
        with pytest.raises(NotTorchScriptError):
            check_torchscript_archive(data)
    with pytest.raises(GeneratorContractError, match=r"torch\.jit\.save, not torch\.save"):
        guarded(save(state_dict.getvalue(), tmp_path / "gan.pt"))
