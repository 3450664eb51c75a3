"""Adapter types, detection, math, XS bases and trainable MLX modules."""
