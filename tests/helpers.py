"""Helpers shared by several test modules, so no test module imports another's internals.

Three groups: running the CLI as a user does (a subprocess), the tiny-small official base that
merge/combine/convert tests compare against, and the random adapter cases (layer shapes,
strengths, stacked type pairs, parameters) that the MLX formulas and the NumPy kernels are both
checked with against the float64 reference.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.names import official_base_key
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES, Target

# --- the CLI ---------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m sa3ckpt ARGS` in a subprocess: exit codes and output as a user sees them."""
    return subprocess.run(
        [sys.executable, "-m", "sa3ckpt", *args], capture_output=True, text=True, timeout=120
    )


# --- children that are sent signals ----------------------------------------------------------

# A child inherits an ignored SIGINT (a shell's `&` background job ignores it, and Python then
# never installs its KeyboardInterrupt handler), so a test that signals a child sets the
# dispositions it tests first, as a foreground shell would have them: SIGINT raises
# KeyboardInterrupt, SIGTERM is at its default (the CLI installs its own). The suite then
# passes however it is started (foreground, background job, nohup).
FOREGROUND_SIGNALS = (
    "import signal\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
)


def foreground_python(code: str, *args: str) -> list[str]:
    """The argv of `python -c CODE ARGS` with FOREGROUND_SIGNALS set before CODE runs."""
    return [sys.executable, "-c", FOREGROUND_SIGNALS + code, *args]


def foreground_cli(*args: str) -> list[str]:
    """The argv of `python -m sa3ckpt ARGS` with FOREGROUND_SIGNALS set first."""
    return foreground_python(
        "import sys\nfrom sa3ckpt.cli import main\nsys.exit(main(sys.argv[1:]))", *args
    )


# --- the tiny-small base ---------------------------------------------------------------------

BASE_FAMILY = "tiny-small"  # Conv1d k=3 in both official (out,in,k) and MLX (out,k,in) layouts
BASE_OFFICIAL = DATA_DIR / "bases" / f"{BASE_FAMILY}.official.safetensors"
BASE_MLX = DATA_DIR / "bases" / f"{BASE_FAMILY}.mlx.safetensors"


@functools.cache
def official_base_arrays(family: str = BASE_FAMILY) -> dict[str, np.ndarray]:
    """A tiny family's official base (tiny-small unless named), loaded once per test session."""
    return load_file(str(DATA_DIR / "bases" / f"{family}.official.safetensors"))


def base_2d(target: Target, family: str = BASE_FAMILY) -> np.ndarray:
    """A target's base weight (tiny-small unless named) as float64 in its canonical 2-D shape."""
    weights = official_base_arrays(family)
    return weights[official_base_key(target.name)].astype(np.float64).reshape(target.shape)


# --- random adapter cases for the math tests -------------------------------------------------

STRENGTHS = (0.0, 1e-5, 0.5, 1.0, 1.7)  # 1e-5: where blend and runtime differ most
LAYERS = {"linear": (24, 20, 1), "conv1d-k1": (16, 12, 1), "conv1d-k3": (10, 6, 3)}
RANK = 4
TOLERANCE = 1e-5  # relative to the largest weight entry (fp32 against float64)

STACK_PAIRS = [
    (a, b)
    for i, a in enumerate(ADAPTER_TYPES)
    for b in list(ADAPTER_TYPES)[i + 1 :] + list(ADAPTER_TYPES)[:i]
][::7]  # a spread of ordered pairs of different types (8 pairs), both orders represented


def random_params(
    kind_name: str, fan_out: int, fan_in: int, w0: np.ndarray, seed: int
) -> dict[str, np.ndarray]:
    """Random float64 params for a type, magnitudes near the base norms like a trained one."""
    rng = np.random.default_rng(seed)
    kind = ADAPTER_TYPES[kind_name]
    p: dict[str, np.ndarray] = {}
    for name, shape in kind.shapes(fan_out, fan_in, RANK).items():
        if name == "magnitude":
            axis = 1 if kind.norm == "rows" else 0
            p[name] = np.linalg.norm(w0, axis=axis) * (1 + 0.2 * rng.random(shape))
        elif name == "magnitude_r":
            p[name] = np.linalg.norm(w0, axis=1) * (1 + 0.2 * rng.random(shape))
        elif name == "magnitude_c":
            p[name] = 1 + 0.5 * rng.random(shape)
        else:
            p[name] = rng.standard_normal(shape) * 0.3
    if kind.xs:
        q_u, _ = np.linalg.qr(rng.standard_normal((fan_out, RANK)))
        q_v, _ = np.linalg.qr(rng.standard_normal((fan_in, RANK)))
        p["U"], p["V"] = q_u, q_v
    return p


def random_base(layer: str, seed: int) -> tuple[np.ndarray, int]:
    """A random base weight for a LAYERS entry, stored in PyTorch layout, and its kernel size."""
    fan_out, cin, k = LAYERS[layer]
    rng = np.random.default_rng(seed)
    shape = (fan_out, cin) if layer == "linear" else (fan_out, cin, k)
    return rng.standard_normal(shape).astype(np.float32), k


# --- small adapter files for the audit table and the hashes ------------------------------


def write_adapter(
    path: Path,
    *,
    rank: int = 4,
    seed: int = 0,
    type_name: str = "lora",
    config: dict[str, object] | None = None,
    metadata: dict[str, str] | None = None,
    zero_effect: bool = False,
) -> Path:
    """A small adapter file with `config` added to its lora_config and extra header entries."""
    adapter = synth_adapter(
        FAMILIES[BASE_FAMILY],
        type_name,
        rank=rank,
        seed=seed,
        include=["self_attn.to_qkv"],
        zero_effect=zero_effect,
        extra_config=config,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, adapter.file_tensors(), {**adapter.metadata(), **(metadata or {})})
    return path


def reference_hashes(path: Path) -> tuple[str, str]:
    """(data-section sha256, whole-file sha256) from the raw bytes, without the library."""
    raw = path.read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    return hashlib.sha256(raw[8 + header_length :]).hexdigest(), hashlib.sha256(raw).hexdigest()
