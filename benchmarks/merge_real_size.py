"""Real-size merge: every merge a user runs, each against `cp BASE OUT && sync` of the same
base, measured side by side in one run.

Base: a complete medium official-full base in fp16 (2.9 GB, generated once into --dir), and
the same weights as an MLX .npz and as a diffusers folder; rank-16 adapters on all 229
targets. Rows (`--rows` picks some; the default prints the whole table from one run):

- one adapter of each of the 8 types at 1.0 (the -xs types with a --bases file in
  `sa3ckpt bases`' format, made once and untimed: `write_bases_file`);
- stack2: dora-rows 0.7 + lora 0.5, runtime semantics;
- stack3-{runtime,blend,delta}: dora-rows 0.7 + bora 0.5 + lora-xs 0.5 (with --bases);
- stack2-map: stack2 with a --strength-map and an --exclude;
- stack2-npz / stack2-folder: stack2 into the MLX npz base and the diffusers folder base.

Each row shows the merge wall time (a separate `sa3ckpt merge` process, as a user runs it:
start-up, reading, merging, writing and the fsync before the atomic rename all included),
its ratio to cp + sync of the row's own base file (or folder), and the merge process's peak
RSS (from wait4, so neither the generation nor cp counts). Every measurement is repeated
(--repeat) in interleaved rounds and the median is shown; before each one the previous
output is deleted and `sync` runs, so no timing pays for another's writeback.

    python benchmarks/merge_real_size.py [--dir DIR] [--keep] [--repeat N] [--rows ROW...]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures.generate import DATA_DIR  # noqa: E402
from sa3ckpt.adapters.types import ADAPTER_TYPES  # noqa: E402
from sa3ckpt.io.safetensors import SafetensorsStreamWriter, write_safetensors  # noqa: E402
from sa3ckpt.names import block_target, official_base_key  # noqa: E402
from sa3ckpt.synth import official_full_shapes, synth_adapter  # noqa: E402
from sa3ckpt.targets import FAMILIES  # noqa: E402
from sa3ckpt.targets.topology import rotary_inv_freq  # noqa: E402

TYPES = tuple(ADAPTER_TYPES)  # every adapter type, in the library's order
GOALS = {"single": 1.3, "stack2": 1.5, "stack3": 1.8, "stack2-map": 1.5, "container": 1.8}
RSS_GOAL = 2**30


@dataclass(frozen=True)
class Row:
    """One merge of the table: its adapters (kind, strength), options, base and goal."""

    name: str
    adapters: tuple[tuple[str, float], ...]
    goal: float
    base: str = "safetensors"  # "safetensors" | "npz" | "folder"
    options: tuple[str, ...] = ()


STACK2 = (("dora-rows", 0.7), ("lora", 0.5))
STACK3 = (("dora-rows", 0.7), ("bora", 0.5), ("lora-xs", 0.5))
ROWS = [Row(kind, ((kind, 1.0),), GOALS["single"]) for kind in TYPES] + [
    Row("stack2", STACK2, GOALS["stack2"]),
    *(
        Row(f"stack3-{sem}", STACK3, GOALS["stack3"], options=("--semantics", sem))
        for sem in ("runtime", "blend", "delta")
    ),
    Row(
        "stack2-map",
        STACK2,
        GOALS["stack2-map"],
        options=(
            "--strength-map",
            "layers.[0-11].=0.5,cross_attn=1.2",
            "--exclude",
            "2=conditioners.",
        ),
    ),
    Row("stack2-npz", STACK2, GOALS["container"], base="npz"),
    Row("stack2-folder", STACK2, GOALS["container"], base="folder"),
]


def write_full_base(path: Path, family: str = "medium") -> int:
    """Stream a complete official-full fp16 base of `family` (every tensor a runtime loads
    strictly, so it converts to a diffusers folder) one tensor at a time; return its target
    params. Targets uniform in ±sqrt(3 / fan_in), gammas 1, the real RoPE frequencies."""
    fam = FAMILIES[family]
    rng = np.random.default_rng(0)
    fans = {official_base_key(t.name): t.shape[1] for t in fam.targets}
    shapes = official_full_shapes(fam)
    specs = [(key, "F32" if key.endswith("inv_freq") else "F16", s) for key, s in shapes.items()]
    with SafetensorsStreamWriter(path, specs, {"format": "official-full"}) as writer:
        for key, code, shape in specs:
            leaf = key.rpartition(".")[2]
            if key in fans:
                scale = np.float32(np.sqrt(3.0 / fans[key]))
                values = (rng.random(shape, dtype=np.float32) * 2 - 1) * scale
            elif leaf == "gamma":
                values = np.ones(shape, np.float32)
            elif leaf == "inv_freq":
                values = rotary_inv_freq(fam.topology.rope_dim)
            else:
                values = (rng.random(shape, dtype=np.float32) * 2 - 1) * np.float32(0.05)
            writer.write(key, values.astype(np.float16 if code == "F16" else np.float32))
    return sum(int(np.prod(t.weight_shape)) for t in fam.targets)


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


def run(cmd: list[str], tree: Path) -> tuple[float, int, float]:
    """(wall seconds, peak RSS in bytes, CPU seconds user + system) of one child process,
    from its own wait4 rusage.

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
    return seconds, usage.ru_maxrss * scale, usage.ru_utime + usage.ru_stime


SETTLE_SECONDS = 2.0


def settle(*paths: Path) -> None:
    """Delete outputs of the previous measurement, flush everything and wait a moment,
    untimed: freeing 2.9 GB (discards on an SSD mount) must not land in the next timing."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    subprocess.run(["sync"], check=True)
    time.sleep(SETTLE_SECONDS)


def merge_cmd(base: Path, adapters: list[str], out: Path, options: tuple[str, ...]) -> list[str]:
    cmd = [sys.executable, "-m", "sa3ckpt", "merge", str(base), *adapters, "-o", str(out)]
    return [*cmd, *options]


def warm_up(work: Path) -> float:
    """One tiny merge per semantics: numba compiles (or loads from its cache) the tiled
    kernel, so the timed runs are what every run after the first one on a machine costs."""
    start = time.perf_counter()
    base = DATA_DIR / "bases" / "tiny-small.official.safetensors"
    adapters = [str(DATA_DIR / "adapters" / "tiny-small" / f"{k}.safetensors") for k in TYPES[:4]]
    for semantics in ("runtime", "blend", "delta"):
        out = work / f"warm-{semantics}.safetensors"
        run(merge_cmd(base, adapters, out, ("--semantics", semantics)), REPO)
        out.unlink()
    return time.perf_counter() - start


def prepare(work: Path, rows: list[Row]) -> dict[str, Path]:
    """Generate what the rows need (kept in `work` for the next run): the base, its npz and
    folder forms, the adapters and the bases file. Returns the base of each container."""
    base = work / "medium-base.safetensors"
    if not base.exists():
        params = write_full_base(base)
        print(f"generated base: {params / 1e9:.3f} B target params")
    bases = {"safetensors": base}
    wanted = {row.base for row in rows}
    if "npz" in wanted:
        bases["npz"] = work / "medium-base.mlx.npz"
        if not bases["npz"].exists():
            _sa3ckpt("convert", str(base), "--to", "mlx", "-o", str(bases["npz"]))
    if "folder" in wanted:
        bases["folder"] = work / "medium-base.diffusers"
        if not bases["folder"].exists():
            _sa3ckpt("convert", str(base), "--to", "diffusers", "-o", str(bases["folder"]))
    kinds = {kind for row in rows for kind, _ in row.adapters}
    for kind in sorted(kinds):
        path = work / f"medium-r16-{kind}.safetensors"
        if not path.exists():
            a = synth_adapter(FAMILIES["medium"], kind, rank=16, alpha=16, seed=1)
            write_safetensors(path, a.file_tensors(), a.metadata())
    if any(kind.endswith("-xs") for kind in kinds):
        path = work / "medium-bases-r16.safetensors"
        if not path.exists():
            start = time.perf_counter()
            write_bases_file(base, path, 16)
            print(f"bases file (randomised SVD, untimed): {time.perf_counter() - start:.0f} s")
    return bases


def write_bases_file(base_path: Path, path: Path, rank: int) -> None:
    """A bases file in `sa3ckpt bases`' format (official sign rule, σ_1..σ_{r+1}, each W0's
    digest) from a one-pass randomised rank-r SVD of each target in fp32, so the -xs rows
    need not wait for 229 exact SVDs (`sa3ckpt bases` took 25 minutes for this base on a
    loaded 2-core machine). A merge's cost does not depend on the bases' values."""
    from threadpoolctl import threadpool_limits

    from sa3ckpt import dtypes
    from sa3ckpt.adapters.xs_bases import XsBases, canonicalize_signs, save_bases
    from sa3ckpt.io.base_checkpoint import open_base

    rng = np.random.default_rng(0)
    out = XsBases(rank, f"{base_path.name} (randomised SVD, benchmark)")
    with open_base(base_path) as base, threadpool_limits(1):
        for target, key in base.weight_keys().items():
            stored = base.read(key)
            w2d = np.ascontiguousarray(base.layout_of(stored.shape, key).to_canonical(stored))
            w = dtypes.to_float32(w2d)
            sketch = rng.standard_normal((w.shape[1], rank + 9), dtype=np.float32)
            q, _ = np.linalg.qr(w @ sketch)
            ub, sv, vt = np.linalg.svd(q.T @ w, full_matrices=False)
            u, vt = canonicalize_signs((q @ ub)[:, :rank], vt[:rank])
            out.bases[target] = (np.ascontiguousarray(u), np.ascontiguousarray(vt.T))
            out.singular_values[target] = np.asarray(sv[: rank + 1], np.float32)
            out.record_w0(target, w2d)
    save_bases(out, path)


def _sa3ckpt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "sa3ckpt", *args], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def row_cmd(row: Row, work: Path, bases: dict[str, Path], out: Path) -> list[str]:
    adapters = [f"{work / f'medium-r16-{kind}.safetensors'}:{s}" for kind, s in row.adapters]
    options = row.options
    if any(kind.endswith("-xs") for kind, _ in row.adapters):
        options = (*options, "--bases", str(work / "medium-bases-r16.safetensors"))
    return merge_cmd(bases[row.base], adapters, out, options)


def output_of(merged: Path, row: Row) -> Path:
    """Where a row's merge writes: the output named for its base's container."""
    suffix = {"safetensors": ".safetensors", "npz": ".npz", "folder": ""}[row.base]
    return merged.with_suffix(suffix) if suffix else merged


def copy_cmd(base: Path, out: Path) -> list[str]:
    return ["cp", "-r", str(base), str(out)] if base.is_dir() else ["cp", str(base), str(out)]


def machine() -> str:
    """One line about the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="working folder (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (median shown)")
    parser.add_argument(
        "--rows", nargs="+", choices=[r.name for r in ROWS], help="only these rows (default all)"
    )
    args = parser.parse_args()
    rows = [r for r in ROWS if args.rows is None or r.name in args.rows]
    work = args.dir or Path(tempfile.mkdtemp(prefix="sa3ckpt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bases = prepare(work, rows)
        print(f"JIT warm-up (tiny merges): {warm_up(work):.2f} s")
        copy, merged = work / "copy.out", work / "merged.out"
        containers = sorted({row.base for row in rows})
        load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        # An untimed round first: the page cache holds every input, and the memory the
        # outputs' page cache takes has been used once (on a VM its first use costs more).
        for name in containers:
            subprocess.run(copy_cmd(bases[name], copy), check=True)
            settle(copy)
        for row in {row.base: row for row in reversed(rows)}.values():
            out = output_of(merged, row)
            run(row_cmd(row, work, bases, out), REPO)
            settle(out)
        cp_times: dict[str, list[float]] = {name: [] for name in containers}
        merges: dict[str, list[tuple[float, int, float]]] = {row.name: [] for row in rows}

        def floors() -> None:
            for name in containers:
                settle(copy, merged)
                start = time.perf_counter()
                subprocess.run(copy_cmd(bases[name], copy), check=True)
                subprocess.run(["sync"], check=True)
                cp_times[name].append(time.perf_counter() - start)
                print(
                    f"  cp + sync {name}: {cp_times[name][-1]:.2f} s", file=sys.stderr, flush=True
                )

        for _ in range(args.repeat):
            floors()  # the floor before and after each round's merges: drift shows in both
            for row in rows:
                settle(copy, merged)
                out = output_of(merged, row)
                merges[row.name].append(run(row_cmd(row, work, bases, out), REPO))
                settle(out)
                seconds, _, cpu = merges[row.name][-1]
                print(f"  round {len(merges[row.name])}: {row.name} {seconds:.2f} s "
                      f"(CPU {cpu:.2f} s, load {os.getloadavg()[0]:.2f})", file=sys.stderr,
                      flush=True)  # fmt: skip
            floors()
        settle(copy, merged)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"machine: {machine()}")
        print(
            f"{args.repeat} rounds, medians; load average {load_start:.2f} at the start, "
            f"{load:.2f} at the end"
        )
        for name in containers:
            size = _size(bases[name])
            times = cp_times[name]
            print(f"cp BASE OUT && sync ({name}, {size / 1e9:.2f} GB): "
                  f"{statistics.median(times):6.2f} s (range {min(times):.2f}-{max(times):.2f} s, "
                  f"{len(times)} runs)")  # fmt: skip
        print("medium fp16 base, rank-16 adapters on 229 targets")
        print("| merge | wall | / cp+sync | goal | CPU (user+sys) | peak RSS |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            seconds = statistics.median(s for s, _, _ in merges[row.name])
            cpu = statistics.median(c for _, _, c in merges[row.name])
            rss = max(r for _, r, _ in merges[row.name])
            ratio = seconds / statistics.median(cp_times[row.base])
            mark = "" if ratio <= row.goal and rss <= RSS_GOAL else " (over goal)"
            print(f"| {row.name} | {seconds:.2f} s | {ratio:.2f}x{mark} | {row.goal:.1f}x | "
                  f"{cpu:.2f} s | {rss / 2**20:.0f} MB |")  # fmt: skip
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


if __name__ == "__main__":
    raise SystemExit(main())
