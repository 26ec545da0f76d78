"""The generator contract: what a GAN generator must be for the inverse-mapping jobs.

A generator is a TorchScript module mapping latents z of shape (N, latent_dim) to images of shape
(N, C, H, W) with values in [-1, 1] (C is 1 or 3). Beside it are stored its `latent_dim` and its
latent prior: "normal" (z ~ N(0, I), ProGAN, StyleGAN) or "uniform" (z ~ U(-1, 1)^d, the original
DCGAN). On disk it is

- `generator.pt`: the TorchScript archive, with the metadata also embedded as the extra file
  `generator.json` (so a lone uploaded file is self-describing);
- `generator.json` beside it: {"format", "latent_dim", "prior", "channels", "image_size", ...}.

`load_generator` reads either, lets explicit arguments (a job's params) override them, and
validates the module on a small probe batch drawn from the prior before anyone relies on it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ml.core.errors import InputError
from ml.gan.script_guard import UnsafeScriptError, check_script_module

FORMAT = "facejobs.generator/1"
PRIORS = ("normal", "uniform")
Prior = Literal["normal", "uniform"]
GENERATOR_FILE = "generator.pt"
META_FILE = "generator.json"
# Float slack on the [-1, 1] range: tanh outputs are exact, resampling or half precision is not.
RANGE_TOLERANCE = 1e-3


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch's "torch.jit.* is deprecated" FutureWarning: TorchScript is the contract's format."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.", category=FutureWarning)
        yield


class GeneratorContractError(InputError):
    """A generator file or module breaks the contract; the message says which part and how to fix it."""


@dataclass(frozen=True)
class GeneratorInfo:
    """What is stored beside a generator.

    Attributes:
        latent_dim: length of z.
        prior: "normal" or "uniform" (U(-1, 1)).
        channels: output channels (1 or 3), filled in by validation.
        image_size: output (H, W), filled in by validation.
        extra: anything else the producer recorded (training config, dataset ref, ...).
    """

    latent_dim: int
    prior: str = "normal"
    channels: int = 0
    image_size: tuple[int, int] = (0, 0)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["format"] = FORMAT
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GeneratorInfo:
        size = d.get("image_size") or (0, 0)
        return cls(
            latent_dim=int(d["latent_dim"]),
            prior=str(d.get("prior", "normal")),
            channels=int(d.get("channels") or 0),
            image_size=(int(size[0]), int(size[1])),
            extra=dict(d.get("extra") or {}),
        )


def check_prior(prior: str) -> None:
    """Raise `GeneratorContractError` unless `prior` is a known latent prior."""
    if prior not in PRIORS:
        raise GeneratorContractError(f"unknown latent prior {prior!r}: the prior must be one of {', '.join(PRIORS)}")


def sample_latent(
    n: int,
    latent_dim: int,
    prior: str,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw n latents from the prior on the CPU generator `generator`, then move them to `device`.

    Drawing on the CPU keeps a seeded run identical on every device.
    """
    check_prior(prior)
    if prior == "normal":
        z = torch.randn(n, latent_dim, generator=generator)
    else:
        z = torch.rand(n, latent_dim, generator=generator) * 2 - 1
    return z.to(device)


def validate_generator(
    module: nn.Module | torch.jit.ScriptModule,
    latent_dim: int,
    prior: str = "normal",
    probe: int = 4,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[int, tuple[int, int]]:
    """Run `module` on a probe batch from the prior and check its output against the contract.

    Returns:
        (channels, (H, W)) of the output.

    Raises:
        GeneratorContractError: the forward fails, or its output is not a finite (probe, C, H, W)
            tensor with C in {1, 3}, or a value lies outside [-1, 1].
    """
    check_prior(prior)
    if int(latent_dim) < 1:
        raise GeneratorContractError(f"latent_dim must be >= 1, got {latent_dim}")
    z = sample_latent(probe, int(latent_dim), prior, torch.Generator().manual_seed(seed), device)
    try:
        with torch.no_grad():
            out = module(z)
    except Exception as exc:  # anything the user's module raises means the same: it cannot take our z
        raise GeneratorContractError(
            f"the generator failed on a probe batch z of shape ({probe}, {latent_dim}) drawn from the "
            f"{prior} prior: {type(exc).__name__}: {exc}. Check latent_dim: the generator must map "
            "(N, latent_dim) latents to (N, C, H, W) images"
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise GeneratorContractError(
            f"the generator returned {type(out).__name__}, not a tensor: it must return one (N, C, H, W) image tensor"
        )
    shape = tuple(out.shape)
    if out.ndim != 4:
        raise GeneratorContractError(
            f"the generator's output has shape {shape} (rank {out.ndim}): the contract is images of "
            f"shape (N, C, H, W) = ({probe}, 1 or 3, H, W) for a probe batch of {probe} latents"
        )
    if shape[0] != probe:
        raise GeneratorContractError(
            f"the generator's output has shape {shape}: {shape[0]} images for {probe} latents "
            f"(the contract is one image per latent, shape ({probe}, C, H, W))"
        )
    if shape[1] not in (1, 3):
        raise GeneratorContractError(
            f"the generator's output has shape {shape}: {shape[1]} channels, but the contract allows "
            "1 (grey) or 3 (RGB) channels in dimension 1 (N, C, H, W)"
        )
    if not torch.isfinite(out).all():
        raise GeneratorContractError("the generator's output holds NaN or infinite values on the probe batch")
    low, high = float(out.min()), float(out.max())
    if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise GeneratorContractError(
            f"the generator's output values lie in [{low:.4g}, {high:.4g}], outside [-1, 1]: "
            "the contract is images in [-1, 1] (end the generator with tanh, or rescale its output)"
        )
    return int(shape[1]), (int(shape[2]), int(shape[3]))


def save_generator(
    module: nn.Module | torch.jit.ScriptModule,
    folder: str | Path,
    latent_dim: int,
    prior: str = "normal",
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Script (if needed), validate and write `generator.pt` + `generator.json` into `folder`.

    An `nn.Module` is scripted in eval mode on the CPU; a ScriptModule is saved as it is.

    Returns:
        {"generator.pt": path, "generator.json": path}.

    Raises:
        GeneratorContractError: the module cannot be scripted or breaks the contract.
    """
    check_prior(prior)
    if isinstance(module, torch.jit.ScriptModule):
        scripted = module
    else:
        try:
            with quiet_jit():
                scripted = torch.jit.script(module.cpu().eval())
        except Exception as exc:
            raise GeneratorContractError(f"the generator cannot be compiled to TorchScript: {exc}") from exc
    scripted = scripted.cpu().eval()
    channels, size = validate_generator(scripted, latent_dim, prior)
    info = GeneratorInfo(int(latent_dim), prior, channels, size, dict(extra or {}))
    meta = json.dumps(info.to_json(), indent=2, sort_keys=True, default=str)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {GENERATOR_FILE: folder / GENERATOR_FILE, META_FILE: folder / META_FILE}
    with quiet_jit():
        torch.jit.save(scripted, str(paths[GENERATOR_FILE]), _extra_files={META_FILE: meta})
    paths[META_FILE].write_text(meta)
    return paths


def _find_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise GeneratorContractError(f"no generator at {path}")
    if (path / GENERATOR_FILE).is_file():
        return path / GENERATOR_FILE
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".pt", ".pth", ".ts", ".zip"))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise GeneratorContractError(
            f"{path} must hold {GENERATOR_FILE} (or exactly one .pt/.pth/.ts file); found: {found}"
        )
    return candidates[0]


def load_generator(
    path: str | Path,
    device: torch.device | str = "cpu",
    latent_dim: int | None = None,
    prior: str | None = None,
    probe: int = 4,
    check_archive: Callable[[Path], None] | None = None,
    allowed_ops: Collection[str] | None = None,
) -> tuple[torch.jit.ScriptModule, GeneratorInfo]:
    """Load and validate a generator (a `generator.pt` file or a folder holding one).

    Metadata comes, by priority, from the explicit `latent_dim`/`prior` arguments, then
    `generator.json` beside the file, then the archive's embedded `generator.json`.

    A TorchScript file is a program, and `torch.jit.load` already runs code from it: a file that
    came from a caller needs both guards (the worker passes them; files this process wrote do not).

    Args:
        check_archive: called with the file before `torch.jit.load`; raises
            `GeneratorContractError` to refuse it (the worker's static check of the archive).
        allowed_ops: if given, every graph of the loaded module is checked against these
            `namespace::name` operations (`check_script_module`) before the probe batch runs.

    Returns:
        (TorchScript module in eval mode on `device`, its `GeneratorInfo` with channels and size).

    Raises:
        GeneratorContractError: not TorchScript, refused by a guard, no latent_dim anywhere, or the
            probe batch fails.
    """
    file = _find_file(Path(path))
    if check_archive is not None:
        check_archive(file)
    extra_files = {META_FILE: ""}
    try:
        with quiet_jit():
            module = torch.jit.load(str(file), map_location=torch.device(device), _extra_files=extra_files)
    except Exception as exc:  # a state_dict zip, a pickle, random bytes: all "not TorchScript"
        raise GeneratorContractError(
            f"{file.name} is not a TorchScript module ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "export the generator with torch.jit.script(model) or torch.jit.trace(model, z) and "
            "torch.jit.save, not torch.save"
        ) from exc
    if allowed_ops is not None:
        try:
            check_script_module(module, allowed_ops)
        except UnsafeScriptError as exc:
            raise GeneratorContractError(f"{file.name}: {exc}") from exc
    meta: dict[str, Any] = {}
    if extra_files[META_FILE]:
        meta.update(_parse_meta(extra_files[META_FILE], f"{file.name}'s embedded {META_FILE}"))
    beside = file.parent / META_FILE
    if beside.is_file():
        meta.update(_parse_meta(beside.read_text(), str(beside)))
    if latent_dim is not None:
        meta["latent_dim"] = int(latent_dim)
    if prior is not None:
        meta["prior"] = prior
    if "latent_dim" not in meta:
        raise GeneratorContractError(
            f'the latent_dim of {file.name} is unknown: put a {META_FILE} ({{"latent_dim": 512, '
            '"prior": "normal"}) beside it or give latent_dim and prior with the job'
        )
    meta.setdefault("prior", "normal")
    module.eval()
    channels, size = validate_generator(module, int(meta["latent_dim"]), str(meta["prior"]), probe, device)
    info = GeneratorInfo.from_json({**meta, "channels": channels, "image_size": size})
    return module, info


def _parse_meta(text: str, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GeneratorContractError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise GeneratorContractError(f"{where} must be a JSON object with latent_dim and prior")
    return meta
