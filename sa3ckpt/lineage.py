"""Lineage: which model an adapter was trained on and which model it is merged into.

SA3 ships each model twice: the training base (`stabilityai/stable-audio-3-<variant>-base`,
what adapters are trained on) and the post-trained model (`…-<variant>`, what generates). The
two have the same shapes, so nothing in the tensors tells them apart; an adapter's deltas are
learned against one set of weights, and merging them into the other is a different result from
the one its trainer saw. What does tell them apart:

- an adapter's lora_config `base_model`, when it names the model (`stable-audio-3-medium-base`);
- an sa3.cpp DiT GGUF's `dit.training_base` marker and `general.finetune` (`medium-base`);
- an official checkpoint's own name (its file or folder, e.g. a Hugging Face cache folder
  `models--stabilityai--stable-audio-3-medium-base`).

`lineage_mismatch` compares the two when both are known; the rule `lineage-mismatch`
(`sa3ckpt.findings`, severity warning) reports it in validate (`--base`) and merge.
"""

from __future__ import annotations

import os

from sa3ckpt.io.base_checkpoint import BaseCheckpoint
from sa3ckpt.io.gguf_facts import Identity, identity_from_kv, identity_from_name


def adapter_lineage(base_model: object) -> Identity | None:
    """The model an adapter's `base_model` names, if it names one."""
    return identity_from_name(base_model) if isinstance(base_model, str) else None


def base_lineage(base: BaseCheckpoint) -> Identity | None:
    """The model a base is: an sa3.cpp DiT's own KVs, else its path's name."""
    if base.gguf is not None and base.gguf.dit is not None:
        declared = identity_from_kv(base.gguf.dit.kv)
        if declared is not None:
            return declared
    return identity_from_name(os.path.abspath(base.path))


def _describe(identity: Identity) -> str:
    kind = "training base" if identity.training_base else "post-trained model"
    return f"{identity.model} ({kind})"


def lineage_mismatch(adapter: Identity | None, base: Identity | None) -> str | None:
    """The warning when an adapter trained on a training base goes into the post-trained
    model or the reverse (None when either side is unknown or they agree)."""
    if adapter is None or base is None or adapter.training_base == base.training_base:
        return None
    return (
        f"trained on {_describe(adapter)}, merged into {_describe(base)}: its deltas were "
        "learned against the other weights"
    )
