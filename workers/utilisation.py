"""What a worker process uses: CPU, host memory (psutil) and, where NVML answers, its pinned GPU.

`Sampler.sample()` is taken by the process's heartbeat (workers/heartbeat.py) once a beat: the
heartbeat stores it as a `sys` event of each job the process runs (the job page draws those series
beside the training curves: `sys/cpu_pct`, `sys/rss_mb`, `sys/gpu_util_pct`, `sys/gpu_mem_mb`), and
the worker's main process stores its own on the worker row (`workers.load`, the workers page).

- `sys/cpu_pct`: CPU time over the last interval as a percent of one core, summed over the process
  and its children (a 4-thread job that keeps 4 cores busy reads 400).
- `sys/rss_mb`: resident memory of the process and its children, MiB.
- `sys/gpu_util_pct`, `sys/gpu_mem_mb`: NVML's utilisation and used memory of the GPU the worker is
  pinned to (`CUDA_VISIBLE_DEVICES`: its first entry, an index or a UUID), for the whole device.

`JobPeaks` brackets one job: peak GPU memory (torch's `max_memory_allocated` on CUDA, else the NVML
samples' peak) and peak RSS (the kernel's high-water mark, reset at the job's start, and the samples).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MIB = 1024 * 1024
CLEAR_REFS = Path("/proc/self/clear_refs")  # writing "5" resets the peak RSS (Linux 4.0 and later)
STATUS = Path("/proc/self/status")


class _Nvml:
    """The pinned GPU through NVML, or nothing: a host without a driver answers None, once, quietly."""

    def __init__(self, visible: str | None) -> None:
        self.handle: Any = None
        self.pynvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            first = (visible or "0").split(",")[0].strip()
            if first.startswith(("GPU-", "MIG-")):
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(first)
            else:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(int(first))
            self.pynvml = pynvml
        except Exception as exc:  # no driver, no library, no such device: CPU and memory only
            log.debug("NVML unavailable (%s): utilisation without the GPU", exc)
            self.handle = None

    def sample(self) -> dict[str, float]:
        if self.handle is None:
            return {}
        try:
            util = self.pynvml.nvmlDeviceGetUtilizationRates(self.handle)
            mem = self.pynvml.nvmlDeviceGetMemoryInfo(self.handle)
        except Exception:
            log.debug("NVML sample failed", exc_info=True)
            return {}
        return {"sys/gpu_util_pct": float(util.gpu), "sys/gpu_mem_mb": round(mem.used / MIB, 1)}


class Sampler:
    """Samples of this process tree (and its GPU); `sample()` is called from one thread (the heartbeat)."""

    def __init__(self, gpu: bool, visible: str | None = None) -> None:
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self._procs: dict[int, Any] = {}
        self.nvml = _Nvml(visible) if gpu else None
        self.sample()  # cpu_percent's first call only starts its interval

    def _tree(self) -> list[Any]:
        try:
            procs = [self.me, *self.me.children(recursive=True)]
        except self.psutil.Error:
            procs = [self.me]
        # Keep each Process object between samples: cpu_percent measures since that object's last call.
        known = {p.pid: self._procs.get(p.pid, p) for p in procs}
        self._procs = known
        return list(known.values())

    def sample(self) -> dict[str, float]:
        cpu = rss = 0.0
        for p in self._tree():
            try:
                with p.oneshot():
                    cpu += p.cpu_percent(None)
                    rss += p.memory_info().rss
            except self.psutil.Error:
                continue  # a child that ended between the listing and the read
        out = {"sys/cpu_pct": round(cpu, 1), "sys/rss_mb": round(rss / MIB, 1)}
        if self.nvml is not None:
            out.update(self.nvml.sample())
        return out


_lock = threading.Lock()
_samplers: dict[tuple[int, bool, str | None], Sampler] = {}


def process_sampler(gpu: bool, visible: str | None) -> Sampler | None:
    """This process's sampler (None where psutil cannot read it: the heartbeat goes on without)."""
    key = (os.getpid(), gpu, visible)
    with _lock:
        sampler = _samplers.get(key)
        if sampler is None:
            try:
                sampler = _samplers[key] = Sampler(gpu, visible)
            except Exception:
                log.exception("utilisation sampling is off in this process")
                return None
        return sampler


def _peak_rss_mb() -> float | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / MIB, 1)
    except OSError:
        pass
    return None


class JobPeaks:
    """Peak memory of one job: `begin(device)` before the runner, `result()` after; no database or store call."""

    def __init__(self) -> None:
        self.device: Any = None
        self.cuda = False
        self.started = time.monotonic()
        self.samples: list[dict[str, float]] = []  # appended by the heartbeat
        self.hwm = False

    def begin(self, device: Any) -> None:
        """Reset the peaks before the runner starts on `device`."""
        self.device = device
        self.cuda = getattr(device, "type", None) == "cuda"
        try:
            CLEAR_REFS.write_text("5")
            self.hwm = True
        except OSError:
            self.hwm = False  # not Linux, or not allowed: the samples alone
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(device)

    def elapsed(self) -> float:
        """Seconds since the job's start (the x of its utilisation series)."""
        return round(time.monotonic() - self.started, 2)

    def add(self, sample: dict[str, float]) -> None:
        self.samples.append(sample)
        if len(self.samples) > 2:  # only the peaks matter here
            keep = {k: max(s.get(k, 0.0) for s in self.samples) for k in ("sys/rss_mb", "sys/gpu_mem_mb")}
            self.samples = [{k: v for k, v in keep.items() if v}]

    def result(self) -> dict[str, float]:
        """`{"peak_rss_mb": ..., "peak_gpu_mem_mb": ...}` (the GPU figure only where there is one)."""
        sampled_rss = max((s.get("sys/rss_mb", 0.0) for s in self.samples), default=0.0)
        hwm = _peak_rss_mb() if self.hwm else None
        out = {"peak_rss_mb": max(sampled_rss, hwm or 0.0)}
        if self.cuda:
            import torch

            out["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(self.device) / MIB, 1)
        else:
            gpu = [s["sys/gpu_mem_mb"] for s in self.samples if "sys/gpu_mem_mb" in s]
            if gpu:
                out["peak_gpu_mem_mb"] = max(gpu)
        return out
