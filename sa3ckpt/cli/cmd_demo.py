"""`sa3ckpt demo`: generate a realistic small-family adapter and walk the whole tool over it.

inspect -> validate -> convert (PEFT, MLX, and sa3.cpp when the gguf extra is installed) ->
validate the conversion -> merge into a generated slice of a small base. Everything is
written to a temporary folder (or --dir) and nothing outside it is touched.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
from rich.rule import Rule

from sa3ckpt.cli.common import console
from sa3ckpt.cli.render import print_inspect, print_validation
from sa3ckpt.io.safetensors import SafetensorsStreamWriter, write_safetensors
from sa3ckpt.names import official_base_key
from sa3ckpt.ops.convert import convert_adapter
from sa3ckpt.ops.inspect import inspect_path
from sa3ckpt.ops.merge import MergeOptions, merge_checkpoint
from sa3ckpt.ops.validate import validate_paths
from sa3ckpt.strengths import AdapterArg
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES
from sa3ckpt.textsafe import escape_control

DEMO_INCLUDE = ["layers.[0-1].", "seconds_total"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary folder)")


def _write_base_slice(path: Path, targets: list[str]) -> None:
    """The small base's weights for the demo's targets (real shapes), streamed to disk."""
    fam = FAMILIES["small"]
    rng = np.random.default_rng(7)
    specs = [(official_base_key(t), "F16", fam.by_name[t].weight_shape) for t in targets]
    with SafetensorsStreamWriter(path, specs, {"format": "official-full (demo slice)"}) as writer:
        for (key, _, shape), target in zip(specs, targets, strict=True):
            bound = np.float32(np.sqrt(3.0 / fam.by_name[target].shape[1]))
            writer.write(
                key, ((rng.random(shape, dtype=np.float32) * 2 - 1) * bound).astype(np.float16)
            )


def _demo(work: Path) -> int:
    out = console()
    fam = FAMILIES["small"]
    adapter = synth_adapter(
        fam,
        "dora-rows",
        rank=16,
        alpha=16,
        seed=3,
        include=DEMO_INCLUDE,
        extra_config={"step": 1200, "epoch": 3, "base_model": "sa3-sm-music"},
    )
    path = work / "my-dora.safetensors"
    write_safetensors(path, adapter.file_tensors(), adapter.metadata())

    out.print(Rule("1. inspect: what is this file?"))
    print_inspect(out, inspect_path(path, stats=True))

    out.print(Rule("2. validate: would it load?"))
    print_validation(out, validate_paths([str(path)]))

    out.print(Rule("3. convert: other runtimes' formats, verified before writing"))
    conversions = [("peft", work / "my-dora-peft"), ("mlx", work / "my-dora.mlx.safetensors")]
    if importlib.util.find_spec("gguf") is not None:
        conversions.append(("sa3cpp", work / "my-dora.gguf"))
    else:
        out.print("(sa3.cpp GGUF skipped: install the gguf extra)")
    for to, target in conversions:
        ledger = convert_adapter(
            str(path), str(target), to=to, drop_conditioner=(to == "sa3cpp"), force=True
        )
        for line in ledger.lines():
            out.print(escape_control(line), soft_wrap=True)
    print_validation(out, validate_paths([str(work / "my-dora-peft")]))

    out.print(Rule("4. merge: bake it into base weights at strength 0.8"))
    base = work / "small-base-slice.safetensors"
    _write_base_slice(base, list(adapter.tensors))
    merged = work / "merged.safetensors"
    merge_ledger = merge_checkpoint(
        str(base), [AdapterArg(str(path), 0.8)], str(merged), options=MergeOptions(force=True)
    )
    for line in merge_ledger.lines():
        out.print(escape_control(line), soft_wrap=True)
    out.print(Rule())
    out.print(f"files in {work}:")
    for item in sorted(work.iterdir()):
        out.print(f"  {item.name}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        return _demo(args.dir)
    with tempfile.TemporaryDirectory(prefix="sa3ckpt-demo-") as tmp:
        return _demo(Path(tmp))
