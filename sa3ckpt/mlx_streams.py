"""Independent MLX work spread over the CPU cores: one CPU stream per core.

MLX runs each stream's operations on that stream's own scheduler thread, one operation at a
time, and its CPU kernels other than the matrix products (casts, elementwise arithmetic,
reductions) are single-threaded. So work that splits into independent parts (the cases of
verify's probe, the tensors of a model being loaded, the targets of a live application)
takes one core, whatever the machine has, unless the parts go to several streams and are
evaluated together. The results do not depend on the stream an operation ran on.

Streams belong to the thread that made them, so each thread gets its own, made once and
reused. The matrix products inside the parts should then take cores // streams BLAS
threads each (`blas_share`); `sa3ckpt.mlx_runtime.mlx_blas_threads` sets that where MLX's
threads read it. When MLX's default device is not the CPU (Metal on macOS), everything
stays on the default stream: the GPU is one device, and moving the work to CPU streams
would change where it runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import mlx.core as mx

from sa3ckpt.mlx_runtime import mlx_blas_threads
from sa3ckpt.threads import blas_threads_per_worker, cores

_LOCAL = threading.local()


def cpu_streams(count: int) -> list[mx.Stream]:
    """`count` CPU streams of the calling thread, made once and reused (one: the default)."""
    if count <= 1:
        return [mx.default_stream(mx.cpu)]
    made: list[mx.Stream] = getattr(_LOCAL, "cpu", [])
    while len(made) < count:
        made.append(mx.new_stream(mx.cpu))
    _LOCAL.cpu = made
    return made[:count]


def work_streams() -> list[mx.Stream]:
    """The streams to spread independent parts over: one CPU stream per core when MLX
    computes on the CPU, else the default device's one stream."""
    if mx.default_device() != mx.cpu:
        return [mx.default_stream(mx.default_device())]
    return cpu_streams(cores())


@contextmanager
def blas_share(streams: list[mx.Stream]) -> Iterator[None]:
    """Matrix products in MLX's threads on cores // len(streams) BLAS threads each, while
    the block evaluates work on `streams`."""
    with mlx_blas_threads(blas_threads_per_worker(len(streams))):
        yield


__all__ = ["blas_share", "cpu_streams", "work_streams"]
