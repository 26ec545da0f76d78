"""The `probe` kind: what this worker is, and a timed matmul. Also a long, resumable test job."""

from __future__ import annotations

import json
import platform
import socket
import time
from typing import Any

from workers.runners import Preempted


def device_info(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        info.update(
            device_name=props.name,
            device_capability=f"{props.major}.{props.minor}",
            memory_total_bytes=int(total),
            memory_free_bytes=int(free),
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info


def timed_matmul(device: Any, n: int, repeats: int, dtype_name: str) -> dict[str, float]:
    """Best-of-`repeats` time of an n x n matmul, and the GFLOP/s it implies (2 n^3 flops)."""
    import torch

    dtype = getattr(torch, dtype_name)
    if device.type == "cpu" and dtype is torch.float16:
        dtype = torch.float32  # half matmul on CPU is an emulation, not a measurement
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    (a @ b).sum().item()  # warm-up (kernels, allocator)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        c = a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    del c
    return {"matmul_seconds": best, "gflops": 2 * n**3 / best / 1e9, "matmul_size": n}


def run_probe(ctx: Any) -> dict[str, Any]:
    p = ctx.params
    if p.fail_with:
        raise RuntimeError(p.fail_with)
    info = device_info(ctx.device)
    info.update(timed_matmul(ctx.device, p.matmul_size, p.matmul_repeats, p.dtype))
    ctx.progress(0, max(1, int(p.duration_seconds)), gflops=info["gflops"])
    ctx.log(f"{info['device_name']} ({info['device']}): {info['gflops']:.1f} GFLOP/s at n={p.matmul_size}")

    if p.duration_seconds > 0:
        state = ctx.load_checkpoint() or {"step": 0}
        total = int(p.duration_seconds)
        step = int(state["step"])
        while step < total:
            time.sleep(1.0)
            step += 1
            ctx.progress(step, total, gflops=info["gflops"])
            ctx.save_checkpoint({"step": step})
            if ctx.should_stop() and step < total:
                raise Preempted(f"stopped at second {step}")
        info["seconds_run"] = total
    ctx.put_artifact("probe.json", json.dumps(info, indent=2).encode(), "application/json")
    return info
