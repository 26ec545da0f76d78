"""The `probe` kind: what this worker is, and a timed matmul. Also a long, resumable test job."""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from jobs.params.probe import ProbeParams
from workers.runners import Preempted, params_as

if TYPE_CHECKING:
    from workers.context import JobContext


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


def matmul_dtype(device: Any, dtype_name: str) -> Any:
    """The dtype the matmul runs in: the one asked for, unless this device only emulates it."""
    import torch

    dtype = getattr(torch, dtype_name)
    if device.type == "cpu" and dtype is torch.float16:
        return torch.float32  # half matmul on CPU is an emulation, not a measurement
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return torch.float32  # before Ampere bfloat16 has no tensor-core path
    return dtype


def timed_matmul(device: Any, n: int, repeats: int, dtype_name: str) -> dict[str, Any]:
    """Best-of-`repeats` time of an n x n matmul, the GFLOP/s it implies (2 n^3 flops), and its error.

    `matmul_rel_error` compares a 64 x 64 corner of the product with a float64 CPU reference
    (Frobenius norm of the difference over the reference's): about 1e-7 in float32, a few 1e-3 in
    bfloat16 or float16; a device that computes wrong numbers shows here, not only in slow jobs.
    """
    import torch

    dtype = matmul_dtype(device, dtype_name)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a_host, b_host = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    a = a_host.to(device=device, dtype=dtype)
    b = b_host.to(device=device, dtype=dtype)
    (a @ b).sum().item()  # warm-up (kernels, allocator)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        c = a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    k = min(64, n)
    # The reference multiplies the same rounded inputs, so only the product's own error is measured.
    ref = a[:k].double().cpu() @ b[:, :k].double().cpu()
    got = c[:k, :k].double().cpu()
    rel = float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref))
    del c
    return {
        "matmul_seconds": best,
        "gflops": 2 * n**3 / best / 1e9,
        "matmul_size": n,
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "matmul_rel_error": rel,
    }


def _raise_fault(ctx: JobContext) -> None:
    """The test-only failures of `fail_with` / `fault`, on the first `fault_attempts` attempts (or all)."""
    import torch

    p = params_as(ctx, ProbeParams)
    if p.fault_attempts is not None and ctx.attempt > p.fault_attempts:
        return
    if p.fail_at_second is not None:
        return  # raised in the loop, at that second
    if p.fault == "accelerator_error":
        raise torch.AcceleratorError(p.fail_with or "CUDA error: an illegal memory access was encountered")
    if p.fault == "out_of_memory":
        raise torch.OutOfMemoryError(p.fail_with or "CUDA out of memory. Tried to allocate 20.00 GiB")
    if p.fail_with:
        raise RuntimeError(p.fail_with)


def _chatter(step: int) -> None:
    """Test only: one line to each of stdout, stderr and logging, stamped with the wall time it was printed at."""
    sys.stdout.write(f"tick {step} stdout at {time.time():.3f}\n")  # print is what a runner would use
    sys.stdout.flush()
    sys.stderr.write(f"tick {step} stderr\n")
    sys.stderr.flush()
    logging.getLogger("facejobs.probe").warning("tick %s logged", step)


def run_probe(ctx: JobContext) -> dict[str, Any]:
    import torch

    p = params_as(ctx, ProbeParams)
    _raise_fault(ctx)
    if p.duration_seconds <= 0:
        # Over within moments: the progress, the log line and the artifact's row go into the result's
        # commit (one transaction for four; the queue bench's cheapest round trip is this job).
        ctx.hold_writes()
    held = None
    if p.allocate_gib is not None:
        # Touched, not just reserved: a CPU allocation would otherwise succeed lazily and prove nothing.
        held = torch.ones(int(p.allocate_gib * 2**30), dtype=torch.uint8, device=ctx.device)
    info = device_info(ctx.device)
    info.update(timed_matmul(ctx.device, p.matmul_size, p.matmul_repeats, p.dtype))
    info["deterministic"] = torch.are_deterministic_algorithms_enabled()
    info["pid"] = os.getpid()
    if held is not None:
        info["allocated_bytes"] = held.numel()
        del held
    ctx.progress(0, max(1, int(p.duration_seconds)), gflops=info["gflops"])
    ctx.log(f"{info['device_name']} ({info['device']}): {info['gflops']:.1f} GFLOP/s at n={p.matmul_size}")

    if p.duration_seconds > 0:
        state = ctx.load_checkpoint() or {"step": 0}
        total = int(p.duration_seconds)
        step = int(state["step"])
        while step < total:
            time.sleep(1.0)
            step += 1
            if p.chatter:
                _chatter(step)
            ctx.progress(step, total, gflops=info["gflops"])
            ctx.save_checkpoint({"step": step})
            if p.fail_at_second == step:
                raise RuntimeError(p.fail_with or f"failed at second {step}")
            if ctx.should_stop() and step < total:
                raise Preempted(f"stopped at second {step}")
        info["seconds_run"] = total
    ctx.put_artifact("probe.json", json.dumps(info, indent=2).encode(), "application/json")
    return info
