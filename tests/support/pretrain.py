"""Train the suite's slow shared models in one background process while the first tests run.

The trained-model fixtures (MNIST ArcFace and its inversions, ORL ArcFace, the MNIST GAN and its
encoder, the ORL model on detected faces, the ORL gallery models) train with one torch thread, and
most of the suite before tests/ml (API, browser and fault tests) leaves a core idle: waiting on
leases, on worker processes, on a browser. So when the collected tests need one of them, `start`
(called by tests/conftest.py once collection is done) runs their recipes (`tests.support.recipes`,
`tests.support.faces`, `tests.support.orl_gallery`) one after another, in the order the tests
first need them, in a child process at the lowest CPU priority (nice 19): it takes only the CPU
the tests leave. The fixture then `take`s the pickled result, waiting for it if it is not done yet
(and giving the child back a normal priority then, where the test process may). Where no
background run has the job (`--collect-only`, a recipe called outside these fixtures) `take`
answers None and the fixture trains in the test process. Same recipe, same single thread: the
same model either way.

A job is needed when a collected test requests the fixture of the job's name, or is marked
`@pytest.mark.pretrained("<job>")` (for the models that tests reach by a function call).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _mnist_arcface(data_dir: Path, out: Path) -> Any:
    from tests.support.recipes import train_mnist_arcface

    return train_mnist_arcface(data_dir / "mnist")


def _mnist_inversions(data_dir: Path, out: Path) -> Any:
    from tests.support.recipes import quality_inversions

    return quality_inversions(_done["mnist_arcface"] if "mnist_arcface" in _done else _mnist_arcface(data_dir, out))


def _orl_arcface(data_dir: Path, out: Path) -> Any:
    from tests.support.recipes import train_orl_arcface

    return train_orl_arcface(data_dir / "orl")


def _mnist_gan(data_dir: Path, out: Path) -> Any:
    from tests.support.recipes import train_mnist_gan

    folder = out / "mnist_gan"
    folder.mkdir()
    return train_mnist_gan(data_dir / "mnist", folder)


def _orl_model(data_dir: Path, out: Path) -> Any:
    from tests.support.faces import orl_model

    folder = out / "orl_model"
    folder.mkdir()
    return orl_model(data_dir / "orl", folder)


def _orl_gallery(backbone: str) -> Callable[[Path, Path], Any]:
    def train(data_dir: Path, out: Path) -> Any:
        from tests.support.orl_gallery import train_gallery_model

        folder = out / f"orl_gallery_{backbone}"
        folder.mkdir()
        train_gallery_model(data_dir / "orl", backbone, folder)
        return folder

    return train


# job name -> (the data folders it reads, its recipe: (data_dir, out_dir) -> a picklable result)
JOBS: dict[str, tuple[tuple[str, ...], Callable[[Path, Path], Any]]] = {
    "mnist_arcface": (("mnist",), _mnist_arcface),
    "mnist_inversions": (("mnist",), _mnist_inversions),  # of mnist_arcface's model (trained first)
    "orl_arcface": (("orl",), _orl_arcface),
    "mnist_gan": (("mnist",), _mnist_gan),
    "orl_model": (("orl",), _orl_model),  # the MTCNN landmarks of ORL and the model trained on them
    "orl_gallery_se_resnet18": (("orl",), _orl_gallery("se_resnet18")),
    "orl_gallery_iresnet18": (("orl",), _orl_gallery("iresnet18")),
}

_run: dict[str, Any] = {}  # "proc", "out", "jobs" of this test process's background run
_done: dict[str, Any] = {}  # in the background process: the results so far, for the jobs that build on them


def needed(items: Iterable[Any]) -> list[str]:
    """The jobs the collected `items` need, in the order the tests first need them."""
    order: list[str] = []
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for marker in item.iter_markers("pretrained"):
            names |= set(marker.args)
        order += [job for job in JOBS if job in names and job not in order]
    return order


def _lowest_priority() -> None:
    """In the child before exec: nice 19, and die with the test process (Linux's PR_SET_PDEATHSIG)."""
    os.nice(19)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start(jobs: list[str], data_dir: Path) -> None:
    """Start the background run of `jobs` (those whose data exist; the rest are left to their fixtures)."""
    jobs = [job for job in jobs if all((data_dir / part).is_dir() for part in JOBS[job][0])]
    if not jobs or _run:
        return
    out = Path(tempfile.mkdtemp(prefix="facejobs-pretrain-"))
    log = (out / "pretrain.log").open("wb")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.pretrain", str(data_dir), str(out), *jobs],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_lowest_priority,
    )  # fmt: skip
    _run.update(proc=proc, out=out, jobs=jobs)
    atexit.register(stop)


def stop() -> None:
    """End the background run (at the session's end, done or not) and remove its folder."""
    proc = _run.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(10)
    if "out" in _run:
        shutil.rmtree(_run["out"], ignore_errors=True)
    _run.clear()


def _renice(proc: subprocess.Popen[bytes], niceness: int) -> None:
    with contextlib.suppress(OSError):
        if proc.poll() is None:
            os.setpriority(os.PRIO_PROCESS, proc.pid, niceness)


def take(job: str, timeout: float = 3600) -> Any | None:
    """The background run's result of `job`, once it is there; None when no background run has it."""
    if job not in _run.get("jobs", ()):
        return None
    result = _run["out"] / f"{job}.pkl"
    proc: subprocess.Popen[bytes] = _run["proc"]
    waited = not result.exists() and proc.poll() is None
    if waited:
        # A test waits on it now: it is no longer background work (allowed where we may raise priority).
        _renice(proc, 0)
    deadline = time.monotonic() + timeout
    while not result.exists():
        if proc.poll() is not None and not result.exists():
            tail = (_run["out"] / "pretrain.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"the background training of {job} ended (rc {proc.returncode}) without it:\n{tail}")
        assert time.monotonic() < deadline, f"the background training of {job} took over {timeout:g}s"
        time.sleep(0.2)
    if waited:
        _renice(proc, 19)  # the jobs after it are background work again
    with result.open("rb") as f:
        return pickle.load(f)  # our own child's file, in our own temporary folder


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)
    data_dir, out = Path(argv[0]), Path(argv[1])
    for job in argv[2:]:
        started = time.monotonic()
        value = _done[job] = JOBS[job][1](data_dir, out)
        tmp = out / f"{job}.pkl.tmp"
        with tmp.open("wb") as f:
            pickle.dump(value, f)
        tmp.replace(out / f"{job}.pkl")
        print(f"{job}: {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
