"""One torch thread around work whose exact numbers a test depends on.

Float sums (convolutions, matmuls, BatchNorm statistics) are split across OpenMP threads, so a
model trained with 2 threads differs in its last bits from one trained with 1, and after a few
epochs in more than its last bits. Workers run with `FACEJOBS_TORCH_THREADS=1`; the test process
pins itself the same way here, so `OMP_NUM_THREADS=1` and `=2` train the same model (on one CPU).
On a shared 2-core machine one thread is also faster for these small networks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with `torch.set_num_threads(1)`, then restore the previous count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
