"""How exact extract's randomised SVD is on real-size targets, and what it saves in time.

`sa3ckpt extract` takes an exact LAPACK SVD of D = W_ft − W_base up to min(fan) 1024 and a
randomised one (sketch 2R, 4 power iterations: `ops.lowrank`) above it, i.e. on every
medium target with 1536 columns. This measures, on synthetic differences of medium target
shapes with a full-rank, slowly decaying spectrum (σ_i = i^-p, the hard case for a sketch:
a fine-tune's D has no clean rank cut-off), the retained energy Σ_{i≤R} s_i²/‖D‖² of both
and the relative gap (exact − randomised)/exact, with the time each took.

    python benchmarks/extract_svd.py [--quick] [--decay P] [--ranks 16 64 128]

``--quick`` measures one shape (to_qkv, 7680x1536) instead of three.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sa3ckpt.ops.library.lowrank import POWER_ITERATIONS, top_svd

SHAPES = {
    "medium to_qkv": (7680, 1536),
    "medium ff.ff.0.proj": (12288, 1536),
    "medium ff.ff.2": (1536, 6144),
}


def difference(shape: tuple[int, int], decay: float, seed: int = 0) -> np.ndarray:
    """A full-rank D with singular values i^-decay (random orthonormal singular vectors)."""
    rng = np.random.default_rng(seed)
    k = min(shape)
    u, _ = np.linalg.qr(rng.standard_normal((shape[0], k)))
    v, _ = np.linalg.qr(rng.standard_normal((shape[1], k)))
    s = np.arange(1, k + 1, dtype=np.float64) ** -decay
    return (u * s) @ v.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--decay", type=float, default=0.5)
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--oversample", type=int, help="extra sketch columns (default: R)")
    parser.add_argument("--iterations", type=int, default=POWER_ITERATIONS)
    args = parser.parse_args()
    shapes = dict(list(SHAPES.items())[:1]) if args.quick else SHAPES
    for name, shape in shapes.items():
        d = difference(shape, args.decay)
        total = float(np.sum(d * d))
        start = time.perf_counter()
        exact = np.linalg.svd(d, compute_uv=False)
        exact_s = time.perf_counter() - start
        print(f"{name} {shape}, σ_i = i^-{args.decay}: exact SVD {exact_s:.1f} s")
        for rank in args.ranks:
            start = time.perf_counter()
            found = top_svd(
                d, rank, exact_up_to=0, oversample=args.oversample, iterations=args.iterations
            )
            took = time.perf_counter() - start
            best = float(np.sum(exact[:rank] ** 2)) / total
            got = float(np.sum(found.s**2)) / total
            print(
                f"  rank {rank:4d}: randomised {took:5.2f} s, retained {got:.6f} vs exact "
                f"{best:.6f} (relative gap {(best - got) / best:.2e})"
            )


if __name__ == "__main__":
    main()
