"""Real-size verify: a complete small-family base (E=1024, 20 blocks, fp16) + a rank-16 adapter
on every target, merged by `sa3ckpt merge`, then checked by `sa3ckpt verify`, one run.

Each step is a separate `sa3ckpt` process, as a user runs it, so wall time and peak RSS are its
own (the base is generated in another child: Linux carries a parent's peak RSS into a forked
child, so generating it here would inflate every figure). The verify reports' numbers are
printed too (floor, difference, effect, time per phase). Optional extra runs: the same merge
written as fp32 (`--fp32`) and a deliberately wrong strength (`--wrong`), which `verify`
must pass and fail.

    python benchmarks/verify_real_size.py [--dir DIR] [--type dora-rows] [--fp32] [--wrong]

The generated files (0.9 GB base, 2.8 GB with the merges) are kept in DIR (default
/tmp/sa3ckpt-verify-bench) and reused. On Linux MLX multiplies with the BLAS sa3ckpt sets up
(MKL on x86-64); `SA3CKPT_BLAS=off` measures MLX's bundled reference BLAS instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.synth import official_full_tensors, synth_adapter
from sa3ckpt.targets import FAMILIES

FAMILY = "small"
MEMORY_TOKENS = 64  # as the released models


def run_measured(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall seconds, the child's own peak RSS in MB, result) of one process (wait4 on its pid)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def sa3ckpt(*args: str) -> list[str]:
    return [sys.executable, "-m", "sa3ckpt", *args]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sa3ckpt-verify-bench"))
    parser.add_argument("--type", default="dora-rows", help="adapter type (default dora-rows)")
    parser.add_argument("--fp32", action="store_true", help="also verify an fp32 merge")
    parser.add_argument("--wrong", action="store_true", help="also verify at a wrong strength")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work: Path = args.dir
    work.mkdir(parents=True, exist_ok=True)
    fam = FAMILIES[FAMILY]
    base = work / f"{FAMILY}.official-full.safetensors"
    adapter = work / f"{FAMILY}-r16-{args.type}.safetensors"
    if args.generate:
        tensors = official_full_tensors(fam, memory_tokens=MEMORY_TOKENS, dtype="F16")
        write_safetensors(base, tensors, {"format": "official-full"})
        return 0
    if not base.exists():  # in a child, so its memory does not count as the children's peaks
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--dir", str(work), "--generate"], check=True)
        print(f"generated {base} in {time.perf_counter() - start:.0f} s")
    if not adapter.exists():
        a = synth_adapter(fam, args.type, rank=16, alpha=16, seed=1)
        write_safetensors(adapter, a.file_tensors(), a.metadata())
    print(
        f"base: {base.stat().st_size / 1e9:.2f} GB fp16 ({len(fam.targets)} targets); "
        f"adapter: {adapter.stat().st_size / 1e6:.1f} MB ({args.type} r16)"
    )
    runs = [("fp16", [], "1.0", "pass")]
    if args.fp32:
        runs.append(("fp32", ["--dtype", "fp32"], "1.0", "pass"))
    if args.wrong:
        runs.append(("fp16", [], "0.9", "fail"))
    for dtype, extra, strength, expected in runs:
        merged = work / f"merged-{dtype}.safetensors"
        if not merged.exists():
            wall, peak, result = run_measured(
                sa3ckpt("merge", str(base), str(adapter), "-o", str(merged), "--force", *extra)
            )
            if result.returncode:
                print(result.stderr)
                return 1
            print(f"sa3ckpt merge ({dtype}):   {wall:7.1f} s, peak RSS {peak:6.0f} MB")
        wall, peak, result = run_measured(
            sa3ckpt("verify", str(base), f"{adapter}:{strength}", str(merged), "--json")
        )
        doc = json.loads(result.stdout)
        print(
            f"sa3ckpt verify ({dtype} MERGED, strength {strength}): {wall:7.1f} s, "
            f"peak RSS {peak:6.0f} MB, exit {result.returncode} (expected {expected})"
        )
        print(f"  {doc['verdict_line']}")
        print(
            f"  effect {doc['effect']:.3g}, floor {doc['rounding_floor']:.3g}, "
            f"difference {doc['difference']:.3g}, timings {doc['timings']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
