"""sa3ckpt: know, check, convert and merge Stable Audio 3 adapter checkpoints.

Layers (lower never imports higher): names, layout, targets, io, adapters, ops, train, cli.
`mlx_runtime` comes first: whatever imports mlx after this (sa3ckpt, the TUI, tests, a
user's script) gets the optimized BLAS on Linux and no per-thread compile cache.
"""

from sa3ckpt import mlx_runtime

mlx_runtime.install()

__version__ = "0.1.0"
