"""inspect (header-only) vs a full load, and validate of 200 medium adapters in one process.

Measured side by side in one run on generated real-size files:
1. a medium rank-16 dora-rows adapter on all 229 targets (43 MB fp16):
   `inspect_path` (header-only analysis) vs `safetensors.numpy.load_file` (reads everything);
2. 200 medium adapters (rank-8 lora on underfit's 169 targets; 8 distinct files, each copied
   25 times so every validation really reads its own file): `validate_paths` in one process vs
   one `sa3ckpt validate` process per file (a sample of 10 processes, scaled to 200).

    python benchmarks/inspect_validate.py [--files 200]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from safetensors.numpy import load_file
from timing import median_seconds

from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.names import UNDERFIT_DEFAULT_INCLUDE
from sa3ckpt.ops.inspect.report import inspect_path
from sa3ckpt.ops.validate import validate_paths
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    medium = FAMILIES["medium"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        big = synth_adapter(medium, "dora-rows", rank=16, alpha=16, seed=0)
        big_path = root / "medium-r16-dora-rows.safetensors"
        write_safetensors(big_path, big.file_tensors(), big.metadata())
        inspect_s = median_seconds(lambda: inspect_path(big_path), 21)
        load_s = median_seconds(lambda: load_file(str(big_path)), 7)
        size_mb = big_path.stat().st_size / 1e6
        print(f"[inspect] medium r16 dora-rows, {size_mb:.1f} MB, 229 targets")
        print(f"  sa3ckpt inspect (header-only analysis):  {inspect_s * 1e3:8.2f} ms")
        print(f"  safetensors.numpy.load_file (all data):  {load_s * 1e3:8.2f} ms")
        print(f"  ratio load_file / inspect: {load_s / inspect_s:.1f}x")

        folder = root / "adapters"
        folder.mkdir()
        distinct = []
        for seed in range(8):
            adapter = synth_adapter(
                medium, "lora", rank=8, alpha=8, seed=seed, include=list(UNDERFIT_DEFAULT_INCLUDE)
            )
            path = folder / f"a{seed:03d}.safetensors"
            write_safetensors(path, adapter.file_tensors(), adapter.metadata())
            distinct.append(path)
        for i in range(len(distinct), args.files):
            shutil.copyfile(distinct[i % len(distinct)], folder / f"a{i:03d}.safetensors")
        each_mb = distinct[0].stat().st_size / 1e6
        start = time.perf_counter()
        run = validate_paths([str(folder)])
        in_process = time.perf_counter() - start
        assert run.exit_code == 0 and len(run.files) == args.files, run.totals()
        sample = sorted(folder.iterdir())[:10]
        start = time.perf_counter()
        for path in sample:
            subprocess.run(
                [sys.executable, "-m", "sa3ckpt", "validate", "--quiet", str(path)],
                check=True,
                capture_output=True,
            )
        per_process = (time.perf_counter() - start) / len(sample)
        print(f"[validate] {args.files} medium adapters ({each_mb:.1f} MB each, 169 targets)")
        serial = per_process * args.files
        per_file_ms = in_process / args.files * 1e3
        print(f"  one process, all files:  {in_process:8.2f} s  ({per_file_ms:.1f} ms/file)")
        print(
            f"  one process per file:    {serial:8.2f} s  "
            f"(10-process sample, {per_process * 1e3:.0f} ms/file)"
        )
        print(f"  ratio per-file processes / one process: {serial / in_process:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
