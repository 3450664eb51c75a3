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

# Why a process could abort at exit: MLX keeps compiled functions (mlx.nn's activations are
# `mx.compile`d) in a per-thread cache that holds Python objects; a worker thread that called
# one destroys that cache after join() returned, racing the interpreter's finalization, and
# loses with "terminate called without an active exception" (ten runs in ten of forty
# compiled functions in four pool threads). sa3ckpt's models call no compiled function, so
# nothing of theirs is in such a cache, and compilation stays on for everyone else.

# Every MLX path of sa3ckpt (the DiT and its conditioner, verify's probe, a training step
# with injected adapters, the SAME encoder), run with `mx.compile` replaced before mlx.nn
# loads by one that records the functions called through it.
NO_COMPILED_CALLS = """
import json
import mlx.core as mx
real, called = mx.compile, []
def recording(fun=None, **options):
    compiled = real(fun, **options)
    def call(*args, **kwargs):
        called.append(fun.__name__)
        return compiled(*args, **kwargs)
    return call
mx.compile = recording
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import sa3ckpt
from sa3ckpt.adapters import inject
from sa3ckpt.models import build_conditioner, build_dit, SameEncoder
from sa3ckpt.models.same import SameConfig
from sa3ckpt.ops.verify.probe import make_probe, run_probe
from sa3ckpt.train import rectified_flow_loss, rectified_flow_pair
dit = build_dit("tiny-small", memory_tokens=2)
cond = build_conditioner(dit.config)
probe = make_probe(dit.topology, seed=0, frames=4)
run_probe(dit, cond, probe)
inject(dit, "dora-rows", 2, 2, exclude=["conditioner"])
case = probe.cases[0]
cross, glob = cond(probe.prompt, mx.array([10.0]), probe.mask, length=None)
def loss_fn(model, x_t, t, v):
    return rectified_flow_loss(model(x_t, t, cross, glob, case.local_add_cond), v, None)
t = mx.array([0.4])
x_t, v, _ = rectified_flow_pair(case.x, t, mx.random.key(0))
loss, grads = nn.value_and_grad(dit, loss_fn)(dit, x_t, t, v)
opt = optim.AdamW(learning_rate=1e-4)
opt.update(dit, grads)
encoder = SameEncoder(SameConfig("same-test", width=64, blocks=2, schedule="chunked"))
latents = encoder(mx.zeros((1, 256 * 16 * 4, 2)))
mx.eval(dit.parameters(), opt.state, latents)
paths = list(called)
mx.eval(nn.silu(mx.ones(3)))  # the control: a compiled mlx.nn function is seen
print(json.dumps([paths, called[len(paths):]]))
"""


def test_sa3ckpts_mlx_paths_call_no_compiled_function() -> None:
    """The structural property: nothing sa3ckpt runs goes through `mx.compile`, so no
    thread that runs it holds Python objects in MLX's per-thread compile cache."""
    paths, control = run_json(NO_COMPILED_CALLS)
    assert control == ["silu"]  # the recorder sees mlx.nn's compiled functions
    assert paths == []


def test_importing_sa3ckpt_leaves_compilation_on() -> None:
    """No effect on the caller's own `mx.compile` (on any platform): a compiled function
    is traced once, then run from the cache."""
    code = (
        "import json, os, sa3ckpt, mlx.core as mx\n"
        "traced = []\n"
        "def f(x):\n"
        "    traced.append(1); return x * 2\n"
        "g = mx.compile(f)\n"
        "for _ in range(3): mx.eval(g(mx.ones(3)))\n"
        "print(json.dumps([len(traced), 'MLX_DISABLE_COMPILE' in os.environ]))"
    )
    assert run_json(code) == [1, False]


# sa3ckpt's DiT and verify's probe in four pool threads, each with its own stream, then a
# normal exit: the pattern that aborted, with sa3ckpt's own work in it.
WORKERS = """
import threading
from concurrent.futures import ThreadPoolExecutor
import sa3ckpt
import mlx.core as mx
from sa3ckpt.models import build_conditioner, build_dit
from sa3ckpt.ops.verify.probe import make_probe, run_probe
dit = build_dit("tiny-small", memory_tokens=2)
cond = build_conditioner(dit.config)
mx.eval(dit.parameters(), cond.parameters())
probe = make_probe(dit.topology, seed=0, frames=4)
local = threading.local()
def case(i):
    if not hasattr(local, "stream"):
        local.stream = mx.new_stream(mx.cpu)
    with mx.stream(local.stream):
        return float(sum(y.sum() for y in run_probe(dit, cond, probe)))
with ThreadPoolExecutor(max_workers=4) as pool:
    print(sum(pool.map(case, range(8))))
"""


def test_sa3ckpt_work_in_worker_threads_exits_cleanly() -> None:
    """Five times: every run exits 0 with nothing on stderr."""
    for attempt in range(5):
        result = run_python(WORKERS)
        assert (result.returncode, result.stderr) == (0, ""), (attempt, result.stderr)
