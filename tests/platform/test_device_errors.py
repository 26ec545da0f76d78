"""Device faults through a real worker: a fatal one moves the job to a fresh process, OOM names the fix.

The probe's test-only `fault` param raises genuine `torch.AcceleratorError` / `torch.OutOfMemoryError`
objects (both constructible on the CPU), so the worker's handling runs here exactly as on a GPU host.
"""

from __future__ import annotations

import pytest
import torch

from jobs.kinds import registry
from jobs.params.probe import ProbeParams
from tests.support.jobs import event_tuples as events
from tests.support.jobs import owner_of, submit
from tests.support.services import Stack
from workers.device_faults import DeviceUnavailableError, classify, oom_message, resolve_device

ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"


def test_a_fatal_device_error_requeues_the_job_to_a_fresh_process(stack: Stack) -> None:
    job_id = submit(stack, {"matmul_size": 64, "matmul_repeats": 1, "fault": "accelerator_error", "fault_attempts": 1})
    # A visible GPU does not decide the device: FACEJOBS_DEVICE=cpu (the test workers' setting) does.
    worker = stack.start_worker(extra_env={"CUDA_VISIBLE_DEVICES": "0"})
    job = stack.wait_job(job_id, timeout=120)
    assert (job["status"], job["attempt"], job["preemptions"], job["error"]) == ("succeeded", 2, 1, None)
    assert job["result"]["device"] == "cpu"
    # Not counted against the job: its error budget is untouched.
    assert job["attempt"] - job["preemptions"] == 1
    first, second = owner_of(stack, job_id, 1), owner_of(stack, job_id, 2)
    node, first_pid = first.rsplit("/", 1)
    assert second.rsplit("/", 1)[0] == node  # the same worker ...
    assert int(first_pid) != job["result"]["pid"] == int(second.rsplit("/", 1)[1])  # ... in a new process
    assert worker.poll() is None  # the worker itself lives on; only its pool child was replaced
    assert events(stack, job_id) == [
        (0, "status", "queued"),
        (1, "status", f"running on {first} (attempt 1)"),
        (
            1,
            "error",
            f"requeued: fatal device error on {first} (AcceleratorError: {ILLEGAL_ACCESS}); "
            "a fresh worker process takes it over (not counted as a failure)",
        ),
        (2, "status", f"running on {second} (attempt 2)"),
        (2, "status", "succeeded"),
    ]
    assert [(w["id"], w["device"]) for w in stack.client.get("/workers").json()] == [(node, "cpu")]


@pytest.mark.fault
def test_a_job_that_always_breaks_the_device_fails_after_the_requeue_limit(services_stack: Stack) -> None:
    stack = services_stack
    params = {"matmul_size": 64, "fault": "accelerator_error", "fail_with": "CUDA error: device-side assert triggered"}
    job_id = submit(stack, params)
    stack.start_worker(extra_env={"FACEJOBS_MAX_DEVICE_ERROR_REQUEUES": "1"})
    job = stack.wait_job(job_id, timeout=120)
    assert (job["status"], job["attempt"], job["preemptions"]) == ("failed", 2, 1)
    assert job["error"] == (
        "AcceleratorError: CUDA error: device-side assert triggered\n\na fatal device error on each of 2 worker "
        "processes: the job itself seems to trigger it (a device-side assert usually means an index out of range, "
        "e.g. labels beyond the number of classes); run it on the CPU (queue cpu) to see the error in plain words"
    )
    pids = {int(owner_of(stack, job_id, a).rsplit("/", 1)[1]) for a in (1, 2)}
    assert len(pids) == 2
    # The process that failed it exits too: the next job runs in a third process.
    next_id = submit(stack, {"matmul_size": 64, "matmul_repeats": 1})
    done = stack.wait_job(next_id, timeout=120)
    assert done["status"] == "succeeded"
    assert done["result"]["pid"] not in pids


def test_out_of_memory_fails_at_once_naming_the_params_to_lower(stack: Stack) -> None:
    job_id = submit(stack, {"matmul_size": 64, "fault": "out_of_memory"})
    stack.start_worker()
    job = stack.wait_job(job_id, timeout=120)
    assert (job["status"], job["attempt"], job["preemptions"]) == ("failed", 1, 0)
    assert job["error"] == (
        "out of memory on cpu (probe): lower matmul_size (now 64), or run it on a worker with more memory. "
        "torch said: CUDA out of memory. Tried to allocate 20.00 GiB"
    )
    assert events(stack, job_id)[-1] == (1, "error", job["error"])
    # Out of memory leaves the process healthy: the next job runs in the same one.
    next_id = submit(stack, {"matmul_size": 64, "matmul_repeats": 1})
    done = stack.wait_job(next_id, timeout=120)
    assert done["status"] == "succeeded"
    assert done["result"]["pid"] == int(owner_of(stack, job_id, 1).rsplit("/", 1)[1])


def test_every_kind_has_an_out_of_memory_hint_made_of_its_own_params() -> None:
    kinds = registry()
    for name, spec in kinds.items():
        assert spec.oom_hints, name
        missing = [p for p in spec.oom_hints if p not in spec.params.model_fields]
        assert missing == [], f"{name}: {missing}"


def test_oom_message_lists_current_values() -> None:
    params = ProbeParams(matmul_size=2048)
    exc = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")
    assert oom_message("probe", params, torch.device("cuda", 0), exc) == (
        "out of memory on cuda:0 (probe): lower matmul_size (now 2048), or run it on a worker with more memory. "
        "torch said: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    from jobs.params.invert import InvertParams

    inv = InvertParams(model="job:" + "a" * 32, images_per_class=8)
    assert oom_message("invert", inv, None, exc).startswith(
        "out of memory on the device (invert): lower images_per_class (now 8) or classes, or run it"
    )


def test_faults_are_classified_by_type_and_through_wrappers() -> None:
    from jobs.errors import JobInputError

    def wrapped(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except RuntimeError as exc:
                raise JobInputError("the model could not be loaded") from exc
        except JobInputError as outer:
            return outer

    def hidden(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except RuntimeError:
                raise ValueError("it cannot take our z") from None
        except ValueError as outer:
            return outer

    accel = torch.AcceleratorError(ILLEGAL_ACCESS)
    oom = torch.OutOfMemoryError("CUDA out of memory.")
    assert [classify(e) for e in (accel, wrapped(accel), hidden(accel))] == ["fatal"] * 3
    assert [classify(e) for e in (oom, wrapped(oom))] == ["out_of_memory"] * 2
    assert classify(RuntimeError("CUDA error: device-side assert triggered")) == "fatal"
    assert classify(DeviceUnavailableError("no GPU")) == "fatal"
    assert [classify(e) for e in (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("x"))] == [
        None,
        None,
    ]


def test_the_device_setting_decides_not_the_host() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda") == torch.device("cuda")
    else:
        with pytest.raises(DeviceUnavailableError, match=r"FACEJOBS_DEVICE=cuda but torch .* sees no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a worker without CUDA is what this test needs")
def test_a_worker_told_to_use_a_missing_gpu_hands_the_job_back(embedded_stack: Stack) -> None:
    stack = embedded_stack
    job_id = submit(stack, {"matmul_size": 64})
    stack.start_worker(extra_env={"FACEJOBS_DEVICE": "cuda", "FACEJOBS_MAX_DEVICE_ERROR_REQUEUES": "0"})
    job = stack.wait_job(job_id, timeout=120)
    assert [w["device"] for w in stack.client.get("/workers").json()] == ["cuda"]
    assert (job["status"], job["attempt"], job["preemptions"]) == ("failed", 1, 0)
    assert job["error"] == (
        f"DeviceUnavailableError: FACEJOBS_DEVICE=cuda but torch {torch.__version__} (CUDA {torch.version.cuda}) "
        "sees no CUDA device on this worker: check the driver and CUDA_VISIBLE_DEVICES, or set FACEJOBS_DEVICE=auto "
        "or cpu\n\n1 worker process took it and found no usable device: fix those workers, or submit it to "
        "another queue"
    )
