"""`sa3ckpt targets`: a family's adapter targets and their names in every dialect."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sa3ckpt.cli.common import JSON_SCHEMA_VERSION
from sa3ckpt.errors import UsageError
from sa3ckpt.names import format_adapter_key
from sa3ckpt.names.adapter_keys import ADAPTER_DIALECTS
from sa3ckpt.targets import FAMILIES, family


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("family", choices=list(FAMILIES), help="model family")
    parser.add_argument("--include", nargs="*", default=[], help="include patterns ([a-b] ranges)")
    parser.add_argument("--exclude", nargs="*", default=[], help="exclude patterns")
    parser.add_argument(
        "--dialect", choices=list(ADAPTER_DIALECTS), help="also show each target's lora_A key"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def run(args: argparse.Namespace) -> int:
    fam = family(args.family)
    try:
        selected = fam.selected(args.include, args.exclude)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    rows: list[dict[str, Any]] = []
    for t in selected:
        row: dict[str, Any] = {
            "name": t.name,
            "kind": t.layer_kind,
            "shape": list(t.shape),
            "weight_shape": list(t.weight_shape),
            "mlx": t.mlx_name,
            "sa3cpp": t.sa3cpp_stem,
        }
        if args.dialect:
            try:
                row["key"] = format_adapter_key(t.name, "lora_A", args.dialect)
            except ValueError as exc:
                row["key"] = None
                row["note"] = str(exc)
        rows.append(row)
    if args.json:
        doc = {
            "schema": JSON_SCHEMA_VERSION,
            "family": fam.name,
            "count": len(rows),
            "targets": rows,
        }
        print(json.dumps(doc, indent=1))
        return 0
    for row in rows:
        shape = "x".join(map(str, row["shape"]))
        line = f"{row['name']:<52} {row['kind']:<7} {shape:>11}"
        line += f"  mlx={row['mlx']}  sa3cpp={row['sa3cpp']}"
        if args.dialect:
            line += f"  key={row['key']}"
        print(line)
    print(f"{len(rows)} of {len(fam.targets)} {fam.name} targets selected")
    return 0
