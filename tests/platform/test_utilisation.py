"""Utilisation: CPU, memory (psutil) and GPU (NVML) sampled with the heartbeat, per job and per worker."""

from __future__ import annotations

import mmap
import threading
import time

import pytest

from tests.support import wait_for
from tests.support.jobs import FAST_LEASES, submit
from tests.support.services import Stack
from workers.utilisation import MIB, JobPeaks, Sampler


def _resident(mib: int) -> mmap.mmap:
    """`mib` MiB of fresh pages, each written, so resident (not memory the allocator kept from earlier tests)."""
    area = mmap.mmap(-1, mib * MIB)
    for offset in range(0, mib * MIB, mmap.PAGESIZE):
        area[offset] = 1
    return area


def test_sampler_sees_a_busy_core_and_new_memory() -> None:
    sampler = Sampler(gpu=False)
    time.sleep(0.5)
    idle = sampler.sample()
    cpu0, wall0 = time.process_time(), time.monotonic()
    stop = wall0 + 1.0

    def spin() -> None:
        while time.monotonic() < stop:
            pass

    t = threading.Thread(target=spin)
    t.start()
    t.join()
    busy = sampler.sample()
    # The share of a core this process had over the interval, as the kernel counts it (on a loaded host a
    # spinning thread gets less than a whole core): what the sample must say, within rounding and timing.
    expected = 100 * (time.process_time() - cpu0) / (time.monotonic() - wall0)
    assert busy["sys/cpu_pct"] == pytest.approx(expected, rel=0.15, abs=3), (busy, expected)
    assert idle["sys/cpu_pct"] < 10 and expected > 5, (idle, expected)
    held = _resident(256)
    grown = sampler.sample()["sys/rss_mb"] - busy["sys/rss_mb"]
    assert 240 <= grown <= 272, grown
    assert set(busy) == {"sys/cpu_pct", "sys/rss_mb"}  # no GPU asked for: no GPU keys
    held.close()


def test_job_peaks_measure_the_peak_not_the_end() -> None:
    peaks = JobPeaks()
    peaks.begin(None)
    import psutil

    before = psutil.Process().memory_info().rss / MIB  # this process only, as its high-water mark is
    _resident(200).close()  # unmapped before the end: only the high-water mark still knows
    peak = peaks.result()["peak_rss_mb"]
    assert peak - before >= 190, (before, peak)


def test_jobs_get_sys_series_peaks_and_the_worker_its_load(stack: Stack) -> None:
    job_id = submit(stack, {"matmul_size": 64, "matmul_repeats": 1, "duration_seconds": 3})
    stack.start_worker(extra_env=FAST_LEASES)
    job = stack.wait_job(job_id)
    assert job["status"] == "succeeded", job
    events = stack.client.get(f"/jobs/{job_id}/events", params={"type": "sys"}).json()["data"]
    # A sample every heartbeat (0.5 s) of a job of about 3 s: a handful at least, whatever the host's load.
    assert len(events) >= 3, events
    for e in events:
        assert set(e["data"]) == {"t", "sys/cpu_pct", "sys/rss_mb"} and e["attempt"] == 1
        assert 50 < e["data"]["sys/rss_mb"] < 8000 and e["data"]["sys/cpu_pct"] >= 0
    times = [e["data"]["t"] for e in events]
    assert times == sorted(times) and times[-1] >= 2.0
    peaks = job["result"]["sys"]
    assert set(peaks) == {"peak_rss_mb"}  # a CPU worker: no GPU figure
    assert peaks["peak_rss_mb"] >= max(e["data"]["sys/rss_mb"] for e in events) * 0.5
    # The worker row: the latest sample of the whole worker (its main process and the pool child).
    worker = wait_for(lambda: next(iter(stack.client.get("/workers").json()), None), 30, "the worker row")
    load = wait_for(lambda: stack.client.get("/workers").json()[0]["load"], 30, "a load sample on the worker row")
    assert set(load) == {"sys/cpu_pct", "sys/rss_mb"} and load["sys/rss_mb"] > 50, (worker, load)


@pytest.mark.gpu
def test_nvml_sees_the_gpu_memory_torch_allocates() -> None:
    import torch

    from tests.support import need_gpu

    device = need_gpu()
    sampler = Sampler(gpu=True, visible=None)
    peaks = JobPeaks()
    peaks.begin(device)
    before = sampler.sample()
    assert {"sys/gpu_util_pct", "sys/gpu_mem_mb"} <= set(before), before
    held = torch.ones(512 * MIB, dtype=torch.uint8, device=device)
    torch.cuda.synchronize()
    after = sampler.sample()
    assert after["sys/gpu_mem_mb"] - before["sys/gpu_mem_mb"] >= 500, (before, after)
    del held
    torch.cuda.empty_cache()
    result = peaks.result()
    assert result["peak_gpu_mem_mb"] >= 512, result  # torch's own peak, after the tensor is gone
