"""Shared by every test module: sa3ckpt is imported before any test module runs.

Test modules import `mlx.core` directly (and isort puts it before `sa3ckpt`), so without
this the first import of mlx would not go through `sa3ckpt.mlx_runtime` and the tests would
run MLX on the reference BLAS, with compile caches in worker threads.
"""

import sa3ckpt  # noqa: F401
