"""Load an adapter from any container the format registry knows: sa3/bare/mlx safetensors,
PEFT folder, sa3.cpp GGUF, legacy pickle (opt-in). `sa3ckpt.io.formats` reads the container
as stored; this module brings what a container stores differently to canonical form and
ends in `checkpoint_from_raw`, so repairs, type detection and the load ledger are the same
whatever the source.
"""

from __future__ import annotations

import os

from sa3ckpt.adapters.checkpoint import AdapterCheckpoint, checkpoint_from_raw
from sa3ckpt.io.formats import RawAdapter, load_raw
from sa3ckpt.layout import dialect_row_naming, factor_layout, row_order, rows_from_naming
from sa3ckpt.names.adapter_keys import ParsedKey, group_adapter_keys, parse_adapter_key

# Params whose axis 0 is the target's output rows (what a row order reorders).
ROW_PARAMS = ("lora_B", "magnitude")


def _fold_convs(raw: RawAdapter) -> list[str]:
    """Dialects with a factor layout keep Conv1d adapters as convolutions (PEFT: A (r, in, k),
    B (out, r, 1), magnitude (1, out, 1)); the rest of the project works on the canonical
    view. Returns the keys reshaped."""
    reshaped = []
    for dialect in raw.dialects:
        layout = factor_layout(dialect)
        if layout is None:
            continue
        for key, value in raw.tensors.items():
            parsed = parse_adapter_key(key, dialect)
            if isinstance(parsed, ParsedKey) and layout.is_stored(parsed.param, value.shape):
                raw.tensors[key] = layout.to_canonical(parsed.param, value)
                reshaped.append(key)
    return reshaped


def _canonical_rows(raw: RawAdapter) -> list[str]:
    """Dialects that store some modules' rows in another block order (diffusers' medium
    `to_qkv`: [q|q2|k|k2|v]) get lora_B and row magnitudes back in the canonical order;
    lora_A (the inputs) is unchanged. Runs on the canonical (folded) view. Returns the
    targets reordered."""
    reordered = []
    for dialect in raw.dialects:
        naming = dialect_row_naming(dialect)
        if naming is None:
            continue
        for target, params in group_adapter_keys(raw.tensors, dialect).targets.items():
            if "lora_A" not in params or "lora_B" not in params:
                continue
            fans = (raw.tensors[params["lora_B"]].shape[0], raw.tensors[params["lora_A"]].shape[1])
            if row_order(naming, target, fans) is None:
                continue
            for param in ROW_PARAMS:
                if param in params:
                    key = params[param]
                    raw.tensors[key] = rows_from_naming(naming, target, fans, raw.tensors[key])
            reordered.append(target)
    return reordered


def canonical_checkpoint(
    raw: RawAdapter, dialects: tuple[str, ...] | None = None
) -> AdapterCheckpoint:
    """A checkpoint from a container read; `dialects` narrows the key spellings accepted."""
    reshaped = _fold_convs(raw)
    reordered = _canonical_rows(raw)
    ckpt = checkpoint_from_raw(
        raw.tensors,
        raw.config_text,
        raw.metadata,
        raw.path,
        dialects=dialects or raw.dialects,
        config_origin=raw.config_origin,
    )
    assert ckpt.ledger is not None
    ckpt.ledger.repairs += raw.repairs
    if reshaped:
        ckpt.ledger.repairs.append(
            f"{len(reshaped)} Conv1d adapter tensors stored as convolutions "
            "reshaped to the canonical view"
        )
    if reordered:
        ckpt.ledger.repairs.append(
            f"{len(reordered)} to_qkv targets: lora_B rows from diffusers' [q|q2|k|k2|v] to "
            "the official [q|k|v|q2|k2] order"
        )
    return ckpt


def load_adapter(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> AdapterCheckpoint:
    """Load an adapter from any supported container into canonical form."""
    return canonical_checkpoint(load_raw(path, allow_pickle=allow_pickle))
