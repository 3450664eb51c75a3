"""The MLX runtime set-up (`sa3ckpt.mlx_runtime`): which BLAS MLX binds, the off switch, the
thread count, the diagnostics, and no abort at exit after MLX work in worker threads.

Each case runs in a fresh interpreter (the BLAS is chosen once per process, before mlx
loads), as a user's process would.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from sa3ckpt.mlx_runtime import ENV, REFERENCE
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
LINUX_X86 = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
BLAS_VARS = ("SA3CKPT_BLAS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# What a process reports after the normal import order (sa3ckpt, then mlx), with a matrix
# product checked against NumPy so the bound BLAS is shown to compute, not only to load.
PROBE = """
import json, sys
import numpy as np
import sa3ckpt
import mlx.core as mx
from sa3ckpt.mlx_runtime import active
a = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((96, 80)).astype(np.float32)
c = np.array(mx.array(a) @ mx.array(b))
exact = a.astype(np.float64) @ b.astype(np.float64)
doc = active().to_json()
doc["rel_error"] = float(np.abs(c - exact).max() / np.abs(exact).max())
print(json.dumps(doc))
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**clean, **env},
    )


def run_json(code: str, **env: str) -> list:
    result = run_python(code, **env)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


def probe(code: str = PROBE, **env: str) -> dict:
    result = run_python(code, **env)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not LINUX_X86, reason="the mkl wheel is the Linux x86-64 dependency")
def test_mkl_is_what_mlx_multiplies_with_after_the_normal_import() -> None:
    doc = probe()
    assert doc["name"] == "Intel MKL" and doc["optimized"] is True, doc
    assert Path(doc["path"]).name.startswith("libmkl_rt.so."), doc
    assert doc["threads"] >= 1 and doc["threads_from"] == "the machine's cores"
    assert doc["rel_error"] < 1e-5
    assert doc["line"].startswith("MLX BLAS: Intel MKL ") and f"{ENV}=off" in doc["line"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the switch acts on Linux")
def test_off_switch_keeps_the_reference_blas() -> None:
    doc = probe(SA3CKPT_BLAS="off")
    assert doc["name"] == REFERENCE and doc["optimized"] is False and doc["path"] is None
    assert doc["note"] == f"{ENV}=off"
    assert doc["rel_error"] < 1e-5


@pytest.mark.skipif(not LINUX_X86, reason="the mkl wheel is the Linux x86-64 dependency")
@pytest.mark.parametrize(
    ("variable", "expected"),
    [("OPENBLAS_NUM_THREADS", "OPENBLAS_NUM_THREADS"), ("OMP_NUM_THREADS", "OMP_NUM_THREADS")],
)
def test_thread_count_follows_the_users_variables(variable: str, expected: str) -> None:
    code = PROBE.replace(
        "print(json.dumps(doc))",
        "import ctypes; doc['mkl'] = ctypes.CDLL(doc['path']).MKL_Get_Max_Threads()\n"
        "print(json.dumps(doc))",
    )
    doc = probe(code, **{variable: "1"})
    assert (doc["threads"], doc["threads_from"], doc["mkl"]) == (1, expected, 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_mlx_imported_before_sa3ckpt_is_reported_not_hidden() -> None:
    doc = probe(
        PROBE.replace(
            "import sa3ckpt\nimport mlx.core as mx", "import mlx.core as mx\nimport sa3ckpt"
        )
    )
    assert doc["name"] == REFERENCE and "imported before sa3ckpt" in doc["note"]


def test_other_platforms_load_nothing() -> None:
    code = (
        "import sys; sys.platform = 'darwin'\n"
        "import ctypes, json, sa3ckpt\n"
        "from sa3ckpt.mlx_runtime import prepare\n"
        "found = prepare()\n"
        "print(json.dumps([found.path, found.reason, hasattr(ctypes.CDLL(None), 'cblas_sgemm')]))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    path, reason, exported = json.loads(result.stdout)
    assert path is None and reason.startswith("not Linux") and exported is False


def test_version_names_the_blas() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first.startswith("sa3ckpt ") and second.startswith("MLX BLAS: ")


def test_mkl_dependency_is_linux_x86_only() -> None:
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (mkl,) = [Requirement(r) for r in project["dependencies"] if r.startswith("mkl")]
    assert mkl.marker is not None
    for plat, machine, wanted in (
        ("linux", "x86_64", True),
        ("linux", "aarch64", False),
        ("darwin", "arm64", False),
        ("darwin", "x86_64", False),
        ("win32", "AMD64", False),
    ):
        env = {"sys_platform": plat, "platform_machine": machine}
        assert mkl.marker.evaluate(env) is wanted, (plat, machine)


# --- threads and buffers of MLX's own threads ---------------------------------------------------

# Two CPU streams multiply at once; the BLAS threads every stream thread's products take are
# counted by the threads the process has (a multi-threaded MKL product starts OpenMP workers
# for the stream thread that calls it; a one-thread product starts none).
STREAM_THREADS = """
import ctypes, json, os
import sa3ckpt
import mlx.core as mx
from sa3ckpt import mlx_streams
from sa3ckpt.mlx_runtime import mlx_blas_threads, prepare
threads = lambda: len(os.listdir("/proc/self/task"))
lib = ctypes.CDLL(prepare().path)
a, b = mx.ones((512, 1024)), mx.ones((1024, 1024))
mx.eval(a, b)
streams = mlx_streams.cpu_streams(2)
for s in streams:  # the streams' threads start with their first work
    with mx.stream(s):
        mx.eval(mx.zeros(1) + 1)
def products(n):
    outs = []
    for s in streams:
        with mx.stream(s):
            outs.append(a @ b)
    mx.eval(outs)
before = threads()
with mlx_blas_threads(1):
    inside = lib.MKL_Get_Max_Threads()
    products(2)
one = threads()
products(2)
print(json.dumps([before, one, threads(), inside, lib.MKL_Get_Max_Threads()]))
"""


@pytest.mark.skipif(not LINUX_X86, reason="the mkl wheel is the Linux x86-64 dependency")
def test_stream_threads_take_the_process_wide_blas_limit() -> None:
    """`mlx_blas_threads` reaches the threads MLX multiplies in (a thread-local limit, as
    threadpoolctl sets, does not) and puts the previous count back."""
    before, one, two, inside, after = run_json(STREAM_THREADS, MKL_NUM_THREADS="2")
    assert (inside, after) == (1, 2)
    if two == before:  # the control: MKL takes one thread per product on this machine anyway
        pytest.skip("MKL multiplies on one thread here, so the limit cannot show")
    assert two == before + 2  # two per stream without the limit: one OpenMP worker each
    assert one == before  # one BLAS thread per stream: no worker started


def test_freed_buffers_are_reused_inside_and_released_after() -> None:
    code = (
        "import json, sa3ckpt, mlx.core as mx\n"
        "from sa3ckpt.mlx_runtime import reuse_mlx_buffers\n"
        "limit = mx.set_cache_limit(1 << 20); mx.set_cache_limit(limit)\n"
        "with reuse_mlx_buffers():\n"
        "    xs = [mx.ones((256, 1024)) for _ in range(32)]; mx.eval(xs); del xs\n"
        "    kept = mx.get_cache_memory()\n"
        "    ys = [mx.ones((256, 1024)) for _ in range(32)]; mx.eval(ys)\n"
        "    reused = kept - mx.get_cache_memory()\n"
        "after = mx.set_cache_limit(limit)\n"
        "print(json.dumps([kept, reused, mx.get_cache_memory(), after == limit]))"
    )
    kept, reused, left, restored = run_json(code)
    assert kept >= 32 * 256 * 1024 * 4 and reused >= 32 * 256 * 1024 * 4
    assert left == 0 and restored


# --- exit safety -------------------------------------------------------------------------------

# The pattern that aborted ("terminate called without an active exception") in every one of
# ten runs before the fix: compiled MLX functions (mlx.nn activations inside `mx.compile`)
# called in pool worker threads, then a normal exit. Each worker thread's C++ thread-local
# compile cache held Python functions and was destroyed after join() had returned, racing the
# main thread's interpreter finalization (taking the GIL then ends the thread inside a
# noexcept destructor). Forty compiled functions make that teardown long enough to lose the
# race nearly always; the stream per thread is the pattern verify once used.
WORKERS = """
import threading
from concurrent.futures import ThreadPoolExecutor
import sa3ckpt
import mlx.core as mx
import mlx.nn as nn
local = threading.local()
fns = [mx.compile(lambda x, k=k: nn.silu(x * k) + k) for k in range(40)]
def case(i):
    if not hasattr(local, "stream"):
        local.stream = mx.new_stream(mx.cpu)
    with mx.stream(local.stream):
        x = mx.ones((8, 16)) * i
        for f in fns:
            x = nn.gelu(f(x))
        mx.eval(x)
        return x.sum().item()
with ThreadPoolExecutor(max_workers=4) as pool:
    print(sum(pool.map(case, range(8))))
"""


def test_compiled_functions_keep_no_per_thread_cache() -> None:
    """The structural property: after sa3ckpt is imported, `mx.compile` runs the Python
    function on every call (nothing is cached per thread, so no thread owns Python objects
    in C++ thread-local storage), in the main thread and in a worker thread alike."""
    code = (
        "import threading, sa3ckpt, mlx.core as mx\n"
        "calls = []\n"
        "def f(x):\n"
        "    calls.append(threading.get_ident()); return x * 2\n"
        "g = mx.compile(f)\n"
        "def run():\n"
        "    for _ in range(3): mx.eval(g(mx.ones(3)))\n"
        "run(); t = threading.Thread(target=run); t.start(); t.join()\n"
        "print(len(calls))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "6"


def test_mlx_work_in_worker_threads_exits_cleanly() -> None:
    """The abort pattern, five times: every run exits 0 with nothing on stderr."""
    for attempt in range(5):
        result = run_python(WORKERS)
        assert (result.returncode, result.stderr) == (0, ""), (attempt, result.stderr)
