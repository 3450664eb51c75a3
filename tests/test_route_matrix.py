"""Every kind of input file through every route, each cell with its documented outcome.

Inputs (tests/route_matrix_inputs.py) are generated once per session; routes
(tests/route_matrix_routes.py) run in process; the expected outcome of each cell is in one
table (tests/route_matrix_table.py). Each cell is its own test id, `<input>/<route>`.
The coverage tests make the matrix complete by construction: a route, input kind, adapter
type, family, file format, dialect or base naming added to the library fails them until
its row or column is filled. How to add one: docs/development/route-matrix.md.

Measured (2026-12-07, 1,771 tests: 83 inputs x 21 routes and 28 coverage tests): 58 s of CPU,
3 min 38 s wall on the 2-core machine shared with other jobs (load average 16); about a third
of the CPU is verify's DiT forwards, sa3.cpp GGUF reads and writes, and the merges.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

# sa3.cpp GGUF inputs and the sa3cpp targets need the gguf extra (installed by .ci/run and the
# dev set-up); without it the matrix would measure the missing package, not the routes.
pytest.importorskip("gguf")

from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.cli import COMMANDS
from sa3ckpt.io.formats import ADAPTER, BASE, CONVERT_OUTPUTS, FORMATS
from sa3ckpt.names.adapter_keys import ADAPTER_DIALECTS
from sa3ckpt.names.base_keys import BASE_NAMINGS
from sa3ckpt.ops.convert.adapters import PEFT_TYPES
from tests.remote_servers import NGINX
from tests.route_matrix_inputs import (
    ADAPTER_KINDS,
    EXTRA_KINDS,
    FAMILY_NAMES,
    KIND_READS,
    PEFT_LAYER_KINDS,
    PENDING_NAMINGS,
    UNREPRESENTABLE,
    URL_KINDS,
    InputCase,
    UrlInput,
    input_cases,
    write_inputs,
)
from tests.route_matrix_routes import (
    CONVERT_TARGETS,
    NOT_FILE_ROUTES,
    ROUTE_COMMANDS,
    ROUTES,
    TUI_PLANS,
    Cell,
)
from tests.route_matrix_table import ROUTE_CELLS, Outcome

CASES = input_cases()
KINDS = (*ADAPTER_KINDS, *EXTRA_KINDS)
HAS_TORCH = importlib.util.find_spec("torch") is not None
TUI_DIR = Path(__file__).resolve().parents[1] / "tui"


def expected(route: str, case: InputCase) -> Outcome:
    """The table's cell for (case, route); KeyError names what is missing."""
    cell = ROUTE_CELLS[route][case.kind]
    while not isinstance(cell, Outcome):
        key = case.type_name if case.type_name in cell else case.family
        if key not in cell:
            raise KeyError(f"{route} / {case.id}: no cell for {key!r} (has {sorted(cell)})")
        cell = cell[key]
    return cell


@pytest.fixture(scope="session")
def matrix(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> tuple[dict[str, Path], Path]:
    root = tmp_path_factory.mktemp("route-matrix")
    paths = write_inputs(root / "inputs", with_pickles=HAS_TORCH)
    if NGINX is not None:  # URL inputs: the written file, served by the tests' nginx
        server = request.getfixturevalue("nginx")
        for case in CASES:
            if case.kind in URL_KINDS:
                served = server.root / "files" / "matrix" / case.id / paths[case.id].name
                served.parent.mkdir(parents=True)
                shutil.copy(paths[case.id], served)
                url = server.url(f"files/matrix/{case.id}/{served.name}")
                paths[case.id] = UrlInput(url)  # type: ignore[assignment]
    return paths, root / "out"


@pytest.mark.parametrize(
    ("case", "route"),
    [(case, route) for case in CASES for route in ROUTES],
    ids=[f"{case.id}/{route}" for case in CASES for route in ROUTES],
)
def test_cell(matrix: tuple[dict[str, Path], Path], case: InputCase, route: str) -> None:
    if case.kind == "ckpt" and not HAS_TORCH:
        pytest.skip("legacy .ckpt inputs are written with torch (optional)")
    if case.kind in URL_KINDS and NGINX is None:
        pytest.skip("URL inputs are served by nginx (not installed here; .ci/run installs it)")
    want = expected(route, case)
    paths, out_root = matrix
    out = out_root / case.id / route
    out.mkdir(parents=True)
    got = ROUTES[route](Cell(case, paths[case.id], out, paths))
    said = got.stderr + got.stdout
    assert got.code == want.code, f"exit {got.code}, documented {want.code}: {said[-400:]}"
    assert "Traceback" not in got.stderr and "internal error" not in got.stderr, got.stderr
    if want.code != 0:
        assert want.message in said, f"refusal does not say {want.message!r}: {said[-400:]}"
    elif want.readback is not None:
        assert got.problem is not None and want.readback in got.problem, got.problem
    else:
        assert got.problem is None, got.problem


# --- the matrix is complete: the library's own tables against the matrix's ----------------


def test_every_route_has_a_column_and_every_column_a_route() -> None:
    assert set(ROUTE_CELLS) == set(ROUTES)


def test_every_cli_command_is_a_route_or_says_why_not() -> None:
    commands = {c.name for c in COMMANDS}
    routed = {c for c in ROUTE_COMMANDS.values() if c is not None}
    assert routed <= commands
    assert not routed & set(NOT_FILE_ROUTES)
    assert commands == routed | set(NOT_FILE_ROUTES), commands ^ (routed | set(NOT_FILE_ROUTES))


def test_every_convert_target_is_a_route() -> None:
    targets = {to for _kind, to in CONVERT_OUTPUTS}
    assert set(CONVERT_TARGETS) == targets
    assert {f"convert-{to}" for to in targets} <= set(ROUTES)


def test_every_tui_plan_is_a_route() -> None:
    plans = {p.stem for p in TUI_DIR.glob("*_plan.py")} | {"loading"}
    assert set(TUI_PLANS) == plans
    assert set(TUI_PLANS.values()) <= set(ROUTES)


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_kind_has_a_cell_in_every_route(route: str) -> None:
    assert set(ROUTE_CELLS[route]) == set(KINDS), set(ROUTE_CELLS[route]) ^ set(KINDS)
    for case in CASES:
        expected(route, case)  # resolves to one Outcome, or raises naming the gap


def test_every_type_in_every_adapter_kind_or_unrepresentable() -> None:
    present = {(c.kind, c.type_name) for c in CASES if c.kind in ADAPTER_KINDS}
    for kind in ADAPTER_KINDS:
        for type_name in ADAPTER_TYPES:
            assert ((kind, type_name) in present) != ((kind, type_name) in UNREPRESENTABLE)
    # the only pairs no file holds are those convert refuses to write (PEFT layers)
    assert set(UNREPRESENTABLE) == {
        (k, t) for k in PEFT_LAYER_KINDS for t in ADAPTER_TYPES if t not in PEFT_TYPES
    }


def test_both_families_meet_every_kind_and_every_type() -> None:
    for kind in ADAPTER_KINDS:
        assert {c.family for c in CASES if c.kind == kind} == set(FAMILY_NAMES), kind
    for type_name in ADAPTER_TYPES:
        families = {c.family for c in CASES if c.type_name == type_name and c.kind in KIND_READS}
        assert set(FAMILY_NAMES) <= families, type_name
    for kind in EXTRA_KINDS:
        if kind.startswith("base-"):
            assert {c.family for c in CASES if c.kind == kind} == set(FAMILY_NAMES), kind


def test_every_format_dialect_and_base_naming_is_an_input() -> None:
    assert set(KIND_READS) == set(KINDS)
    adapter_kinds = [k for k in KINDS if not k.startswith("base-")]
    base_kinds = [k for k in KINDS if k.startswith("base-")]
    read_formats = {KIND_READS[k][0] for k in KINDS}
    for fmt in FORMATS:
        assert fmt.name in read_formats, f"no input of format {fmt.name}"
    for holds, kinds in ((ADAPTER, adapter_kinds), (BASE, base_kinds)):
        formats = {f.name for f in FORMATS if holds in f.holds}
        assert {KIND_READS[k][0] for k in kinds} <= formats
    assert {KIND_READS[k][1] for k in adapter_kinds} == set(ADAPTER_DIALECTS)
    namings = {KIND_READS[k][1] for k in base_kinds}
    assert namings <= set(BASE_NAMINGS)
    missing = set(BASE_NAMINGS) - namings
    assert missing <= set(PENDING_NAMINGS), f"base namings without an input: {missing}"
    assert not namings & set(PENDING_NAMINGS), "a pending naming has its row: drop it there"
