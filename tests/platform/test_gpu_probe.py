"""The probe's matmul branches and deterministic mode; on a GPU host, workers pinned to CUDA.

The CPU tests run everywhere. The `gpu` ones skip without CUDA and fail under
FACEJOBS_REQUIRE_GPU=1 (`need_gpu`, tests/conftest.py); `bench/gpu_smoke.sh` runs them.
"""

from __future__ import annotations

import pytest
import torch

from tests.support.jobs import owner_of, submit
from tests.support.services import Stack
from workers.runners.probe import device_info, timed_matmul


def test_the_cpu_matmul_reports_the_dtype_it_ran_and_its_error() -> None:
    cpu = torch.device("cpu")
    fp32 = timed_matmul(cpu, 128, 1, "float32")
    assert (fp32["matmul_dtype"], fp32["matmul_size"]) == ("float32", 128)
    assert fp32["matmul_rel_error"] < 1e-6
    # Half on the CPU is emulated, so the probe times float32 and says so.
    assert timed_matmul(cpu, 64, 1, "float16")["matmul_dtype"] == "float32"
    bf16 = timed_matmul(cpu, 128, 1, "bfloat16")
    # A bfloat16 product rounds to 8 mantissa bits: an error near 2^-9, far above float32's.
    assert bf16["matmul_dtype"] == "bfloat16"
    assert 1e-4 < bf16["matmul_rel_error"] < 1e-2


def test_deterministic_mode_is_applied_in_each_worker_process(embedded_stack: Stack) -> None:
    stack = embedded_stack
    plain = submit(stack, {"matmul_size": 64, "matmul_repeats": 1})
    stack.start_worker(name="plain")
    assert stack.wait_job(plain, timeout=120)["result"]["deterministic"] is False
    stack.stop_workers()
    strict = submit(stack, {"matmul_size": 64, "matmul_repeats": 1})
    stack.start_worker(name="strict", extra_env={"FACEJOBS_DETERMINISTIC": "true"})
    job = stack.wait_job(strict, timeout=120)
    assert (job["status"], job["result"]["deterministic"]) == ("succeeded", True)


# -- on a GPU host --------------------------------------------------------------------------------


@pytest.mark.gpu
def test_the_cuda_matmul_in_float32_and_bfloat16() -> None:
    cuda = torch.device("cuda")
    info = device_info(cuda)
    assert (info["device"], info["cuda_available"]) == ("cuda", True)
    assert info["device_name"] == torch.cuda.get_device_name(0)
    assert 0 < info["memory_free_bytes"] <= info["memory_total_bytes"]
    fp32 = timed_matmul(cuda, 2048, 3, "float32")
    assert fp32["matmul_dtype"] == "float32"
    # torch's default keeps TF32 off for float32 matmuls: full float32 accuracy.
    assert fp32["matmul_rel_error"] < 1e-5
    bf16 = timed_matmul(cuda, 2048, 3, "bfloat16")
    assert bf16["matmul_dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")
    if torch.cuda.is_bf16_supported():
        assert 1e-4 < bf16["matmul_rel_error"] < 1e-2
        assert bf16["gflops"] > fp32["gflops"]  # tensor cores: the reason the branch exists


@pytest.mark.gpu
def test_a_worker_pinned_to_cuda_runs_a_probe(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job_id = submit(stack, {"matmul_size": 1024, "matmul_repeats": 3, "dtype": "bfloat16"})
    stack.start_worker(extra_env={"FACEJOBS_DEVICE": "cuda"})
    job = stack.wait_job(job_id, timeout=180)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert (result["device"], result["cuda_available"]) == ("cuda", True)
    assert result["device_name"] == torch.cuda.get_device_name(0)
    assert result["matmul_dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")


@pytest.mark.gpu
def test_out_of_memory_on_cuda_fails_the_job_and_keeps_the_process(embedded_stack: Stack) -> None:
    stack = embedded_stack
    too_big = 2 * torch.cuda.get_device_properties(0).total_memory / 2**30
    job_id = submit(stack, {"matmul_size": 64, "allocate_gib": round(too_big, 1)})
    stack.start_worker(extra_env={"FACEJOBS_DEVICE": "cuda"})
    job = stack.wait_job(job_id, timeout=180)
    assert (job["status"], job["attempt"]) == ("failed", 1)
    head = "out of memory on cuda (probe): lower matmul_size (now 64), or run it on a worker with more memory. "
    assert job["error"].startswith(head + "torch said: CUDA out of memory. Tried to allocate"), job["error"]
    # The process stays (out of memory breaks nothing) and its memory was given back: a job that
    # holds a real allocation runs next in the same process.
    pid = int(owner_of(stack, job_id, 1).rsplit("/", 1)[1])
    next_id = submit(stack, {"matmul_size": 64, "allocate_gib": 1.0})
    done = stack.wait_job(next_id, timeout=180)
    assert done["status"] == "succeeded", done
    assert (done["result"]["allocated_bytes"], done["result"]["pid"]) == (2**30, pid)
