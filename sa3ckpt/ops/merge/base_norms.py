"""The base's row and column norms the stack report needs, streamed from the base file.

Under blend / delta semantics the stack report (`ops.inspect.stack_report`) predicts sign
flips from the row and column L2 norms of each target's canonical 2-D base weight, before
anything is written. Each target's canonical rows are read tile by tile where they lie, as
the merge kernel reads them (`BaseCheckpoint.stored_bytes` + `io.tensor_rows.FileRows`; a
tensor not stored plainly, e.g. a compressed npz member, is read whole and tiled in memory:
`ArrayRows`), and their squares summed in one compiled pass (`adapters.tiled_norms`),
targets on a few worker threads. A base dtype the tiles do not read (F64, a quantised GGUF
type) is upcast whole to float32 first, as the merge does. The values are
`ops.inspect.base_norms_of` of the float32 canonical weight up to the float64 summation order.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters import tiled
from sa3ckpt.adapters.tiled_norms import row_col_norms
from sa3ckpt.io.base_checkpoint import BaseCheckpoint
from sa3ckpt.io.tensor_rows import ArrayRows, FileRows
from sa3ckpt.layout import LAYOUTS, row_view
from sa3ckpt.ops.merge.target import canonical_w0

WORKERS = 2  # targets read in parallel (the kernels release the GIL; no BLAS here)


def target_norms(
    base: BaseCheckpoint, key: str, stop: threading.Event | None = None
) -> dict[str, np.ndarray]:
    """{"rows", "cols"} float64 L2 norms of base tensor `key` in its canonical 2-D view."""
    info = base.tensors[key]
    view = row_view(base.layout_of(info.shape, key), info.shape)
    shape = (view.fan_out, view.fan_in)
    code = info.dtype
    if code not in tiled.STORED_CODES:
        w2d = dtypes.to_float32(canonical_w0(base, key))
        source = ArrayRows(row_view(LAYOUTS["linear"], shape), w2d)
        return row_col_norms(shape, "F32", source, stop)
    where = base.stored_bytes(key)
    if where is None:
        return row_col_norms(shape, code, ArrayRows(view, base.read(key)), stop)
    rows = FileRows(view, code, where[0], where[1], key)
    try:
        return row_col_norms(shape, code, rows, stop)
    finally:
        rows.close()


def base_norms(
    base: BaseCheckpoint, keys: Sequence[str], workers: int = WORKERS
) -> dict[str, dict[str, np.ndarray]]:
    """`target_norms` of each key, `workers` targets at a time; key -> norms.

    An error or Ctrl-C stops the running workers at their next tile and drops the queued ones.
    """
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {key: pool.submit(target_norms, base, key, stop) for key in keys}
        return {key: future.result() for key, future in futures.items()}
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
