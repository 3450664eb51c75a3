"""`sa3ckpt hash FILE...`: the tensor-data sha256 (AutoV3-style) and the whole-file sha256.

What each hash covers is defined in `sa3ckpt.io.hashing`. Every path is reported, in order;
a path that cannot be read (missing, a folder that is not an adapter, a safetensors file whose
header does not parse) is reported with its cause, and the exit code is 3 once all are done.
A damaged file still gets its whole-file sha256 when its bytes can be read, so a broken
download can be compared with the hub's listing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sa3ckpt import __version__
from sa3ckpt.cli.remote_args import add_remote_arguments, apply_remote_arguments
from sa3ckpt.errors import EXIT_OK, MalformedFileError
from sa3ckpt.io.hashing import FileHashes, file_sha256_only, hash_path
from sa3ckpt.io.remote import is_url
from sa3ckpt.textsafe import escape_control

SCHEMA_VERSION = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="FILE", help="checkpoint files or adapter folders (PEFT)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    add_remote_arguments(parser)


def _entry(path: str) -> tuple[dict[str, Any], MalformedFileError | None]:
    try:
        hashes: FileHashes = hash_path(path)
    except MalformedFileError as exc:
        whole = None
        if os.path.isfile(path) and not is_url(path):
            try:
                whole = file_sha256_only(path)
            except MalformedFileError:
                whole = None
        return {
            "path": path,
            "status": "malformed",
            "error": " ".join(exc.cause.split()),
            "tensor_sha256": None,
            "file_sha256": whole,
        }, exc
    return {
        "path": path,
        "status": "ok",
        "tensor_sha256": hashes.tensor_sha256,
        "tensor_sha256_short": hashes.short,
        "file_sha256": hashes.file_sha256,
        "scope": hashes.scope,
        "files": hashes.files,
    }, None


def run(args: argparse.Namespace) -> int:
    apply_remote_arguments(args, args.paths)
    entries = []
    failed = False
    for path in args.paths:
        entry, error = _entry(path)
        if error is not None:
            print(f"sa3ckpt: error: {error.one_line()}", file=sys.stderr)
            failed = True
        entries.append(entry)
    if args.json:
        doc = {"schema": SCHEMA_VERSION, "tool": f"sa3ckpt {__version__}", "files": entries}
        print(json.dumps(doc, indent=1))
    else:
        for e in entries:
            name = escape_control(e["path"])
            tensor = e["tensor_sha256"] or ("MALFORMED" if e["status"] != "ok" else "-")
            print(f"{name}\n  tensor-data sha256  {tensor}")
            print(f"  file sha256         {e['file_sha256'] or '-'}")
            if e["status"] != "ok":
                print(f"  error               {escape_control(e['error'])}")
            elif e["tensor_sha256"] is None:
                print(f"  note                {e['scope']}")
    return MalformedFileError.exit_code if failed else EXIT_OK
