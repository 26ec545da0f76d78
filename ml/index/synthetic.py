"""Seeded random unit vectors with neighbour structure, for the index's recall tests and bench/search.py.

Uniform random vectors on the 512-d sphere are a poor model of face embeddings for a search
benchmark: every pair's cosine is 0 +- 0.044, the "nearest" ten are hardly nearer than the rest,
and any approximate index degenerates to a scan (IVF-Flat probing 10% of its lists found 26% of
the true top 10 here). Embeddings of a trained network lie near a low-dimensional manifold, so the
vectors here are a random linear map of `intrinsic`-dimensional Gaussian codes plus a little
isotropic noise (so no row lies exactly in the 32-d subspace), normalised: at 100k rows the nearest
of a query has cosine ~0.69 and its tenth ~0.61.
Queries are drawn the same way (new codes): they are not copies of rows.
"""

from __future__ import annotations

import numpy as np


def synthetic_embeddings(
    n: int, dim: int, seed: int, intrinsic: int = 32, noise: float = 0.3, chunk: int = 100_000
) -> tuple[np.ndarray, np.random.Generator]:
    """(n unit rows (n, dim) float32, the generator to draw queries from with `draw_like`).

    Written chunk by chunk, so 1M x 512 needs its 2 GB and little more.
    """
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((intrinsic, dim), dtype=np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        out[start : start + chunk] = _draw(rng, basis, min(chunk, n - start), noise)
    return out, rng


def draw_like(
    rng: np.random.Generator, n: int, dim: int, seed: int, intrinsic: int = 32, noise: float = 0.3
) -> np.ndarray:
    """n more unit rows from the same distribution as `synthetic_embeddings(.., seed)` (same basis)."""
    basis = np.random.default_rng(seed).standard_normal((intrinsic, dim), dtype=np.float32)
    return _draw(rng, basis, n, noise)


def _draw(rng: np.random.Generator, basis: np.ndarray, n: int, noise: float) -> np.ndarray:
    intrinsic, dim = basis.shape
    x = rng.standard_normal((n, intrinsic), dtype=np.float32) @ basis
    x += (noise * np.sqrt(intrinsic / dim)) * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x
