"""`sa3ckpt merge`: bake adapters into a base at fixed strengths."""

from __future__ import annotations

import argparse
import sys

from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.cli.common import print_ledger
from sa3ckpt.cli.progress import add_quiet, progress_bar
from sa3ckpt.dtypes import NAMES as DTYPE_NAMES
from sa3ckpt.ops.merge import ONLY_ROOTS, MergeOptions, merge_checkpoint
from sa3ckpt.semantics import help_text
from sa3ckpt.strengths import parse_adapter_arg
from sa3ckpt.textsafe import escape_control


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "base", metavar="BASE", help="base checkpoint (official or MLX; .safetensors/.npz)"
    )
    parser.add_argument(
        "adapters", nargs="+", metavar="ADAPTER[:STRENGTH]", help="adapters, in order"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="merged checkpoint (required unless --compare-semantics only reports)",
    )
    parser.add_argument(
        "--semantics",
        default="runtime",
        choices=list(SEMANTICS),
        help=help_text(SEMANTICS).replace("%", "%%"),
    )
    parser.add_argument(
        "--compare-semantics",
        action="store_true",
        help="report per target how far the semantics' results are apart; writes nothing "
        "unless -o is given too (then it also merges with --semantics)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="[ADAPTER=]PATTERN",
        help="leave targets matching PATTERN (substring, [a-b] ranges as in the official "
        "exclude=) out of every adapter, or out of one: N=PATTERN (N-th adapter, from 1) "
        "or PATH=PATTERN; repeatable",
    )
    parser.add_argument(
        "--strength-map",
        action="append",
        default=[],
        metavar="MAP",
        help="per-target strength factors, comma-separated [ADAPTER=]PATTERN=FACTOR entries "
        "(PATTERN and ADAPTER= as in --exclude), e.g. 'layers.[0-7].=0.5,cross_attn=0.8'; "
        "every matching entry multiplies the adapter's strength there; an entry matching "
        "nothing is an error; repeatable",
    )
    parser.add_argument(
        "--dtype", choices=list(DTYPE_NAMES), help="output dtype (default: the base's)"
    )
    parser.add_argument(
        "--only", choices=list(ONLY_ROOTS), help="merge only DiT or conditioner targets"
    )
    parser.add_argument(
        "--bases",
        metavar="FILE",
        help="XS bases: an sa3ckpt bases file, the official svd_bases.pt (needs --allow-pickle) "
        "or sa3.cpp's bases GGUF (else stored U/V, else an SVD of the base)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read legacy .ckpt adapters and svd_bases.pt (torch.load weights_only)",
    )
    parser.add_argument(
        "--conditioner",
        metavar="GGUF",
        help="an sa3.cpp DiT GGUF base's conditioner sidecar: merged too, written beside OUT",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 4, nothing written) when any adapter tensor has no place or the "
        "stack report warns",
    )
    parser.add_argument("--json", action="store_true", help="print the ledger as one JSON document")
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    # Nothing is written without -o, so there is nothing to show progress of.
    with progress_bar("merging", quiet=args.quiet or args.output is None) as progress:
        ledger = merge_checkpoint(
            args.base,
            [parse_adapter_arg(a) for a in args.adapters],
            args.output,
            progress=progress,
            options=MergeOptions(
                semantics=args.semantics,
                dtype=args.dtype,
                only=args.only,
                bases_path=args.bases,
                allow_pickle=args.allow_pickle,
                force=args.force,
                strict=args.strict,
                exclude=args.exclude,
                strength_map=args.strength_map,
                compare=args.compare_semantics,
                conditioner=args.conditioner,
            ),
        )
    for warning in ledger.warnings:
        print(f"sa3ckpt: warning: {escape_control(warning)}", file=sys.stderr)
    print_ledger(ledger, "merge", args.json)
    return 0
