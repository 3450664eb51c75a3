"""The sa3.cpp files a base becomes: DiT GGUF + conditioner sidecar, KVs and tensor types.

`sa3cpp_output` turns the planned output tensors (sa3.cpp names, numpy shapes) and the model's
identity into the `GgufOutput` the streaming writer needs, with the KVs and `general.*`
metadata sa3.cpp's converters stamp (`io.gguf_facts`). The identity (variant, training base)
is what a user says, else what the input's names say (`identify_model`): a checkpoint's
tensors tell the medium from the small model, not small-music from small-sfx nor a
training base from the post-trained model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.base_checkpoint import GgufOutput
from sa3ckpt.io.gguf_base import GgufSpec
from sa3ckpt.io.gguf_facts import (
    CONDITIONER_ARCH,
    DEFAULT_SECONDS_RANGE,
    DIT_ARCH,
    ENCODINGS,
    VARIANTS,
    Identity,
    conditioner_beside,
    conditioner_kv,
    dit_kv,
    general_kv,
    identity_from_kv,
    identity_from_name,
    n_params,
    tensor_type,
)
from sa3ckpt.names.base_keys import is_sa3cpp_conditioner_key

Shapes = Mapping[str, tuple[int, ...]]

# Families whose variant the tensors alone settle (the tiny test families are their own).
_FAMILY_VARIANT = {"medium": "medium", "tiny-medium": "tiny-medium", "tiny-small": "tiny-small"}


def identify_model(
    *,
    variant: str | None,
    training_base: bool | None,
    family: str | None,
    input_path: str,
    kv: Mapping[str, object] | None = None,
) -> Identity:
    """The model identity for the output: explicit choices first, then the input's GGUF
    fields, its file name, and for the variant the family its shapes match."""
    known = identity_from_kv(kv) if kv else None
    named = known or identity_from_name(os.path.basename(os.path.abspath(input_path)))
    chosen = variant or (named.variant if named else None) or _FAMILY_VARIANT.get(family or "")
    if chosen is None:
        choices = ", ".join(v for v in VARIANTS if v.startswith(family or ""))
        raise UsageError(
            f"which model is this {family or 'SA3'} DiT? pass --variant ({choices or 'see docs'})"
        )
    base = training_base if training_base is not None else bool(named and named.training_base)
    return Identity(chosen, base)


def sa3cpp_output(
    shapes: Shapes,
    identity: Identity,
    *,
    encoding: str,
    output_path: str,
    seconds_range: tuple[float, float] = DEFAULT_SECONDS_RANGE,
) -> GgufOutput:
    """What to write for these tensors: the DiT spec, and the sidecar's when `te.*` exist.

    KeyError (a tensor the KVs need is missing) becomes an IncompatibleError naming it (exit
    4, as an incomplete DiT for a diffusers folder is): sa3.cpp's loader would abort on the
    missing KV.
    """
    if encoding not in ENCODINGS:
        raise UsageError(f"sa3.cpp base encoding must be one of {', '.join(ENCODINGS)}")
    dit = {k: s for k, s in shapes.items() if not is_sa3cpp_conditioner_key(k)}
    cond = {k: s for k, s in shapes.items() if is_sa3cpp_conditioner_key(k)}
    try:
        dit_spec = (
            GgufSpec(
                DIT_ARCH,
                tuple(dit_kv(dit) + general_kv(identity, "dit", n_params(dit))),
                {k: tensor_type(k, s, encoding) for k, s in dit.items()},
            )
            if dit
            else GgufSpec(DIT_ARCH)
        )
        cond_spec = (
            GgufSpec(
                CONDITIONER_ARCH,
                tuple(
                    conditioner_kv(cond, seconds_range) + general_kv(identity, "conditioner", None)
                ),
                dict.fromkeys(cond, "F32"),  # the sidecar is always F32
            )
            if cond
            else None
        )
    except KeyError as exc:
        raise IncompatibleError(
            f"not a complete SA3 DiT for sa3.cpp: no {exc.args[0]} (its KVs come from it)"
        ) from None
    where = conditioner_beside(output_path) if cond and dit else None
    return GgufOutput(dit_spec, cond_spec, where)
