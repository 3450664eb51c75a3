"""Real-size merge: a medium base (1.45 B target params, fp16, ~2.9 GB) + a rank-16 dora-rows
adapter on all 229 targets, against `cp` of the same base, measured side by side in one run.

Reports merge wall time / cp wall time and the merge process's peak RSS. The merge runs as a
separate `sa3ckpt merge` process (as a user would run it) so its RSS is its own.

    python benchmarks/merge_real_size.py [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sa3ckpt.io.safetensors import SafetensorsStreamWriter, write_safetensors
from sa3ckpt.names import block_target, official_base_key
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES


def write_medium_base(path: Path) -> int:
    """Stream a medium official-full base to disk one tensor at a time; return its params."""
    return write_base(path, "medium")


def write_base(path: Path, family: str = "medium", blocks: int | None = None) -> int:
    """Stream a synthetic official-full base of `family` (its first `blocks` blocks and the
    top-level targets when given) to disk one tensor at a time; return its target params."""
    fam = FAMILIES[family]
    rng = np.random.default_rng(0)
    targets = [t for t in fam.targets if blocks is None or t.block is None or t.block < blocks]
    width = fam.targets[0].shape[0]
    depth = 1 + max(t.block for t in fam.targets if t.block is not None)
    specs = [(official_base_key(t.name), "F16", t.weight_shape) for t in targets]
    extras = [
        (official_base_key(block_target(b, "pre_norm"), "gamma"), "F16", (width,))
        for b in range(depth if blocks is None else min(blocks, depth))
    ]
    with SafetensorsStreamWriter(path, specs + extras, {"format": "official-full"}) as writer:
        for (key, _, shape), target in zip(specs, targets, strict=True):
            scale = np.float32(np.sqrt(3.0 / target.shape[1]))
            values = (rng.random(shape, dtype=np.float32) * 2 - 1) * scale
            writer.write(key, values.astype(np.float16))
        for key, _, shape in extras:
            writer.write(key, np.ones(shape, np.float16))
    return sum(int(np.prod(t.weight_shape)) for t in targets)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="working folder (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="sa3ckpt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        base = work / "medium-base.safetensors"
        adapter = work / "medium-r16-dora-rows.safetensors"
        if not base.exists():
            params = write_medium_base(base)
            size_gb = base.stat().st_size / 1e9
            print(f"generated base: {params / 1e9:.3f} B target params, {size_gb:.2f} GB")
        if not adapter.exists():
            a = synth_adapter(FAMILIES["medium"], "dora-rows", rank=16, alpha=16, seed=1)
            write_safetensors(adapter, a.file_tensors(), a.metadata())
        copy = work / "copy.safetensors"
        merged = work / "merged.safetensors"
        timed(["cp", str(base), str(copy)])  # warm the page cache for both
        copy.unlink()
        cp_s = min(timed(["cp", str(base), str(copy)]) for _ in range(2))
        copy.unlink()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        merge_s = timed(
            [
                sys.executable,
                "-m",
                "sa3ckpt",
                "merge",
                str(base),
                f"{adapter}:1.0",
                "-o",
                str(merged),
                "--force",
            ]
        )
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        size_gb, adapter_mb = base.stat().st_size / 1e9, adapter.stat().st_size / 1e6
        print(f"base: {size_gb:.2f} GB; adapter: {adapter_mb:.1f} MB")
        print(f"cp of the base:        {cp_s:7.2f} s")
        print(f"sa3ckpt merge:         {merge_s:7.2f} s  (229 dora-rows targets, runtime)")
        print(f"ratio merge / cp:      {merge_s / cp_s:7.2f}x")
        print(
            f"merge peak RSS:        {peak_kb / 1024:7.0f} MB"
            + ("" if peak_kb > before else " (cp dominated)")
        )
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
