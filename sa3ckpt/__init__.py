"""sa3ckpt: know, check, convert and merge Stable Audio 3 adapter checkpoints.

Layers (lower never imports higher): names, layout, targets, io, adapters, ops, train, cli.
"""

__version__ = "0.1.0"
