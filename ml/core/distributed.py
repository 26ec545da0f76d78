"""N ranks inside one job: spawn, rendezvous on a free localhost port, a watchdog, rank 0's channel.

`run_ranks(target, world_size, args, on_message, should_stop)` starts `world_size` processes with
`torch.multiprocessing`'s spawn context, each calling `target(rank, world_size, port, channel,
*args)`. The caller's process runs no rank: it is the job's host. Rank 0 sends what the job
context needs (progress, log lines, checkpoint bytes, the result) over the channel's queue and
the host replays them with `on_message`; the host polls `should_stop()` and raises the shared stop
flag (also right after `on_message` answers True, as for a checkpoint), which every rank reads
through `RankChannel.stop_requested` (all-reduced, so all agree). Each rank should call
`exit_with_parent()` first, so that a host killed outright takes its ranks with it.

The watchdog: a rank that exits with a non-zero code (killed, out of memory, an exception) makes
the host terminate the other ranks after `grace_s` and raise `RankFailed`; the others' collectives
also fail on their own within the process group's `timeout` (gloo notices a closed peer at once).
No rank outlives `run_ranks`.
"""

from __future__ import annotations

import datetime
import multiprocessing.process
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = [
    "RankChannel", "RankFailed", "average_buffers", "exit_with_parent", "free_port", "init_rank", "rank_metrics",
    "run_ranks",
]  # fmt: skip

POLL_S = 0.2


class RankFailed(RuntimeError):
    """A rank died or raised: the whole group failed this attempt (retry from the last checkpoint)."""


def free_port() -> int:
    """A TCP port free on localhost now (the rendezvous of one job's ranks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RankChannel:
    """What a rank shares with the host: rank 0's message queue and the stop flag."""

    messages: Any  # a spawn-context Queue
    stop: Any  # a spawn-context Event

    def send(self, *message: Any) -> None:
        """Queue a message for the host (rank 0 only sends)."""
        self.messages.put(message)

    def stop_requested(self) -> bool:
        """True on every rank when the host asked any of them to stop (a collective where initialised)."""
        flag = torch.tensor([1.0 if self.stop.is_set() else 0.0])
        if dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


def exit_with_parent(poll_s: float = 1.0) -> None:
    """End this rank (exit code 1) as soon as the process that spawned it is gone: no orphan waits on."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def average_buffers(module: torch.nn.Module) -> None:
    """Average `module`'s floating buffers (batch norm's running statistics) over the ranks (a collective).

    With `broadcast_buffers=False` each rank's batch norm tracks its own slice of the batch;
    the average is what one rank seeing the whole batch would track, within the between-rank spread.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    with torch.no_grad():
        for buf in module.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(world)


def rank_metrics(samples_per_s: float, device: torch.device) -> dict[str, float]:
    """Every rank's throughput and peak GPU memory, as job metrics (a collective: all ranks call it).

    Each rank's (samples/s, `torch.cuda.max_memory_allocated` in MiB) goes into one all_gather of
    a 2-element tensor; the answer, the same on every rank, is `rank{r}/samples_per_s` for each
    rank and, on CUDA only, `rank{r}/gpu_mem_mb`.
    """
    cuda = device.type == "cuda"
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else 0.0
    mine = torch.tensor([float(samples_per_s), mem], dtype=torch.float64, device=device)
    world = dist.get_world_size() if dist.is_initialized() else 1
    parts = [mine] if world == 1 else [torch.empty_like(mine) for _ in range(world)]
    if world > 1:
        dist.all_gather(parts, mine)
    out: dict[str, float] = {}
    for rank, part in enumerate(parts):
        rate, mb = part.tolist()
        out[f"rank{rank}/samples_per_s"] = rate
        if cuda:
            out[f"rank{rank}/gpu_mem_mb"] = mb
    return out


def init_rank(rank: int, world_size: int, port: int, device: torch.device, timeout_s: float) -> None:
    """`init_process_group` for this rank: NCCL on CUDA (device set first), gloo on CPU."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def run_ranks(
    target: Callable[..., None],
    world_size: int,
    args: tuple[Any, ...],
    on_message: Callable[[tuple[Any, ...]], bool | None],
    should_stop: Callable[[], bool] = lambda: False,
    grace_s: float = 30.0,
    stop_poll_s: float = 1.0,
) -> None:
    """Run `target(rank, world_size, port, channel, *args)` on `world_size` spawned ranks; see the module doc.

    Raises:
        RankFailed: a rank exited non-zero; the others were ended.
    """
    ctx = mp.get_context("spawn")
    channel = RankChannel(ctx.Queue(), ctx.Event())
    port = free_port()
    # A Celery prefork child is daemonic, and multiprocessing refuses children to daemons; the
    # ranks are ended here (and end themselves with their parent: `exit_with_parent`), which is
    # what that rule protects.
    # Billiard (Celery's pool) also leaves its own AuthenticationString as the authkey, which the
    # standard library's spawn will not pickle: the ranks get the same key as a standard one.
    config = mp.current_process()._config  # type: ignore[attr-defined]
    saved = {k: config.get(k) for k in ("daemon", "authkey")}
    config["daemon"] = False
    if saved["authkey"] is not None:
        config["authkey"] = multiprocessing.process.AuthenticationString(bytes(saved["authkey"]))  # type: ignore[attr-defined]
    try:
        procs = [
            ctx.Process(target=target, args=(r, world_size, port, channel, *args), daemon=True)
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
    finally:
        config.update(saved)
    last_stop_poll = 0.0
    failed_at: float | None = None
    failure = ""
    try:
        while True:
            urgent = _drain(channel, on_message, POLL_S)
            now = time.monotonic()
            if (urgent or now - last_stop_poll >= stop_poll_s) and not channel.stop.is_set():
                last_stop_poll = now
                if should_stop():
                    channel.stop.set()
            codes = [p.exitcode for p in procs]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad and failed_at is None:
                failed_at = now
                failure = ", ".join(f"rank {r} exited with code {c}" for r, c in bad)
            if all(c is not None for c in codes):
                break
            if failed_at is not None and now - failed_at > grace_s:
                break
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
        _drain(channel, on_message, 0.0)
    if failure:
        raise RankFailed(f"{failure}; the other ranks were stopped")


def _drain(channel: RankChannel, on_message: Callable[[tuple[Any, ...]], bool | None], wait_s: float) -> bool:
    """Hand every queued message to `on_message`; wait up to `wait_s` for the first.

    Returns:
        True when `on_message` answered True for one (poll the stop request now: after a checkpoint).
    """
    block, urgent = wait_s > 0, False
    while True:
        try:
            message = channel.messages.get(block, wait_s) if block else channel.messages.get_nowait()
        except queue.Empty:
            return urgent
        block = False
        urgent = bool(on_message(message)) or urgent
