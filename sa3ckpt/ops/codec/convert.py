"""Convert codec adapters between the key dialects that can hold them.

sa3 (official parametrisation keys, lora_config metadata), peft (a folder: adapter_model +
adapter_config.json; lora and dora-rows only) and sa3cpp (GGUF with `ae.enc.*` / `ae.dec.*`
stems). The DiT-only outputs (bare, mlx, diffusers) are refused with the reason: no MLX
runtime module tree or diffusers LoRA loader exists for the SAME codec. Values are copied
(cast once to --dtype, default: the input's float width for sa3/peft, F32 for GGUF, which is
all sa3.cpp writes) and read back to verify. Encoder adapters written fp16/bf16 get the fp32
warning: the writer of the published encoder adapters measured the latent moving by 25-45%
of the adapter's effect after an fp16 round trip.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.atomic import check_output_path
from sa3ckpt.io.formats import open_adapter_source
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.io.sources import CONFIG_KEY, PEFT_CONFIG, PEFT_WEIGHTS
from sa3ckpt.names.codec_keys import PEFT_WRITE, codec_key
from sa3ckpt.ops.codec.adapter import FP32_ADVICE, CodecAdapter, analyze_codec

CODEC_TARGETS = ("sa3", "peft", "sa3cpp")
REFUSED = {
    "bare": "bare keys are the early MLX DiT writers' spelling; codec adapters keep their "
    "`encoder.` / `decoder.` roots (use --to sa3)",
    "mlx": "the MLX runtime has no SAME codec module tree to load an adapter into",
    "diffusers": "diffusers has no LoRA loader for AutoencoderSAME (and its module names "
    "differ: blocks, attn, proj_in); no diffusers codec adapter format exists",
}
HALF = ("F16", "BF16")


@dataclass
class CodecConvertLedger:
    """What a codec convert wrote and the read-back check."""

    input: str
    output: str
    to: str
    adapter_type: str
    family: str | None
    targets: int = 0
    code: str = "F32"
    worst_error: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"{self.targets} targets of a {self.adapter_type} codec adapter "
            f"({self.family or 'family unknown'}) converted to {self.to} ({self.code}): "
            f"{self.input} -> {self.output}",
        ]
        out += [f"warning: {w}" for w in self.warnings]
        out.append(f"verified: worst relative error {self.worst_error:.3g}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "to": self.to,
            "adapter_type": self.adapter_type,
            "family": self.family,
            "targets": self.targets,
            "dtype": self.code,
            "worst_error": self.worst_error,
            "warnings": self.warnings,
        }


def _out_code(codec: CodecAdapter, to: str, dtype: str | None) -> str:
    if dtype:
        return dtypes.code_from_name(dtype)
    if to == "sa3cpp":
        return "F32"
    return "F32" if any(d == "F32" for d in codec.dtypes) else next(iter(codec.dtypes), "F32")


def _config(codec: CodecAdapter) -> dict[str, object]:
    config = dict(codec.config or {})
    config.setdefault("rank", codec.rank)
    config.setdefault("alpha", codec.alpha)
    config["adapter_type"] = codec.adapter_type
    config.setdefault("include", [])
    config.setdefault("exclude", [])
    if codec.part in ("encoder", "decoder"):
        config.setdefault("target", codec.part)
    return config


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    scale = float(np.max(np.abs(a64), initial=0.0)) or 1.0
    return float(np.max(np.abs(a64 - b64), initial=0.0)) / scale


def convert_codec(
    path: str, output: str, *, to: str, dtype: str | None = None, force: bool = False
) -> CodecConvertLedger:
    """Write the codec adapter at `path` in dialect `to`; verified by reading it back."""
    if to in REFUSED:
        raise UsageError(f"{path} is a codec adapter: --to {to} makes no sense ({REFUSED[to]})")
    if to not in CODEC_TARGETS:
        raise UsageError(
            f"--to {to} is not a codec adapter format (known: {', '.join(CODEC_TARGETS)})"
        )
    with open_adapter_source(path) as source:
        codec = analyze_codec(source)
        errors = [f.message for f in codec.findings if f.severity == "error"]
        if errors or codec.adapter_type is None:
            raise IncompatibleError(f"{path}: not converted: {(errors or ['type unknown'])[0]}")
        if to == "peft" and codec.adapter_type not in ("lora", "dora-rows"):
            raise UsageError(
                f"{path}: PEFT holds lora and dora-rows only, not {codec.adapter_type}"
            )
        code = _out_code(codec, to, dtype)
        np_dtype = dtypes.numpy_dtype(code)
        arrays: dict[tuple[str, str], np.ndarray] = {}
        for module, params in codec.targets.items():
            for param, entry in params.items():
                if to == "peft" and param not in PEFT_WRITE:
                    continue
                arrays[(module, param)] = dtypes.to_float32(np.array(source.array(entry.key)))
    check_output_path(output, inputs=[path], overwrite=force, directory=to == "peft")
    ledger = CodecConvertLedger(
        path, output, to, codec.adapter_type, codec.family.name if codec.family else None
    )
    ledger.targets, ledger.code = len(codec.targets), code
    if codec.part == "encoder" and code in HALF:
        ledger.warnings.append(f"writing an encoder adapter as {code}: {FP32_ADVICE}")
    written = {codec_key(m, p, to): a.astype(np_dtype) for (m, p), a in arrays.items()}
    config = _config(codec)
    if to == "sa3":
        write_safetensors(
            output,
            written,
            {CONFIG_KEY: json.dumps(config, sort_keys=True)},
            inputs=[path],
            overwrite=force,
        )
        readback = output
    elif to == "peft":
        os.makedirs(output, exist_ok=True)
        peft = {
            k: v.reshape(-1) if k.endswith("lora_magnitude_vector") else v
            for k, v in written.items()
        }
        write_safetensors(
            os.path.join(output, PEFT_WEIGHTS), peft, {"format": "pt"}, overwrite=True
        )
        peft_config = {
            "peft_type": "LORA",
            "r": codec.rank,
            "lora_alpha": codec.alpha,
            "use_dora": codec.adapter_type == "dora-rows",
            "use_rslora": False,
            "bias": "none",
            "target_modules": sorted(codec.targets),
            "sa3ckpt_codec_target": codec.part,
        }
        with open(os.path.join(output, PEFT_CONFIG), "w", encoding="utf-8") as f:
            json.dump(peft_config, f, indent=1, sort_keys=True)
            f.write("\n")
        readback = output
    else:
        from sa3ckpt.io.gguf_adapter import write_gguf_adapter

        write_gguf_adapter(
            output,
            {k: v.astype(np.float32) for k, v in written.items()},
            adapter_type=codec.adapter_type,
            rank=int(codec.rank or 0),
            alpha=float(codec.alpha or 0.0),
            n_targets=len(codec.targets),
            extra_kv={"sa3ckpt.codec_target": codec.part or ""},
            inputs=[path],
            overwrite=force,
        )
        readback = output
    with open_adapter_source(readback) as back:
        again = analyze_codec(back, part=codec.part)
        for (module, param), value in arrays.items():
            stored = again.targets.get(module, {}).get(param)
            if stored is None:
                raise IncompatibleError(f"{output}: read back without {module} {param}")
            got = dtypes.to_float32(np.array(back.array(stored.key))).reshape(value.shape)
            ledger.worst_error = max(ledger.worst_error, _rel_error(value, got))
    return ledger
