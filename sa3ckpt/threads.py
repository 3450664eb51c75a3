"""BLAS threads for thread-pool workers: no oversubscription.

The merge and the bases command run NumPy/LAPACK in a few worker threads. OpenBLAS (and
MKL) start their own threads per call, one per core by default, so two workers on two cores
ran four-plus busy threads: an XS merge measured 626 s that way and 61 s with one BLAS
thread. The BLAS thread count is process-wide (not per Python thread), so the limit is set
once around the pool: cores // workers, at least 1. threadpoolctl does this for every BLAS
and OpenMP runtime NumPy may have loaded, and restores the previous setting on exit.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

from threadpoolctl import threadpool_limits


def cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def blas_threads_per_worker(workers: int) -> int:
    """BLAS threads each of ``workers`` concurrent workers may use without oversubscribing."""
    return max(1, cores() // max(1, workers))


def limit_blas(workers: int) -> AbstractContextManager[object]:
    """A context limiting BLAS threads so ``workers`` workers together use the cores once."""
    return threadpool_limits(limits=blas_threads_per_worker(workers), user_api="blas")


__all__ = ["blas_threads_per_worker", "cores", "limit_blas"]
