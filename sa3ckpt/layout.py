"""Tensor layout conversions between canonical 2-D (fan_out, fan_in) and stored layouts.

Adapter math works on the PyTorch 2-D view of a weight: Linear (out, in) as is, Conv1d
(out, in, k) reshaped in-major / k-minor to (out, in*k). Files store other layouts: MLX keeps
Conv1d as (out, k, in), ggml lists dimensions in reverse, and legacy writers stored
magnitudes as 2-D column or row vectors. Each stored layout is a row in `LAYOUTS` with a pair
of functions and its named axes, so every reader and writer converts (and computes kernel
sizes and shapes) through the same tested code. `BASE_LAYOUTS` says which layout each base
naming uses; `ROW_ORDERS` which fused projections a naming stores in another row-block
order (diffusers' medium `to_qkv`), for weights and adapters alike; `PEFT_CONV1D` is how PEFT
stores adapter tensors of Conv1d targets.

Functions take numpy or MLX arrays alike (only `.reshape`, `.transpose`, `.shape` are used).
"""

from __future__ import annotations

import math
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


# Stored axes are named over the canonical meaning: `out` (fan_out), `in` (input channels)
# and `k` (kernel). The canonical 2-D view is (out, in*k), in-major / k-minor like PyTorch's.
AXIS_NAMES = ("out", "in", "k")


@dataclass(frozen=True)
class Layout:
    """A stored weight layout and everything callers need to reach canonical 2-D and back.

    `axes` is the stored axis order over `AXIS_NAMES`; the kernel axis, the canonical shape
    and the stored shape follow from it. `from_2d` takes the canonical 2-D array and the kernel
    size (1 for Linear). `layer_kind` ("linear" | "conv1d") is the layer the layout stores.
    """

    name: str
    description: str
    layer_kind: str
    axes: tuple[str, ...]
    to_2d: Callable[[Any], Any]
    from_2d: Callable[[Any, int], Any]

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def kernel_axis(self) -> int | None:
        """Which stored axis holds the kernel size (None for layouts without one)."""
        return self.axes.index("k") if "k" in self.axes else None

    def _check_rank(self, shape: tuple[int, ...]) -> None:
        if len(shape) != self.ndim:
            raise ValueError(f"{self.name} weights are {self.ndim}-D, got shape {shape}")

    def kernel_size(self, shape: tuple[int, ...]) -> int:
        """The kernel size of a stored weight of this layout (1 without a kernel axis)."""
        shape = tuple(shape)
        self._check_rank(shape)
        axis = self.kernel_axis
        return 1 if axis is None else shape[axis]

    def canonical_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """The canonical (fan_out, fan_in) of a stored shape, without touching data."""
        shape = tuple(shape)
        self._check_rank(shape)
        sizes = dict(zip(self.axes, shape, strict=True))
        return sizes["out"], sizes["in"] * sizes.get("k", 1)

    def stored_shape(self, shape_2d: tuple[int, int], kernel_size: int = 1) -> tuple[int, ...]:
        """The stored shape of a canonical (fan_out, fan_in) weight with this kernel size."""
        out, fan_in = shape_2d
        k = kernel_size if self.kernel_axis is not None else 1
        if fan_in % k:
            raise ValueError(f"fan_in {fan_in} is not a multiple of kernel size {k}")
        sizes = {"out": out, "in": fan_in // k, "k": k}
        return tuple(sizes[axis] for axis in self.axes)

    def to_canonical(self, weight: Any) -> Any:
        """Stored weight (or delta) -> canonical 2-D (fan_out, fan_in)."""
        return self.to_2d(weight)

    def from_canonical(self, weight_2d: Any, kernel_size: int = 1) -> Any:
        """Canonical 2-D weight (or delta) -> this stored layout."""
        return self.from_2d(weight_2d, kernel_size)


def _identity_to_2d(weight: Any) -> Any:
    if len(weight.shape) != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    return weight


def _identity_from_2d(weight_2d: Any, kernel_size: int) -> Any:
    return weight_2d


def _squeezed_from_2d(weight_2d: Any, kernel_size: int) -> Any:
    """Canonical (out, in) of a kernel-1 Conv1d -> the squeezed (out, in) it is stored as."""
    if kernel_size != 1:
        raise ValueError(f"a squeezed Conv1d has kernel size 1, not {kernel_size}")
    return weight_2d


# sa3.cpp stores the DiT's kernel-1 pre/post Conv1d squeezed to a matrix (its converter keeps
# `w[:, :, 0]`), which is the canonical 2-D view itself; only the layer kind differs from a
# Linear. Not in LAYOUTS (told apart by rank there): used through BASE_MODULE_LAYOUTS and
# KERNEL_LAYOUTS.
SQUEEZED_CONV1D = Layout(
    "squeezed-conv1d",
    "Conv1d of kernel size 1 stored squeezed as (out, in) (sa3.cpp)",
    "conv1d",
    ("out", "in"),
    _identity_to_2d,
    _squeezed_from_2d,
)


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "linear",
            "Linear (out, in) in any runtime",
            "linear",
            ("out", "in"),
            _identity_to_2d,
            _identity_from_2d,
        ),
        Layout(
            "torch-conv1d",
            "PyTorch Conv1d (out, in, k)",
            "conv1d",
            ("out", "in", "k"),
            torch_conv1d_to_2d,
            torch_conv1d_from_2d,
        ),
        Layout(
            "mlx-conv1d",
            "MLX Conv1d (out, k, in)",
            "conv1d",
            ("out", "k", "in"),
            mlx_conv1d_to_2d,
            mlx_conv1d_from_2d,
        ),
    )
}

# --- row orders: fused projections whose row blocks a runtime orders differently ------------

# diffusers' differential self-attention `to_qkv` computes [q|q2|k|k2|v] where the official
# checkpoint (and every sa3ckpt canonical view) has [q|k|v|q2|k2], in blocks of E rows.
# Entry i is the official block that diffusers' block i holds.
DIFFUSERS_DIFF_QKV_ORDER: tuple[int, ...] = (0, 3, 1, 4, 2)


def inverse_order(order: tuple[int, ...]) -> tuple[int, ...]:
    """The block order that undoes `order` (applying both in turn gives the identity)."""
    inverse = [0] * len(order)
    for position, block in enumerate(order):
        inverse[block] = position
    return tuple(inverse)


def reorder_row_blocks(array: Any, order: tuple[int, ...]) -> Any:
    """Rows split into len(order) equal blocks; block i of the result is block order[i] of
    the input. Rows are axis 0, so it serves weights, lora_B and row magnitudes alike
    (NumPy arrays: files are read as NumPy)."""
    rows = array.shape[0]
    if rows % len(order):
        raise ValueError(f"{rows} rows do not split into {len(order)} equal blocks")
    size = rows // len(order)
    index = [b * size + i for b in order for i in range(size)]
    return array.take(index, axis=0)


def _is_differential_qkv(fan_out: int, fan_in: int) -> bool:
    """A differential `to_qkv` (5E rows of E inputs); the small model's 3E keep their order."""
    return fan_out == 5 * fan_in


@dataclass(frozen=True)
class RowOrder:
    """A module whose output rows a naming stores in another block order than canonical.

    `module_suffix` matches the end of the canonical module name; `applies(fan_out, fan_in)`
    decides from the canonical 2-D shape (diffusers reorders only the differential, 5E-row,
    `to_qkv`; the small model's 3E rows are in the same order). `order[i]` is the canonical
    block that the naming's block i holds.
    """

    module_suffix: str
    applies: Callable[[int, int], bool]
    order: tuple[int, ...]


ROW_ORDERS: dict[str, tuple[RowOrder, ...]] = {
    "diffusers": (
        RowOrder(
            "self_attn.to_qkv",
            _is_differential_qkv,
            DIFFUSERS_DIFF_QKV_ORDER,
        ),
    ),
}


def row_order(naming: str, module: str, shape_2d: tuple[int, int]) -> tuple[int, ...] | None:
    """The block order `naming` stores the rows of canonical `module` in (None: canonical)."""
    for rule in ROW_ORDERS.get(naming, ()):
        if module.endswith(rule.module_suffix) and rule.applies(*shape_2d):
            return rule.order
    return None


def rows_to_naming(naming: str, module: str, shape_2d: tuple[int, int], rows: Any) -> Any:
    """Canonical rows (weight, lora_B, row magnitude) -> the naming's row order."""
    order = row_order(naming, module, shape_2d)
    return rows if order is None else reorder_row_blocks(rows, order)


def rows_from_naming(naming: str, module: str, shape_2d: tuple[int, int], rows: Any) -> Any:
    """The naming's row order -> canonical rows (the inverse of `rows_to_naming`)."""
    order = row_order(naming, module, shape_2d)
    return rows if order is None else reorder_row_blocks(rows, inverse_order(order))


# Adapter key dialects whose files keep rows in a naming's order (lora_B and row magnitudes of
# the modules `ROW_ORDERS` lists): diffusers' LoRA files and PEFT saved from its DiT.
DIALECT_ROW_NAMINGS: dict[str, str] = {"diffusers": "diffusers", "peft-diffusers": "diffusers"}


def dialect_row_naming(dialect: str | None) -> str | None:
    """The naming whose row orders a dialect's adapter tensors are stored in (None: canonical)."""
    return DIALECT_ROW_NAMINGS.get(dialect or "")


def _diffusers_qkv_to_2d(weight: Any) -> Any:
    """diffusers [q|q2|k|k2|v] rows -> canonical [q|k|v|q2|k2]."""
    return reorder_row_blocks(_identity_to_2d(weight), inverse_order(DIFFUSERS_DIFF_QKV_ORDER))


def _diffusers_qkv_from_2d(weight_2d: Any, kernel_size: int) -> Any:
    """Canonical [q|k|v|q2|k2] rows -> diffusers [q|q2|k|k2|v]."""
    return reorder_row_blocks(weight_2d, DIFFUSERS_DIFF_QKV_ORDER)


# Not in LAYOUTS (whose rows are the per-layer-kind layouts): a module's own layout, used
# only through BASE_MODULE_LAYOUTS.
DIFFUSERS_DIFF_QKV = Layout(
    "diffusers-diff-qkv",
    "diffusers differential self-attention to_qkv: Linear rows [q|q2|k|k2|v]",
    "linear",
    ("out", "in"),
    _diffusers_qkv_to_2d,
    _diffusers_qkv_from_2d,
)

# The one table of base layouts: which stored layout a weight of each layer kind has under
# each base naming (`names.BASE_NAMINGS`). The MLX runtime's live module tree is "mlx".
# sa3.cpp squeezes kernel-1 Conv1d weights (`KERNEL_LAYOUTS`); one of another kernel size
# (only the tiny test family has one) keeps PyTorch's (out, in, k), so nothing is lost.
BASE_LAYOUTS: dict[str, dict[str, str]] = {
    "official": {"linear": "linear", "conv1d": "torch-conv1d"},
    "mlx": {"linear": "linear", "conv1d": "mlx-conv1d"},
    "diffusers": {"linear": "linear", "conv1d": "torch-conv1d"},
    "sa3cpp": {"linear": "linear", "conv1d": "torch-conv1d"},
}


@dataclass(frozen=True)
class ModuleLayout:
    """A layout one module of a naming uses instead of its layer kind's (`BASE_LAYOUTS`).

    `module_suffix` matches the end of the canonical module name; `applies(shape)` decides
    from the stored shape (diffusers reorders only the differential, 5E-row, `to_qkv`).
    """

    module_suffix: str
    applies: Callable[[tuple[int, ...]], bool]
    layout: Layout


def _is_matrix(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2


BASE_MODULE_LAYOUTS: dict[str, tuple[ModuleLayout, ...]] = {
    "diffusers": (
        ModuleLayout(
            "self_attn.to_qkv",
            lambda shape: len(shape) == 2 and _is_differential_qkv(shape[0], shape[1]),
            DIFFUSERS_DIFF_QKV,
        ),
    ),
    "sa3cpp": (
        ModuleLayout("preprocess_conv", _is_matrix, SQUEEZED_CONV1D),
        ModuleLayout("postprocess_conv", _is_matrix, SQUEEZED_CONV1D),
    ),
}


@dataclass(frozen=True)
class KernelLayout:
    """A layout a naming stores a layer kind in for one kernel size (sa3.cpp: kernel-1 Conv1d
    squeezed), chosen when writing, where the stored rank of the source does not say it."""

    layer_kind: str
    kernel_size: int
    layout: Layout


KERNEL_LAYOUTS: dict[str, tuple[KernelLayout, ...]] = {
    "sa3cpp": (KernelLayout("conv1d", 1, SQUEEZED_CONV1D),),
}


def base_layout(naming: str, layer_kind: str) -> Layout:
    """The stored layout of a `layer_kind` ("linear" | "conv1d") weight in a base naming."""
    try:
        return LAYOUTS[BASE_LAYOUTS[naming][layer_kind]]
    except KeyError:
        raise ValueError(
            f"no stored layout for a {layer_kind} weight in naming {naming!r}"
        ) from None


def stored_layout(naming: str, shape: tuple[int, ...], module: str | None = None) -> Layout:
    """The layout of a stored weight in a base naming, told apart by its rank (2-D or 3-D).

    With the canonical `module`, a naming's per-module layout (`BASE_MODULE_LAYOUTS`) wins;
    callers that hold a weight of a known module must pass it.
    """
    shape = tuple(shape)
    if module is not None:
        for rule in BASE_MODULE_LAYOUTS.get(naming, ()):
            if module.endswith(rule.module_suffix) and rule.applies(shape):
                return rule.layout
    rank = len(shape)
    for name in BASE_LAYOUTS[naming].values():
        if LAYOUTS[name].ndim == rank:
            return LAYOUTS[name]
    raise ValueError(f"no {naming} weight layout is {rank}-D (shape {tuple(shape)})")


def target_layout(
    naming: str,
    layer_kind: str,
    shape_2d: tuple[int, int],
    kernel_size: int = 1,
    module: str | None = None,
) -> Layout:
    """The layout a weight of this layer kind, canonical shape and kernel size gets when it is
    written in `naming` (a kernel-size rule first, then the layer kind's, then the module's).

    Converting between namings must pick the target layout from what the weight is, not from
    the source's stored rank: sa3.cpp's squeezed Conv1d is 2-D where every other naming's is 3-D.
    """
    for rule in KERNEL_LAYOUTS.get(naming, ()):
        if rule.layer_kind == layer_kind and rule.kernel_size == kernel_size:
            return rule.layout
    plain = base_layout(naming, layer_kind)
    return stored_layout(naming, plain.stored_shape(shape_2d, kernel_size), module)


def to_canonical_2d(weight: Any, layout: str) -> Any:
    """Stored weight (or delta) -> canonical 2-D (fan_out, fan_in)."""
    return LAYOUTS[layout].to_2d(weight)


def from_canonical_2d(weight_2d: Any, layout: str, kernel_size: int = 1) -> Any:
    """Canonical 2-D weight (or delta) -> the stored layout."""
    return LAYOUTS[layout].from_2d(weight_2d, kernel_size)


def stored_shape(shape_2d: tuple[int, int], layout: str, kernel_size: int = 1) -> tuple[int, ...]:
    """The stored shape of a canonical (fan_out, fan_in) weight in a layout."""
    return LAYOUTS[layout].stored_shape(shape_2d, kernel_size)


# --- adapter tensors of Conv1d targets in files that keep them as convolutions ---------------


@dataclass(frozen=True)
class FactorShape:
    """How one adapter tensor of a Conv1d target is stored, given its canonical shape.

    Every such layout is a pure reshape of the canonical view (in-major, k-minor), so only
    the shapes differ: `stored(canonical_shape, k)`; back is a reshape to `canonical_ndim`.
    A file tensor is in stored form exactly when it has `stored_ndim` dimensions.
    """

    param: str
    canonical_ndim: int
    stored_ndim: int
    stored: Callable[[tuple[int, ...], int], tuple[int, ...]]
    description: str


def _split_fan_in(shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    rows, fan_in = shape
    if fan_in % k:
        raise ValueError(f"fan_in {fan_in} is not a multiple of kernel size {k}")
    return rows, fan_in // k, k


@dataclass(frozen=True)
class FactorLayout:
    """How a file stores the adapter tensors of Conv1d targets (params it does not list are
    stored canonically)."""

    name: str
    description: str
    params: dict[str, FactorShape]

    def stored_shape(self, param: str, canonical_shape: tuple[int, ...], k: int) -> tuple[int, ...]:
        """The stored shape of a canonical adapter tensor of a Conv1d target."""
        rule = self.params.get(param)
        return tuple(canonical_shape) if rule is None else rule.stored(tuple(canonical_shape), k)

    def is_stored(self, param: str, shape: tuple[int, ...]) -> bool:
        """Whether a file tensor of this shape is in this layout's conv form (not canonical)."""
        rule = self.params.get(param)
        return rule is not None and len(tuple(shape)) == rule.stored_ndim

    def canonical_shape(self, param: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The canonical shape of a file tensor's shape (unchanged when already canonical)."""
        shape = tuple(shape)
        if not self.is_stored(param, shape):
            return shape
        if self.params[param].canonical_ndim == 1:
            return (math.prod(shape),)
        return shape[0], math.prod(shape[1:])

    def to_canonical(self, param: str, array: Any) -> Any:
        """A stored adapter tensor -> its canonical shape (unchanged when already canonical)."""
        if not self.is_stored(param, array.shape):
            return array
        return array.reshape(*self.canonical_shape(param, tuple(array.shape)))

    def from_canonical(self, param: str, array: Any, k: int) -> Any:
        """A canonical adapter tensor of a Conv1d target with kernel `k` -> stored form."""
        return array.reshape(*self.stored_shape(param, tuple(array.shape), k))


# PEFT (and diffusers, which uses PEFT) keep Conv1d adapters as convolutions.
PEFT_CONV1D = FactorLayout(
    "peft-conv1d",
    "PEFT Conv1d adapter: lora_A (r, in, k), lora_B (out, r, 1), magnitude (1, out, 1)",
    {
        "lora_A": FactorShape("lora_A", 2, 3, _split_fan_in, "(r, in*k) <-> (r, in, k)"),
        "lora_B": FactorShape(
            "lora_B", 2, 3, lambda s, k: (s[0], s[1], 1), "(out, r) <-> (out, r, 1)"
        ),
        "magnitude": FactorShape(
            "magnitude", 1, 3, lambda s, k: (1, s[0], 1), "(out,) <-> (1, out, 1)"
        ),
    },
)


# Key dialects whose files keep Conv1d adapter tensors as convolutions, and in which layout.
# Dialects not listed store every adapter tensor canonically (2-D factors, 1-D magnitudes).
DIALECT_FACTOR_LAYOUTS: dict[str, FactorLayout] = {
    "peft": PEFT_CONV1D,
    "peft-diffusers": PEFT_CONV1D,
    "diffusers": PEFT_CONV1D,  # diffusers' LoRA layers are PEFT's
}


def factor_layout(dialect: str | None) -> FactorLayout | None:
    """How a dialect stores the adapter tensors of Conv1d targets (None: canonically)."""
    return DIALECT_FACTOR_LAYOUTS.get(dialect or "")


# --- row views: a stored weight's canonical rows, for merges that stream row tiles ----------


@dataclass(frozen=True)
class RowView:
    """Where the canonical 2-D rows of a stored weight lie, so a merge can read and write
    row tiles without the whole tensor.

    Every stored layout keeps output channels on axis 0, so canonical row i is one stored
    row: row `stored_row(i)` (diffusers' medium to_qkv stores its row blocks in another
    order; the others keep the order), converted within the row by `to_rows` (MLX Conv1d
    stores (k, in) per output channel where the canonical row is in-major / k-minor).
    `in_place`: the canonical row is the stored row's bytes as they are.
    """

    fan_out: int
    fan_in: int
    stored_row_shape: tuple[int, ...]
    order: tuple[int, ...] | None  # canonical row blocks' stored positions (None: same)
    to_rows: Callable[[Any], Any]  # stored rows (n, *stored_row_shape) -> (n, fan_in)
    from_rows: Callable[[Any], Any]  # canonical rows (n, fan_in) -> (n, *stored_row_shape)

    @property
    def reshuffles(self) -> bool:
        """Whether a row's values are stored in another order than canonical."""
        return self.to_rows is not _identity_to_2d

    @property
    def in_place(self) -> bool:
        """Whether canonical rows [i0, i1) are the stored rows [i0, i1) byte for byte."""
        return self.order is None and not self.reshuffles

    def runs(self, i0: int, i1: int) -> list[tuple[int, int, int]]:
        """Canonical rows [i0, i1) as runs of consecutive stored rows: (stored first row,
        canonical first row, count), in canonical order."""
        if self.order is None:
            return [(i0, i0, i1 - i0)]
        size = self.fan_out // len(self.order)
        position = inverse_order(self.order)  # canonical block b sits at stored block position[b]
        out = []
        i = i0
        while i < i1:
            block, offset = divmod(i, size)
            count = min(i1, (block + 1) * size) - i
            out.append((position[block] * size + offset, i, count))
            i += count
        return out


# Layouts whose canonical rows are a block reordering of the stored rows: (the per-row
# layout, the naming's block order as `reorder_row_blocks` takes it).
_ROW_REORDERED: dict[str, tuple[str, tuple[int, ...]]] = {
    DIFFUSERS_DIFF_QKV.name: ("linear", DIFFUSERS_DIFF_QKV_ORDER),
}


def row_view(layout: Layout, shape: tuple[int, ...]) -> RowView:
    """The `RowView` of a stored weight of this layout and shape."""
    shape = tuple(shape)
    fan_out, fan_in = layout.canonical_shape(shape)
    per_row, order = layout, None
    if layout.name in _ROW_REORDERED:
        name, order = _ROW_REORDERED[layout.name]
        per_row = LAYOUTS[name]
    k = layout.kernel_size(shape)
    row_shape = shape[1:]
    if per_row.name == "linear" or (per_row.name == "torch-conv1d") or k == 1:
        return RowView(fan_out, fan_in, row_shape, order, _identity_to_2d, _identity_to_2d)

    def to_rows(rows: Any) -> Any:
        return per_row.to_2d(rows.reshape(-1, *row_shape))

    def from_rows(rows: Any) -> Any:
        return per_row.from_2d(rows, k).reshape(len(rows), -1)

    return RowView(fan_out, fan_in, row_shape, order, to_rows, from_rows)
