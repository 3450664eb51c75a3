"""`sa3ckpt encode`: a folder of audio clips -> a folder of SA3 latent files, resumably.

Bad clips are reported one line each on stderr and in the ledger, and never stop the batch;
the exit code is 1 when any clip failed (the others are written).
"""

from __future__ import annotations

import argparse
import os
import sys

from sa3ckpt.cli.common import print_ledger
from sa3ckpt.cli.progress import add_quiet, progress_bar
from sa3ckpt.textsafe import escape_control
from sa3ckpt.train.codecs import CODECS, DTYPES, load_codec
from sa3ckpt.train.encode_dir import DEFAULT_CHUNK, Chunking, encode_folder

EXIT_CLIPS_FAILED = 1  # some clips failed; the others were written (docs/reference/exit-codes.md)


def _latents(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", metavar="AUDIO_DIR", help="folder of .wav/.flac/.ogg clips")
    parser.add_argument(
        "-o", "--output", required=True, metavar="LATENTS_DIR", help="folder for latent files"
    )
    parser.add_argument(
        "--codec",
        required=True,
        choices=list(CODECS),
        help="; ".join(f"{name}: {desc}" for name, (_, desc) in CODECS.items()),
    )
    parser.add_argument(
        "--weights", required=True, metavar="FILE", help="the codec's weights (its sha256 is kept)"
    )
    parser.add_argument(
        "--chunk",
        type=_latents,
        default=DEFAULT_CHUNK,
        metavar="N",
        help=f"encode in windows of N latents (default {DEFAULT_CHUNK}; 0: whole clips at once)",
    )
    parser.add_argument(
        "--overlap",
        type=_latents,
        metavar="N",
        help="latents shared by neighbouring windows, even (default: the codec's exact overlap)",
    )
    parser.add_argument(
        "--dtype", choices=list(DTYPES), default="fp32", help="the codec's run dtype (fp32)"
    )
    parser.add_argument("--force", action="store_true", help="re-encode clips already done")
    parser.add_argument("--json", action="store_true", help="print the ledger as one JSON document")
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    codec = load_codec(args.codec, args.weights, args.dtype)
    chunking = Chunking(args.chunk or None, args.overlap)
    with progress_bar("encode", quiet=args.quiet) as progress:
        ledger = encode_folder(
            args.audio, args.output, codec, chunking=chunking, force=args.force, progress=progress
        )
    for result in ledger.failed:
        path = escape_control(os.path.join(args.audio, result.source))
        if os.path.isfile(args.audio):
            path = escape_control(args.audio)
        print(f"sa3ckpt: error: {path}: {escape_control(result.reason)}", file=sys.stderr)
    print_ledger(ledger, "encode", args.json)
    return EXIT_CLIPS_FAILED if ledger.failed else 0
