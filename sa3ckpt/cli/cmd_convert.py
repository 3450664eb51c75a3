"""`sa3ckpt convert`: adapters between dialects (verified), bases between official, MLX,
diffusers (a transformer folder) and sa3.cpp (DiT GGUF + conditioner sidecar)."""

from __future__ import annotations

import argparse
import sys

from sa3ckpt.cli.common import Ledger, print_ledger
from sa3ckpt.cli.progress import add_quiet, progress_bar
from sa3ckpt.dtypes import NAMES as DTYPE_NAMES
from sa3ckpt.errors import UsageError
from sa3ckpt.io.diffusers_folder import DEFAULT_MAX_SHARD_SIZE
from sa3ckpt.io.formats import is_base_checkpoint
from sa3ckpt.io.gguf_facts import VARIANTS
from sa3ckpt.ops.convert import ADAPTER_TARGETS, convert_adapter
from sa3ckpt.sizes import parse_size
from sa3ckpt.textsafe import escape_control

BASE_TARGETS = ("official", "mlx", "diffusers", "sa3cpp")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="adapter file / PEFT folder / GGUF, or a base")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="converted output")
    parser.add_argument(
        "--to",
        required=True,
        choices=sorted({*ADAPTER_TARGETS, *BASE_TARGETS}),
        help="adapters: sa3, bare, mlx, peft, sa3cpp, diffusers; "
        "bases: official, mlx, diffusers, sa3cpp",
    )
    parser.add_argument("--dtype", choices=list(DTYPE_NAMES), help="output dtype (default fp16)")
    parser.add_argument("--base", metavar="BASE", help="bake XS bases U/V and baked_vnorm_row")
    parser.add_argument(
        "--bases",
        metavar="FILE",
        help="XS bases U/V for -xs adapters (sa3cpp, peft): an sa3ckpt bases file, the official "
        "svd_bases.pt (with --allow-pickle) or sa3.cpp's bases GGUF",
    )
    parser.add_argument(
        "--dora-variant", choices=["rows", "cols"], help="name an ambiguous legacy dora"
    )
    parser.add_argument(
        "--drop-conditioner",
        action="store_true",
        help="sa3cpp, diffusers: drop the conditioner target (its effect is lost)",
    )
    parser.add_argument(
        "--include-conditioner",
        action="store_true",
        help="diffusers: write the conditioner target for the duration embedder to a sidecar",
    )
    parser.add_argument(
        "--drop-unmapped", action="store_true", help="bases: drop tensors with no spelling"
    )
    parser.add_argument(
        "--max-shard-size",
        type=_size,
        default=DEFAULT_MAX_SHARD_SIZE,
        metavar="SIZE",
        help="bases --to diffusers: shard limit (default 10GB, diffusers' own; e.g. 5GB)",
    )
    add_sa3cpp_base_arguments(parser)
    parser.add_argument("--allow-pickle", action="store_true", help="read legacy .ckpt input")
    parser.add_argument(
        "--allow-nonfinite", action="store_true", help="adapters: carry NaN/Inf over, not exit 4"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument("--json", action="store_true", help="print the ledger as one JSON document")
    add_quiet(parser, "bases only: an adapter converts too fast to need a bar")


def add_sa3cpp_base_arguments(parser: argparse.ArgumentParser) -> None:
    """--conditioner (an sa3.cpp DiT's sidecar), --variant and --training-base (which model a
    base written --to sa3cpp is, when its file names do not say)."""
    parser.add_argument(
        "--conditioner",
        metavar="GGUF",
        help="sa3.cpp bases: the conditioner sidecar GGUF that goes with the DiT GGUF IN",
    )
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        help="--to sa3cpp: the model (general.finetune; default from the file name or shapes)",
    )
    parser.add_argument(
        "--training-base",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--to sa3cpp: a -base (training) checkpoint: sets dit.training_base = true "
        "(default from the file name)",
    )


def is_codec_adapter(path: str) -> bool:
    """A LoRA on a SAME codec half (ops.checkpoint_kind): converted by ops.codec_convert."""
    from sa3ckpt.ops.inspect import identify_kind

    return identify_kind(path).is_codec_adapter


def run(args: argparse.Namespace) -> int:
    ledger: Ledger
    if is_base_checkpoint(args.input):
        if args.to not in BASE_TARGETS:
            raise UsageError(
                f"{args.input} is a base checkpoint: convert it --to "
                + ", --to ".join(BASE_TARGETS)
            )
        from sa3ckpt.ops.convert import convert_base

        with progress_bar("converting", quiet=args.quiet) as progress:
            ledger = convert_base(
                args.input,
                args.output,
                to=args.to,
                dtype=args.dtype,
                drop_unmapped=args.drop_unmapped,
                force=args.force,
                max_shard_size=args.max_shard_size,
                progress=progress,
                conditioner=args.conditioner,
                variant=args.variant,
                training_base=args.training_base,
            )
    elif is_codec_adapter(args.input):
        from sa3ckpt.ops.codec import convert_codec

        codec = convert_codec(
            args.input, args.output, to=args.to, dtype=args.dtype, force=args.force
        )
        for warning in codec.warnings:
            print(f"sa3ckpt: warning: {escape_control(warning)}", file=sys.stderr)
        ledger = codec
    else:
        if args.to == "official":
            raise UsageError(f"{args.input} is an adapter: --to official is for base checkpoints")
        ledger = convert_adapter(
            args.input,
            args.output,
            to=args.to,
            dtype=args.dtype,
            base_path=args.base,
            bases_path=args.bases,
            dora_variant=args.dora_variant,
            drop_conditioner=args.drop_conditioner,
            include_conditioner=args.include_conditioner,
            allow_pickle=args.allow_pickle,
            allow_nonfinite=args.allow_nonfinite,
            force=args.force,
        )
    print_ledger(ledger, "convert", args.json)
    return 0
