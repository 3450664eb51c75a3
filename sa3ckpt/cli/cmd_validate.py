"""`sa3ckpt validate`: the CI gate (rules, exit codes, JSON / JUnit / GitHub outputs)."""

from __future__ import annotations

import argparse
import sys

from sa3ckpt.cli.common import console
from sa3ckpt.cli.remote_args import add_remote_arguments, apply_remote_arguments, refuse_urls_for
from sa3ckpt.cli.render import print_validation
from sa3ckpt.cli.reports import dumps, github_annotations, validation_document, write_junit
from sa3ckpt.ops.validate import validate_paths
from sa3ckpt.targets import FAMILIES
from sa3ckpt.targets.codec_families import CODEC_TARGET_FAMILIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="adapter files, PEFT folders, folders"
    )
    parser.add_argument(
        "--model",
        default="auto",
        choices=["auto", *FAMILIES, *CODEC_TARGET_FAMILIES],
        help="model family",
    )
    parser.add_argument(
        "--base",
        metavar="BASE",
        help="the base they are to be merged into: warns on a training-base/post-trained "
        "lineage mismatch",
    )
    parser.add_argument("--strict", action="store_true", help="warnings fail too")
    parser.add_argument("--deep", action="store_true", help="read every tensor (NaN/Inf)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")
    parser.add_argument("--github", action="store_true", help="GitHub Actions annotations")
    parser.add_argument("--quiet", action="store_true", help="hide info findings")
    add_remote_arguments(parser)


def run(args: argparse.Namespace) -> int:
    apply_remote_arguments(args, args.paths)
    if args.deep:
        refuse_urls_for("validate --deep", args.paths)
    run = validate_paths(
        args.paths, model=args.model, strict=args.strict, deep=args.deep, base=args.base
    )
    if args.junit:
        write_junit(run, args.junit)
    if args.github:
        stream = sys.stderr if args.json else sys.stdout
        for line in github_annotations(run):
            print(line, file=stream)
    if args.json:
        print(dumps(validation_document(run)))
    else:
        print_validation(console(), run, show_info=not args.quiet)
    return run.exit_code
