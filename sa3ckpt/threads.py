"""BLAS threads for thread-pool workers: no oversubscription.

The merge and the bases command run NumPy/LAPACK in a few worker threads. OpenBLAS (and
MKL) start their own threads per call, one per core by default, so two workers on two cores
ran four-plus busy threads: an XS merge measured 626 s that way and 61 s with one BLAS
thread. OpenBLAS's thread count is process-wide, but MKL (preloaded for MLX on Linux,
`sa3ckpt.mlx_runtime`) and OpenMP keep theirs per thread: a new thread starts from the
process default whatever the pool's creator set. So `blas_limited_pool` sets the limit once
around the pool (cores // workers, at least 1) and again in each worker as it starts.
threadpoolctl does this for every BLAS runtime loaded, and the outer limit restores the
previous setting on exit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager

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


def _limit_this_thread(threads: int) -> None:
    """A pool worker's start: per-thread BLAS runtimes (MKL, OpenMP) take the limit here.
    Not restored: the setting dies with the worker, and the process-wide ones are the outer
    limit's to restore."""
    threadpool_limits(limits=threads, user_api="blas")


def blas_worker_pool(workers: int) -> ThreadPoolExecutor:
    """A pool of `workers` threads each taking its share of the BLAS threads as it starts
    (run it inside `limit_blas(workers)` for the process-wide runtimes)."""
    return ThreadPoolExecutor(
        max_workers=workers,
        initializer=_limit_this_thread,
        initargs=(blas_threads_per_worker(workers),),
    )


@contextmanager
def blas_limited_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool of `workers` whose BLAS calls together use the cores once."""
    with limit_blas(workers), blas_worker_pool(workers) as pool:
        yield pool


__all__ = [
    "blas_limited_pool",
    "blas_threads_per_worker",
    "blas_worker_pool",
    "cores",
    "limit_blas",
]
