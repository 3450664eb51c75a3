"""Real-size merge: a medium fp16 base (1.45 B target params, ~2.9 GB) + a rank-16 adapter of
each of lora, dora-rows, dora-cols and bora on all 229 targets, against `cp BASE OUT && sync`
of the same file on the same disk, measured side by side in one run.

Prints the cp + sync time, then per adapter type the merge wall time (a separate
`sa3ckpt merge` process, as a user runs it: start-up, reading, merging, writing and the
fsync before the atomic rename all included), its ratio to cp + sync and the merge
process's own peak RSS (from wait4, so neither the base generation nor cp counts). Every
measurement is repeated (--repeat) in interleaved rounds and the median is shown; before
each one the previous output is deleted and `sync` runs, so no timing pays for another's
writeback. With --compare TREE, dora-rows is also merged with the sa3ckpt in another
checkout (e.g. the main branch before a change) in the same rounds.

    python benchmarks/merge_real_size.py [--dir DIR] [--keep] [--repeat N] [--compare TREE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures.generate import DATA_DIR  # noqa: E402
from sa3ckpt.io.safetensors import SafetensorsStreamWriter, write_safetensors  # noqa: E402
from sa3ckpt.names import block_target, official_base_key  # noqa: E402
from sa3ckpt.synth import synth_adapter  # noqa: E402
from sa3ckpt.targets import FAMILIES  # noqa: E402

TYPES = ("dora-rows", "lora", "dora-cols", "bora")


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


def run(cmd: list[str], tree: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one child process, from its own wait4 rusage.

    It runs in `tree` with it on PYTHONPATH (`python -m` puts the working folder first on
    sys.path, so the folder decides which sa3ckpt is imported).
    """
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr}")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return seconds, usage.ru_maxrss * scale


SETTLE_SECONDS = 2.0


def settle(*paths: Path) -> None:
    """Delete outputs of the previous measurement, flush everything and wait a moment,
    untimed: freeing 2.9 GB (discards on an SSD mount) must not land in the next timing."""
    for path in paths:
        path.unlink(missing_ok=True)
    subprocess.run(["sync"], check=True)
    time.sleep(SETTLE_SECONDS)


def merge_cmd(base: Path, adapter: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "sa3ckpt", "merge", str(base), f"{adapter}:1.0", "-o", str(out)]


def warm_up(work: Path) -> float:
    """One tiny merge per type: numba compiles (or loads from its cache) the tiled kernel, so
    the timed runs are what every run after the first one on a machine costs."""
    start = time.perf_counter()
    base = DATA_DIR / "bases" / "tiny-small.official.safetensors"
    for kind in TYPES:
        adapter = DATA_DIR / "adapters" / "tiny-small" / f"{kind}.safetensors"
        out = work / f"warm-{kind}.safetensors"
        run(merge_cmd(base, adapter, out), REPO)
        out.unlink()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="working folder (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (median shown)")
    parser.add_argument("--compare", type=Path, help="another sa3ckpt checkout to time too")
    parser.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES)
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="sa3ckpt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        base = work / "medium-base.safetensors"
        if not base.exists():
            params = write_medium_base(base)
            print(f"generated base: {params / 1e9:.3f} B target params")
        adapters = {}
        for kind in args.types:
            adapters[kind] = work / f"medium-r16-{kind}.safetensors"
            if not adapters[kind].exists():
                a = synth_adapter(FAMILIES["medium"], kind, rank=16, alpha=16, seed=1)
                write_safetensors(adapters[kind], a.file_tensors(), a.metadata())
        print(f"JIT warm-up (tiny merges): {warm_up(work):.2f} s")
        copy, merged = work / "copy.safetensors", work / "merged.safetensors"
        subprocess.run(["cp", str(base), str(copy)], check=True)  # page cache warm, as for cp
        cp_times: list[float] = []
        types = list(args.types)
        merges: dict[str, list[tuple[float, int]]] = {k: [] for k in types}
        before: list[tuple[float, int]] = []
        for _ in range(args.repeat):
            settle(copy, merged)
            start = time.perf_counter()
            subprocess.run(["cp", str(base), str(copy)], check=True)
            subprocess.run(["sync"], check=True)
            cp_times.append(time.perf_counter() - start)
            for kind in types:
                settle(copy, merged)
                merges[kind].append(run(merge_cmd(base, adapters[kind], merged), REPO))
            if args.compare:
                settle(merged)
                cmd = merge_cmd(base, adapters[types[0]], merged)
                before.append(run(cmd, args.compare.resolve()))
        settle(copy, merged)
        cp_s = statistics.median(cp_times)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"base: {base.stat().st_size / 1e9:.2f} GB fp16, rank-16 adapters on 229 targets")
        print(f"{args.repeat} rounds, medians; load average at the end {load:.2f}")
        print(f"cp BASE OUT && sync:   {cp_s:6.2f} s")
        print(f"{'merge (runtime)':22s} {'time':>7s} {'/ cp+sync':>10s} {'peak RSS':>10s}")
        rows = [(kind, merges[kind]) for kind in types]
        if before:
            rows.append((f"{types[0]} ({args.compare.name})", before))
        for label, results in rows:
            seconds = statistics.median(s for s, _ in results)
            rss = max(r for _, r in results)
            print(f"{label:22s} {seconds:6.2f} s {seconds / cp_s:9.2f}x {rss / 2**20:7.0f} MB")
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
