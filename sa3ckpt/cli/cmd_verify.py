"""`sa3ckpt verify`: check a merge at the DiT's output (adapters live vs the merged weights)."""

from __future__ import annotations

import argparse
import sys

from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.cli.common import print_ledger
from sa3ckpt.cli.progress import add_quiet, progress_bar
from sa3ckpt.errors import UsageError, ValidationFailed
from sa3ckpt.ops.merge import ONLY_ROOTS
from sa3ckpt.ops.verify import (
    DEFAULT_FRAMES,
    DEFAULT_SEED,
    DEFAULT_TOLERANCE,
    EPSILON,
    INCONCLUSIVE,
    PASS,
    verify_merge,
)
from sa3ckpt.semantics import help_text
from sa3ckpt.strengths import parse_adapter_arg, parse_strength
from sa3ckpt.textsafe import escape_control


def _tolerance(text: str) -> float:
    value = parse_strength(text, of="--tolerance")
    if value <= 0:
        raise UsageError(f"--tolerance must be > 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "base", metavar="BASE", help="the base merged into (official, MLX, diffusers, sa3.cpp)"
    )
    parser.add_argument(
        "adapters",
        nargs="+",
        metavar="ADAPTER[:STRENGTH]",
        help="the adapters and strengths MERGED should hold, in merge order",
    )
    parser.add_argument(
        "merged", metavar="MERGED", help="the merged checkpoint (any format load_dit reads)"
    )
    parser.add_argument(
        "--semantics",
        default="runtime",
        choices=list(SEMANTICS),
        help="the semantics MERGED was merged with: " + help_text(SEMANTICS).replace("%", "%%"),
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="[ADAPTER=]PATTERN",
        help="as merge --exclude: leave targets out of every adapter or of one (N= or PATH=)",
    )
    parser.add_argument(
        "--strength-map",
        action="append",
        default=[],
        metavar="MAP",
        help="as merge --strength-map: per-target strength factors MERGED was merged with",
    )
    parser.add_argument(
        "--only",
        choices=list(ONLY_ROOTS),
        help="as merge --only: apply only DiT or conditioner targets",
    )
    parser.add_argument("--bases", metavar="FILE", help="XS bases file, as given to merge --bases")
    parser.add_argument(
        "--conditioner",
        metavar="GGUF",
        help="an sa3.cpp BASE's conditioner sidecar GGUF, as given to merge --conditioner",
    )
    parser.add_argument(
        "--merged-conditioner",
        metavar="GGUF",
        help="an sa3.cpp MERGED's conditioner sidecar GGUF (merge writes it beside MERGED)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read legacy .ckpt adapters and svd_bases.pt (torch.load weights_only)",
    )
    parser.add_argument(
        "--tolerance",
        type=_tolerance,
        default=DEFAULT_TOLERANCE,
        metavar="K",
        help=f"pass when the difference is at most K × the rounding floor + {EPSILON:g} "
        f"(default {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=DEFAULT_FRAMES,
        metavar="N",
        help=f"latent frames of the inputs (default {DEFAULT_FRAMES})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"seed of the random inputs (default {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail when an adapter tensor is left unchecked (exit 4) or the adapters' effect is "
        "too small to tell MERGED from BASE (exit 1)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    with progress_bar("verifying", quiet=args.quiet) as progress:
        report = verify_merge(
            args.base,
            [parse_adapter_arg(a) for a in args.adapters],
            args.merged,
            semantics=args.semantics,
            only=args.only,
            bases_path=args.bases,
            allow_pickle=args.allow_pickle,
            exclude=args.exclude,
            strength_map=args.strength_map,
            strict=args.strict,
            tolerance=args.tolerance,
            seed=args.seed,
            frames=args.frames,
            progress=progress,
            base_conditioner=args.conditioner,
            merged_conditioner=args.merged_conditioner,
        )
    print_ledger(report, "verify", args.json)
    if report.verdict == PASS:
        return 0
    if report.verdict == INCONCLUSIVE and not args.strict:
        print(f"sa3ckpt: warning: {escape_control(report.verdict_line())}", file=sys.stderr)
        return 0
    # Returned, not raised: the report above is this run's one document (--json included).
    print(f"sa3ckpt: error: {ValidationFailed(report.verdict_line()).one_line()}", file=sys.stderr)
    return ValidationFailed.exit_code
