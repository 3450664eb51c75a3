"""XS merge speed, side by side in one run, on a synthetic real-size base.

On one base (the synthetic generator of `merge_real_size`, fp16 official layout), times:

1. ``sa3ckpt merge`` of a rank-16 dora-rows adapter on every target (the reference cost);
2. ``sa3ckpt bases -o bases.safetensors --rank 16`` (one SVD per target, done once);
3. ``sa3ckpt merge`` of a rank-16 lora-xs adapter with ``--bases`` (target: <= 1.5x of 1);
4. the same lora-xs merge without a bases file (the SVDs rebuilt in the merge);
5. the official path's cost for 4: ``torch.linalg.svd`` (CPU, fp32, thin) of every W0 plus
   the official sign rule, in a separate process, torch at its default thread count. It
   also compares its bases with the file of step 2 (max |ΔU|, |ΔV|: fp32-rounding level).

Each step is a separate process, as a user runs it. The machine may be shared: compare the
ratios printed at the end (measured minutes apart in one run), not absolute seconds.

    python benchmarks/merge_xs.py [--family small|medium] [--quick] [--dir DIR] [--keep]

``--quick`` keeps the top-level targets and the first 2 blocks (a depth-2 model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.merge_real_size import write_base
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES

RANK = 16
QUICK_BLOCKS = 2

# The official rebuild (facts from the official LoRAParametrization: W0 upcast to fp32,
# torch.linalg.svd(full_matrices=False), then the largest-|entry| sign rule), run on each W0.
TORCH_PATH = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, torch
    from sa3ckpt.io.base_checkpoint import open_base
    from sa3ckpt.adapters.xs_bases import load_bases
    base_path, bases_path, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ours = load_bases(bases_path)
    worst_u = worst_v = 0.0
    seconds = 0.0
    with open_base(base_path) as base:
        for target, key in base.weight_keys().items():
            stored = base.read(key)
            w = base.layout_of(stored.shape, key).to_canonical(stored)
            if rank > min(w.shape):
                continue
            start = time.perf_counter()
            w0 = torch.from_numpy(np.ascontiguousarray(w)).float()
            u, s, vh = torch.linalg.svd(w0, full_matrices=False)
            pivot = u.abs().argmax(dim=0)
            signs = u[pivot, torch.arange(u.shape[1])].sign()
            signs[signs == 0] = 1
            u, vh = u * signs.unsqueeze(0), vh * signs.unsqueeze(1)
            u_r, v_r = u[:, :rank].contiguous(), vh[:rank].T.contiguous()
            seconds += time.perf_counter() - start
            pair = ours.get(target, rank)
            if pair is not None:
                worst_u = max(worst_u, float(np.abs(u_r.numpy() - pair[0]).max()))
                worst_v = max(worst_v, float(np.abs(v_r.numpy() - pair[1]).max()))
    print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads(),
                      "max_abs_dU": worst_u, "max_abs_dV": worst_v}))
    """
)


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def say(line: str) -> None:
    """Print a figure as soon as it is measured (a long run still shows what it has)."""
    print(line, flush=True)


def sa3ckpt(*args: str) -> list[str]:
    return [sys.executable, "-m", "sa3ckpt", *args]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["small", "medium"], default="medium")
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_BLOCKS} blocks only")
    parser.add_argument("--dir", type=Path, help="working folder (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="sa3ckpt-bench-xs-"))
    work.mkdir(parents=True, exist_ok=True)
    blocks = QUICK_BLOCKS if args.quick else None
    tag = f"{args.family}{'-quick' if args.quick else ''}"
    try:
        base = work / f"{tag}-base.safetensors"
        if not base.exists():
            params = write_base(base, args.family, blocks)
            print(f"generated base: {params / 1e9:.3f} B target params")
        fam = FAMILIES[args.family]
        include = None
        if blocks is not None:
            include = [t.name for t in fam.targets if t.block is None or t.block < blocks]
        adapters = {}
        for kind in ("dora-rows", "lora-xs"):
            path = work / f"{tag}-r{RANK}-{kind}.safetensors"
            if not path.exists():
                a = synth_adapter(fam, kind, rank=RANK, alpha=RANK, seed=1, include=include)
                write_safetensors(path, a.file_tensors(), a.metadata())
            adapters[kind] = path
        bases = work / f"{tag}-bases-r{RANK}.safetensors"
        out = work / "merged.safetensors"
        merge = ["-o", str(out), "--force"]
        size_gb = base.stat().st_size / 1e9
        n = sum(1 for t in fam.targets if blocks is None or t.block is None or t.block < blocks)
        print(
            f"{args.family} base{' (quick)' if args.quick else ''}: {size_gb:.2f} GB, {n} targets"
        )
        dora_s, _ = timed(sa3ckpt("merge", str(base), f"{adapters['dora-rows']}:1.0", *merge))
        say(f"merge dora-rows r{RANK}:               {dora_s:8.1f} s")
        bases_s, _ = timed(
            sa3ckpt("bases", str(base), "-o", str(bases), "--rank", str(RANK), "--force")
        )
        say(f"bases --rank {RANK} (once):              {bases_s:8.1f} s")
        xs = f"{adapters['lora-xs']}:1.0"
        xs_file_s, _ = timed(sa3ckpt("merge", str(base), xs, *merge, "--bases", str(bases)))
        say(f"merge lora-xs r{RANK} --bases FILE:      {xs_file_s:8.1f} s")
        say(f"ratio xs --bases / dora-rows:          {xs_file_s / dora_s:8.2f}x  (goal <= 1.5x)")
        xs_svd_s, _ = timed(sa3ckpt("merge", str(base), xs, *merge))
        say(f"merge lora-xs r{RANK}, SVDs in merge:    {xs_svd_s:8.1f} s")
        _, report = timed([sys.executable, "-c", TORCH_PATH, str(base), str(bases), str(RANK)])
        official = json.loads(report)
        say(
            f"official path, torch.linalg.svd only:  {official['seconds']:8.1f} s "
            f"({official['threads']} torch threads)"
        )
        say(f"ratio xs without bases / official SVD: {xs_svd_s / official['seconds']:8.2f}x")
        say(
            f"bases vs torch: max |dU| {official['max_abs_dU']:.2e}, "
            f"max |dV| {official['max_abs_dV']:.2e}"
        )
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
