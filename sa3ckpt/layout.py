"""Tensor layout conversions between canonical 2-D (fan_out, fan_in) and stored layouts.

Adapter math works on the PyTorch 2-D view of a weight: Linear (out, in) as is, Conv1d
(out, in, k) reshaped in-major / k-minor to (out, in*k). Files store other layouts: MLX keeps
Conv1d as (out, k, in), ggml lists dimensions in reverse, and legacy writers stored
magnitudes as 2-D column or row vectors. Each stored layout is a row in `LAYOUTS` with a pair
of functions, so every reader and writer converts through the same tested code.

Functions take numpy or MLX arrays alike (only `.reshape`, `.transpose`, `.shape` are used).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class ArrayLike(Protocol):
    shape: Any

    def reshape(self, *shape: Any) -> Any: ...

    def transpose(self, *axes: Any) -> Any: ...


def torch_conv1d_to_2d(weight: Any) -> Any:
    """(out, in, k) -> (out, in*k), the PyTorch view the adapter math uses."""
    out, cin, k = weight.shape
    return weight.reshape(out, cin * k)


def torch_conv1d_from_2d(weight_2d: Any, kernel_size: int) -> Any:
    """(out, in*k) -> (out, in, k)."""
    out, flat = weight_2d.shape
    if flat % kernel_size:
        raise ValueError(f"fan_in {flat} is not a multiple of kernel size {kernel_size}")
    return weight_2d.reshape(out, flat // kernel_size, kernel_size)


def mlx_conv1d_to_2d(weight: Any) -> Any:
    """MLX (out, k, in) -> canonical (out, in*k): transpose to PyTorch order, then flatten."""
    out, k, cin = weight.shape
    return weight.transpose(0, 2, 1).reshape(out, cin * k)


def mlx_conv1d_from_2d(weight_2d: Any, kernel_size: int) -> Any:
    """Canonical (out, in*k) -> MLX (out, k, in)."""
    return torch_conv1d_from_2d(weight_2d, kernel_size).transpose(0, 2, 1)


def ggml_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """ggml's `ne` order for a row-major array: dimensions reversed (innermost first)."""
    return tuple(reversed(shape))


def from_ggml_shape(ne: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major shape for a ggml `ne` tuple (the same reversal, its own inverse)."""
    return tuple(reversed(ne))


def squeeze_magnitude(magnitude: Any, fan_out: int, fan_in: int) -> tuple[Any, str | None]:
    """Legacy magnitudes to 1-D, plus the orientation a 2-D shape reveals.

    (fan_out, 1) -> rows, (1, fan_in) -> cols; 1-D vectors are returned unchanged with no
    orientation claim (their length may still tell; that judgement belongs to the caller,
    which knows about ambiguous square layers).
    """
    shape = tuple(magnitude.shape)
    if len(shape) == 1:
        return magnitude, None
    if len(shape) == 2 and shape == (fan_out, 1):
        return magnitude.reshape(fan_out), "rows"
    if len(shape) == 2 and shape == (1, fan_in):
        return magnitude.reshape(fan_in), "cols"
    raise ValueError(f"magnitude shape {shape} fits neither ({fan_out}, 1) nor (1, {fan_in})")


@dataclass(frozen=True)
class Layout:
    """A stored weight layout and how to reach the canonical 2-D view from it and back.

    `from_2d` takes the canonical 2-D array and the kernel size (1 for Linear).
    """

    name: str
    description: str
    to_2d: Callable[[Any], Any]
    from_2d: Callable[[Any, int], Any]


def _identity_to_2d(weight: Any) -> Any:
    if len(weight.shape) != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    return weight


def _identity_from_2d(weight_2d: Any, kernel_size: int) -> Any:
    return weight_2d


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("linear", "Linear (out, in) in any runtime", _identity_to_2d, _identity_from_2d),
        Layout(
            "torch-conv1d", "PyTorch Conv1d (out, in, k)", torch_conv1d_to_2d, torch_conv1d_from_2d
        ),
        Layout("mlx-conv1d", "MLX Conv1d (out, k, in)", mlx_conv1d_to_2d, mlx_conv1d_from_2d),
    )
}

# Which layout a base weight of each layer kind has in each base format.
BASE_LAYOUT: dict[tuple[str, str], str] = {
    ("official", "linear"): "linear",
    ("official", "conv1d"): "torch-conv1d",
    ("mlx", "linear"): "linear",
    ("mlx", "conv1d"): "mlx-conv1d",
}


def to_canonical_2d(weight: Any, layout: str) -> Any:
    """Stored weight (or delta) -> canonical 2-D (fan_out, fan_in)."""
    return LAYOUTS[layout].to_2d(weight)


def from_canonical_2d(weight_2d: Any, layout: str, kernel_size: int = 1) -> Any:
    """Canonical 2-D weight (or delta) -> the stored layout."""
    return LAYOUTS[layout].from_2d(weight_2d, kernel_size)


def stored_shape(shape_2d: tuple[int, int], layout: str, kernel_size: int = 1) -> tuple[int, ...]:
    """The stored shape of a canonical (fan_out, fan_in) weight in a layout."""
    out, fan_in = shape_2d
    if layout == "linear":
        return (out, fan_in)
    if fan_in % kernel_size:
        raise ValueError(f"fan_in {fan_in} is not a multiple of kernel size {kernel_size}")
    cin = fan_in // kernel_size
    return (out, cin, kernel_size) if layout == "torch-conv1d" else (out, kernel_size, cin)
