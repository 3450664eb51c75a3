"""The audit table over 1,000 generated adapter files: header-only, with --hash, with --deep.

A folder like a sweep's output: 10 runs (`run-r{R}-{n}/`), 100 checkpoints each named
`lora-step={S}-epoch={E}.safetensors` with step/epoch also in lora_config, rank-R lora on
every tiny-small target (40 targets, 80 tensors, ~20 KB each). One run is misnamed (its
folder claims r32), and a few files are copies or untrained, so every check has work.
Timed in one process (`audit_paths`, median of 3) and end to end as a user runs it
(`sa3ckpt inspect -r DIR --table --json`, one process, Python start-up included).

    python benchmarks/audit_table.py [--files 1000]
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

from timing import median_seconds

from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.ops.inspect.audit import audit_paths
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES

RUNS = 10
RANKS = (4, 8, 16)


def generate(root: Path, files: int) -> None:
    """`files` adapters in RUNS run folders; run 0 claims r32 in its name but holds rank 4."""
    fam = FAMILIES["tiny-small"]
    per_run = max(files // RUNS, 1)
    written = 0
    for run in range(RUNS):
        rank = RANKS[run % len(RANKS)]
        claimed = 32 if run == 0 else rank
        folder = root / f"run-r{claimed}-{run}"
        folder.mkdir()
        for i in range(per_run):
            if written == files:
                return
            step, epoch = (i + 1) * 500, i // 10 + 1
            path = folder / f"lora-step={step}-epoch={epoch}.safetensors"
            if i == 7:  # a copy of the previous checkpoint under another name
                shutil.copy(
                    folder / f"lora-step={step - 500}-epoch={(i - 1) // 10 + 1}.safetensors", path
                )
            else:
                adapter = synth_adapter(
                    fam,
                    "lora",
                    rank=rank,
                    seed=run * 10_000 + i,
                    zero_effect=i == 0,  # the first save of a run: still the init
                    extra_config={"step": step, "epoch": epoch},
                )
                write_safetensors(path, adapter.file_tensors(), adapter.metadata())
            written += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        root.mkdir()
        generate(root, args.files)
        count = sum(1 for _ in root.rglob("*.safetensors"))
        size_mb = sum(p.stat().st_size for p in root.rglob("*.safetensors")) / 1e6
        print(f"[audit] {count} files, {size_mb:.1f} MB, in {RUNS} run folders")
        for label, kwargs in (
            ("header-only (default)", {}),
            ("--hash (reads every byte)", {"hashes": True}),
            ("--deep (reads lora_B / M_xs)", {"deep": True}),
            ("--hash --deep", {"hashes": True, "deep": True}),
        ):
            seconds = median_seconds(lambda kw=kwargs: audit_paths([str(root)], **kw), 3)
            print(
                f"  audit_paths {label:32s} {seconds:6.2f} s  ({seconds / count * 1e3:.2f} ms/file)"
            )
        table = audit_paths([str(root)], hashes=True, deep=True)
        print(f"  rows by status: {table.counts()}")
        flagged = {}
        for row in table.rows:
            for flag in row.flags:
                flagged[flag.code] = flagged.get(flag.code, 0) + 1
        print(f"  flags: {flagged}")
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "sa3ckpt", "inspect", "-r", str(root), "--table", "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        cli = time.perf_counter() - start
        print(
            f"  sa3ckpt inspect -r DIR --table --json (one process): {cli:.2f} s, "
            f"exit {result.returncode}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
