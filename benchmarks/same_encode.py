"""SAME encode throughput at real size: seconds of audio encoded per second of wall time.

SAME-S (D 768, 6 blocks, chunked) and SAME-L (D 1536, 12 blocks, band) with random weights
(the function's cost does not depend on the values), batch 1, one clip of `--seconds`
stereo audio, after one untimed warm-up; the median of `--repeat` runs. fp32 by default,
`--dtype float16` as well if asked (its output is compared with fp32's). The load average
before and after is printed: the machine is shared.

    python benchmarks/same_encode.py [--codec same-s same-l] [--seconds 10]
        [--dtype float32 float16] [--attention] [--chunked] [--json]

`--attention` times the SAME-L band attention alone, blockwise (`models.same.band`) against a
dense (T, T) masked SDPA, at real head counts. `--chunked` encodes a longer clip whole and
through `encode_latents(..., chunk_latents=128)` with the default overlap, and prints the
largest difference. On Linux MLX multiplies with the BLAS sa3ckpt sets up (MKL from the `mkl`
wheel on x86-64); `SA3CKPT_BLAS=off` measures MLX's bundled reference BLAS instead
(benchmarks/mlx_linux.py runs both side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sa3ckpt  # noqa: F401  (first: mlx must load after sa3ckpt's BLAS set-up)

# isort: split
import mlx.core as mx
import numpy as np

from benchmarks.timing import median_seconds
from sa3ckpt.mlx_runtime import active
from sa3ckpt.models.same import CODECS, SameConfig, SameEncoder
from sa3ckpt.models.same.band import band_attention, dense_band_mask
from sa3ckpt.train.encode_audio import SAMPLE_RATE, context_latents, encode_latents

DTYPES = {"float32": mx.float32, "float16": mx.float16}
DENSE_LIMIT = 2000  # tokens: 24 x 2000^2 fp32 scores are 0.4 GB


def random_encoder(config: SameConfig, dtype: mx.Dtype, seed: int = 0) -> SameEncoder:
    """Random weights of a plausible scale (MLX's init; the shared token and norms jittered)."""
    mx.random.seed(seed)
    encoder = SameEncoder(config)
    encoder.new_tokens = 0.5 * mx.random.normal(encoder.new_tokens.shape)
    for block in encoder.blocks:
        for norm in (block.pre_norm, block.ff_norm, block.attn.q_norm, block.attn.k_norm):
            norm.gamma = 1.0 + 0.1 * mx.random.normal(norm.gamma.shape)
            norm.beta = 0.05 * mx.random.normal(norm.beta.shape)
    encoder.set_dtype(dtype)
    mx.eval(encoder.parameters())
    return encoder


def audio_clip(seconds: float, seed: int = 1) -> mx.array:
    rng = np.random.default_rng(seed)
    samples = int(seconds * SAMPLE_RATE)
    return mx.array((0.3 * rng.standard_normal((1, samples, 2))).astype(np.float32))


def throughput(codec: str, seconds: float, dtype: str, repeat: int) -> dict[str, object]:
    encoder = random_encoder(CODECS[codec], DTYPES[dtype])
    audio = audio_clip(seconds)
    mx.eval(encoder(audio))  # warm-up
    wall = median_seconds(lambda: mx.eval(encoder(audio)), repeat)
    row: dict[str, object] = {
        "codec": codec,
        "dtype": dtype,
        "seconds": seconds,
        "wall_s": round(wall, 3),
        "audio_s_per_s": round(seconds / wall, 3),
    }
    if dtype != "float32":
        ours = np.array(encoder(audio).astype(mx.float32))
        ref = random_encoder(CODECS[codec], mx.float32)
        exact = np.array(ref(audio))
        row["finite"] = bool(np.isfinite(ours).all())
        row["rel_vs_fp32"] = float(np.abs(ours - exact).max() / np.abs(exact).max())
    return row


def attention(seconds: float, repeat: int) -> list[dict[str, object]]:
    """SAME-L band attention (24 heads, 64 dims) blockwise vs dense-masked."""
    tokens = int(seconds * SAMPLE_RATE) // 4096 * 17
    q = mx.random.normal((1, 24, tokens, 64))
    rows = []
    runs = [("blockwise", lambda: band_attention(q, q, q, 17, 0.125))]
    if tokens <= DENSE_LIMIT:  # beyond, the (T, T) scores alone take gigabytes
        runs.append(
            (
                "dense mask",
                lambda: mx.fast.scaled_dot_product_attention(
                    q, q, q, scale=0.125, mask=dense_band_mask(tokens, 17)
                ),
            )
        )
    for name, fn in runs:
        mx.eval(fn())
        rows.append(
            {
                "attention": name,
                "tokens": tokens,
                "wall_s": round(median_seconds(lambda f=fn: mx.eval(f()), repeat), 4),
            }
        )
    return rows


def chunked(codec: str, latents: int) -> dict[str, object]:
    encoder = random_encoder(CODECS[codec], mx.float32)
    audio = audio_clip(latents * 4096 / SAMPLE_RATE, seed=2)
    start = time.perf_counter()
    whole = np.array(encode_latents(encoder, audio).latents)
    mid = time.perf_counter()
    pieces = np.array(encode_latents(encoder, audio, chunk_latents=128).latents)
    end = time.perf_counter()
    diff = np.abs(pieces - whole)
    return {
        "codec": codec,
        "latents": latents,
        "overlap": 2 * context_latents(encoder),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(diff.max() / np.abs(whole).max()),
        "whole_s": round(mid - start, 1),
        "chunked_s": round(end - mid, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", nargs="+", default=sorted(CODECS), choices=sorted(CODECS))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=sorted(DTYPES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--attention", action="store_true")
    parser.add_argument("--chunked", action="store_true")
    parser.add_argument("--chunked-latents", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report: dict[str, object] = {
        "mlx": mx.__version__,
        "blas": active().line(),
        "cores": os.cpu_count(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    rows = [throughput(c, args.seconds, d, args.repeat) for c in args.codec for d in args.dtype]
    report["throughput"] = rows
    if args.attention:
        report["attention"] = [r for s in (10.0, 30.0) for r in attention(s, args.repeat)]
    if args.chunked:
        report["chunked"] = [chunked(c, args.chunked_latents) for c in args.codec]
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"MLX {report['mlx']}, {report['blas']}, {report['cores']} cores, "
        f"load before {report['load_before']}, after {report['load_after']}"
    )
    for row in rows:
        extra = f", vs fp32 {row['rel_vs_fp32']:.2e}" if "rel_vs_fp32" in row else ""
        print(
            f"{row['codec']} {row['dtype']}: {row['seconds']} s of audio in {row['wall_s']} s "
            f"= {row['audio_s_per_s']} s/s{extra}"
        )
    for row in report.get("attention", []):  # type: ignore[union-attr]
        print(f"band attention {row['attention']}, {row['tokens']} tokens: {row['wall_s']} s")
    for row in report.get("chunked", []):  # type: ignore[union-attr]
        print(
            f"{row['codec']} chunked (128, overlap {row['overlap']}) vs whole "
            f"({row['latents']} latents): max abs {row['max_abs_diff']:.3e}, "
            f"relative {row['max_rel_diff']:.3e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
