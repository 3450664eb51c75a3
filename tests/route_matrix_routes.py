"""The route matrix's routes: how each one is run on an input, and what success must leave.

A route is a CLI command line (run in process through `sa3ckpt.cli.main`, stdout, stderr and
the exit code captured) or a TUI plan (the library calls the TUI's forms make, never the
CLI). Each returns an `Observed`: the exit code (a TUI failure carries the exit code of the
library error it caught), stderr, and, for a success, what the read-back check found wrong
(None when the output is what the route promises). The expected outcomes are in
`route_matrix_table`; the test compares the two.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import sa3ckpt.cli as cli_module
from fixtures.generate import DATA_DIR, official_full_base
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.errors import Sa3ckptError, UsageError
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.formats import ADAPTER, BASE, CONVERT_OUTPUTS
from sa3ckpt.io.safetensors import read_header
from sa3ckpt.ops.convert.adapters import written_type
from sa3ckpt.ops.merge import merge_checkpoint
from tests.route_matrix_inputs import (
    KIND_READS,
    PEFT_EXTRAS,
    PEFT_LAYER_KINDS,
    InputCase,
    official_base,
    partner,
)
from tui import combine_plan, convert_plan, merge_plan
from tui.loading import load_checkpoint as tui_open

CONVERT_TARGETS = tuple(sorted({to for _kind, to in CONVERT_OUTPUTS}))
# Adapter targets that need the conditioner dropped (no slot for it there) and XS bases.
DROPS_CONDITIONER = ("sa3cpp", "diffusers")
NEEDS_XS_BASES = ("sa3cpp", "peft", "diffusers")
CODEC_BASES = {  # codec family -> the codec weights its adapters merge into
    "tiny-same-s-encoder": DATA_DIR / "codec" / "tiny-same-s.autoencoder.safetensors",
    "tiny-same-l-decoder": DATA_DIR / "codec" / "tiny-same-l.autoencoder.safetensors",
}
# case id -> the merge route's output, so verify checks that merge instead of redoing it
MERGED: dict[str, Path] = {}
VERIFY_FRAMES = "2"  # latent frames of verify's probe (default 8): the check, not its size


@dataclass
class Observed:
    code: int
    stdout: str = ""
    stderr: str = ""
    problem: str | None = None  # what the read-back found wrong after a success


@dataclass(frozen=True)
class Cell:
    """Everything a route needs: the case, its path, a fresh output folder, all inputs."""

    case: InputCase
    path: Path
    out: Path
    inputs: dict[str, Path]

    @property
    def pickle(self) -> list[str]:
        return ["--allow-pickle"] if self.case.kind == "ckpt" else []

    @property
    def base(self) -> Path:
        """The base an adapter input is merged into / converted against."""
        if self.case.kind == "codec":
            return CODEC_BASES[self.case.family]
        return official_full_base(self.case.family)  # complete: verify can run the DiT


_BUILD_PARSER = cli_module.build_parser


@functools.cache
def _whole_parser() -> argparse.ArgumentParser:
    return _BUILD_PARSER()


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, built once, for whatever command `main` names: it parses them all."""
    return _whole_parser()


def cli(*args: str | Path) -> Observed:
    """`sa3ckpt ARGS` in process. The parser is built once for the matrix (building it is a
    third of a header-only route's time) and swapped in only for the call."""
    out, err = io.StringIO(), io.StringIO()
    build = cli_module.build_parser
    cli_module.build_parser = _parser
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_module.main([str(a) for a in args])
    finally:
        cli_module.build_parser = build
    return Observed(code, out.getvalue(), err.getvalue())


def read_type(case: InputCase) -> str | None:
    """The adapter type a reader must report for this input."""
    if case.type_name is None:
        return None
    if case.kind in PEFT_LAYER_KINDS or case.kind in PEFT_EXTRAS:
        return case.type_name.removesuffix("-xs")  # PEFT layers hold -xs as the plain type
    return case.type_name


# --- read-back checks (None: fine) ----------------------------------------------------------


@functools.cache
def _input_adapter(path: Path) -> AdapterCheckpoint:
    """An input as the library loads it, once per session (inputs are never written to)."""
    return load_adapter(path, allow_pickle=True)


def _json(observed: Observed) -> dict:  # type: ignore[type-arg]
    return json.loads(observed.stdout)


def _inspected(cell: Cell, observed: Observed) -> str | None:
    doc = _json(observed)["files"][0]
    if cell.case.is_base:
        return None if doc.get("kind") == "base" else f"not reported as a base: {doc.get('kind')}"
    if cell.case.kind == "codec":
        return None
    dialect = doc["dialect"]["name"]
    if dialect != KIND_READS[cell.case.kind][1]:
        return f"dialect {dialect!r}, expected {KIND_READS[cell.case.kind][1]!r}"
    got = doc["adapter_type"]["resolved"]
    family = (doc.get("family") or {}).get("name")
    if got != read_type(cell.case):
        return f"adapter type {got!r}, expected {read_type(cell.case)!r}"
    if family != cell.case.family:
        return f"family {family!r}, expected {cell.case.family!r}"
    return None


def _converted(cell: Cell, to: str, output: Path) -> str | None:
    if cell.case.kind == "codec":  # the codec reader: inspect names the codec family
        observed = cli("inspect", "--json", output)
        text = observed.stdout if observed.code == 0 else observed.stderr
        return None if cell.case.family in text else f"read back: {text[:200]}"
    if cell.case.is_base:
        with open_base(output) as base:
            return None if base.naming == to else f"wrote {base.naming} naming, not {to}"
    before = _input_adapter(cell.path)
    back = load_adapter(output)
    expected = written_type(before.adapter_type, to)
    if back.adapter_type != expected:
        return f"read back as {back.adapter_type}, expected {expected}"
    missing = set(before.tensors) - set(back.tensors)
    if to in DROPS_CONDITIONER:
        missing = {t for t in missing if not t.startswith("conditioners.")}
    return f"targets lost: {sorted(missing)[:3]}" if missing else None


def _header_rank(path: Path) -> int | None:
    """The rank in a safetensors file's lora_config (codec adapters and combine outputs)."""
    config = read_header(path).metadata.get("lora_config")
    return json.loads(config)["rank"] if config else None


def _catted(cell: Cell, output: Path) -> str | None:
    """cat of an adapter with itself: rank twice the input's."""
    if cell.case.kind == "codec":
        before = _header_rank(cell.path)
    else:
        before = _input_adapter(cell.path).config.rank
    after = _header_rank(output)
    if before is None or after != 2 * before:
        return f"rank {after} from two rank-{before} inputs"
    return None


def _merged(cell: Cell, base: Path, output: Path) -> str | None:
    if cell.case.kind == "codec":  # codec weights: plain safetensors, same keys
        before, after = load_file(str(base)), load_file(str(output))
        if set(before) != set(after):
            return "merged keys differ from the codec weights'"
        same = all(np.array_equal(before[k], after[k]) for k in before)
        return "no weight changed" if same else None
    with open_base(base) as before, open_base(output) as after:
        if after.naming != before.naming:
            return f"merged naming {after.naming}, base {before.naming}"
        changed = [
            key
            for key in before.tensors
            if key in after.tensors
            and not np.array_equal(np.asarray(before.read(key)), np.asarray(after.read(key)))
        ]
    return None if changed else "no weight changed"


# --- the routes ----------------------------------------------------------------------------


def _inspect(cell: Cell) -> Observed:
    observed = cli("inspect", "--json", cell.path, *cell.pickle)
    if observed.code == 0:
        observed.problem = _inspected(cell, observed)
    return observed


def _validate(*flags: str) -> Callable[[Cell], Observed]:
    return lambda cell: cli("validate", *flags, cell.path)


def _convert_args(cell: Cell, to: str) -> tuple[Path, list[str | Path]]:
    kind = BASE if cell.case.is_base else ADAPTER
    folder = (kind, to) in CONVERT_OUTPUTS and CONVERT_OUTPUTS[(kind, to)][0] in (
        "peft",
        "diffusers-lora",
        "diffusers-folder",
    )
    suffix = "" if folder else (".gguf" if to == "sa3cpp" else ".safetensors")
    output = cell.out / f"out{suffix}"
    extra: list[str | Path] = list(cell.pickle)
    if kind == ADAPTER and to in NEEDS_XS_BASES and cell.case.kind != "codec":
        extra += ["--base", official_base(cell.case.family)]  # the base the inputs' U/V are of
    if kind == ADAPTER and to in DROPS_CONDITIONER:
        extra.append("--drop-conditioner")
    return output, ["convert", cell.path, "-o", output, "--to", to, *extra]


def _convert(to: str) -> Callable[[Cell], Observed]:
    def run(cell: Cell) -> Observed:
        output, args = _convert_args(cell, to)
        observed = cli(*args)
        if observed.code == 0:
            observed.problem = _converted(cell, to, output)
        return observed

    return run


def _merge_args(cell: Cell, stack: bool) -> tuple[Path, Path, list[str | Path]]:
    """An adapter merged into its family's base (twice at 0.5 for the stack); a base input
    takes the partner adapter."""
    if cell.case.is_base:
        base, adapter = cell.path, cell.inputs[partner(cell.case.family).id]
    else:
        base, adapter = cell.base, cell.path
    suffix = ".npz" if base.suffix == ".npz" else ".safetensors"
    output = cell.out / ("merged" if base.is_dir() else f"merged{suffix}")
    adapters = [f"{adapter}:0.5", f"{adapter}:0.5"] if stack else [str(adapter)]
    return base, output, ["merge", base, *adapters, "-o", output, *cell.pickle]


def _merge(stack: bool) -> Callable[[Cell], Observed]:
    def run(cell: Cell) -> Observed:
        base, output, args = _merge_args(cell, stack)
        observed = cli(*args)
        if observed.code == 0:
            observed.problem = _merged(cell, base, output)
            if not stack:
                MERGED[cell.case.id] = output
        return observed

    return run


def _verify(cell: Cell) -> Observed:
    """verify BASE ADAPTER MERGED, MERGED being the merge route's output (merged here when
    that cell did not run or was refused: verify then meets the same input and says why)."""
    if cell.case.is_base:
        base, adapter = cell.path, cell.inputs[partner(cell.case.family).id]
    else:
        base, adapter = cell.base, cell.path
    merged = MERGED.get(cell.case.id)
    if merged is None:
        _, output, args = _merge_args(cell, stack=False)
        output = cell.out / output.name
        args[args.index("-o") + 1] = output
        merged = output if cli(*args).code == 0 else Path(base)
    return cli("verify", base, adapter, merged, "--frames", VERIFY_FRAMES, *cell.pickle)


def _combine(cell: Cell) -> Observed:
    output = cell.out / "combined.safetensors"
    observed = cli("combine", cell.path, cell.path, "-o", output, "--method", "cat", *cell.pickle)
    if observed.code == 0:
        observed.problem = _catted(cell, output)
    return observed


def _resize(cell: Cell) -> Observed:
    output = cell.out / "resized.safetensors"
    observed = cli("resize", cell.path, "-o", output, "--rank", "1", *cell.pickle)
    if observed.code == 0:
        back = load_adapter(output)
        observed.problem = None if back.config.rank == 1 else f"rank {back.config.rank}"
    return observed


def _hash(cell: Cell) -> Observed:
    observed = cli("hash", "--json", cell.path)
    if observed.code == 0:
        row = _json(observed)["files"][0]
        # containers without a data section (npz, pickle) have the whole-file hash only
        shas = [row["file_sha256"]] + ([row["tensor_sha256"]] if row["tensor_sha256"] else [])
        bad = [sha for sha in shas if len(sha) != 64]
        observed.problem = f"not a sha256: {bad}" if bad else None
    return observed


def _audit(cell: Cell) -> Observed:
    observed = cli("inspect", "-r", cell.path.parent, "--table", "--json", *cell.pickle)
    if observed.code == 0:
        rows = _json(observed)["rows"]
        if len(rows) != 1:
            observed.problem = f"{len(rows)} rows for one file"
        elif read_type(cell.case) and cell.case.kind != "codec":
            got = rows[0].get("adapter_type")
            if got != read_type(cell.case):
                observed.problem = f"row type {got!r} ({rows[0].get('status')})"
    return observed


def _library(call: Callable[[], object]) -> Observed:
    """A TUI plan's library calls: exit code of what they raise, like the CLI's."""
    try:
        call()
    except (convert_plan.PlanError, merge_plan.PlanError, combine_plan.PlanError) as exc:
        return Observed(UsageError.exit_code, stderr=str(exc))
    except Sa3ckptError as exc:
        return Observed(exc.exit_code, stderr=exc.one_line())
    return Observed(0)


def _tui_open(cell: Cell) -> Observed:
    loaded = tui_open(str(cell.path))
    if loaded.error is not None:
        return Observed(3, stderr=loaded.error)
    observed = Observed(0)
    if cell.case.is_base:
        observed.problem = None if loaded.is_base else "not shown as a base"
    elif cell.case.kind != "codec" and cell.case.kind != "ckpt":
        got = loaded.report.adapter_type.resolved if loaded.report else None
        observed.problem = None if got == read_type(cell.case) else f"shown as {got!r}"
    return observed


def _tui_convert(cell: Cell) -> Observed:
    output = cell.out / "tui.mlx.safetensors"

    def run() -> None:
        info = convert_plan.describe_input(str(cell.path))
        request = convert_plan.make_request(
            info, "mlx", str(output), allow_pickle=cell.case.kind == "ckpt"
        )
        convert_plan.run_convert(request)

    observed = _library(run)
    if observed.code == 0:
        observed.problem = _converted(cell, "mlx", output)
    return observed


def _tui_merge(cell: Cell) -> Observed:
    base, output, args = _merge_args(cell, stack=False)

    def run() -> None:
        adapter = str(args[2])
        plan = merge_plan.make_plan(
            str(base), [(adapter, "1")], str(output), allow_pickle=cell.case.kind == "ckpt"
        )
        merge_checkpoint(plan.base, list(plan.adapters), plan.output, plan.merge_options())

    observed = _library(run)
    if observed.code == 0:
        observed.problem = _merged(cell, base, output)
    return observed


def _tui_combine(cell: Cell) -> Observed:
    output = cell.out / "tui.combined.safetensors"

    def run() -> None:
        pair = [(str(cell.path), "1"), (str(cell.path), "1")]
        request = combine_plan.make_combine_request(
            pair, str(output), method="cat", allow_pickle=cell.case.kind == "ckpt"
        )
        combine_plan.run_combine(request)

    observed = _library(run)
    if observed.code == 0:
        observed.problem = _catted(cell, output)
    return observed


ROUTES: dict[str, Callable[[Cell], Observed]] = {
    "inspect": _inspect,
    "validate": _validate(),
    "validate-strict": _validate("--strict"),
    **{f"convert-{to}": _convert(to) for to in CONVERT_TARGETS},
    "merge": _merge(stack=False),
    "merge-stack": _merge(stack=True),
    "verify": _verify,
    "combine": _combine,
    "resize": _resize,
    "hash": _hash,
    "audit": _audit,
    "tui-open": _tui_open,
    "tui-convert": _tui_convert,
    "tui-merge": _tui_merge,
    "tui-combine": _tui_combine,
}
# The TUI's plan modules (tui/*_plan.py and the loader) -> the route that runs their calls.
TUI_PLANS = {
    "loading": "tui-open",
    "convert_plan": "tui-convert",
    "merge_plan": "tui-merge",
    "combine_plan": "tui-combine",
}
# CLI commands that take no input file of the matrix's kinds, with the reason; every other
# command must be a route above (the test checks the CLI's own command table).
NOT_FILE_ROUTES: dict[str, str] = {
    "bases": "takes a base and writes XS bases; covered by its own tests (test_xs_bases)",
    "extract": "takes a base and a full fine-tune, not an adapter",
    "encode": "takes a folder of audio clips",
    "demo": "generates its own files",
    "tui": "interactive; its plans are the tui-* routes",
    "targets": "lists a family's targets, reads no file",
}
ROUTE_COMMANDS = {  # route -> the CLI command it exercises (None: a TUI plan)
    route: (None if route.startswith("tui-") else route.split("-")[0]) for route in ROUTES
}
ROUTE_COMMANDS["audit"] = "inspect"
