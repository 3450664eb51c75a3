"""MLX on Linux as installed vs MLX's bundled reference BLAS, side by side, each row a ratio.

Every case runs twice in fresh processes on this machine, one after the other: with
`SA3CKPT_BLAS=off` (the `mlx[cpu]` wheel's Netlib reference BLAS, what MLX did before) and
with the environment as it is (the BLAS sa3ckpt puts in front of mlx: MKL from the `mkl`
wheel on x86-64). Cases:

- verify: `sa3ckpt verify` of a real-size small merge (0.92 GB fp16 base, dora-rows r16 on
  all 193 targets; the files of benchmarks/verify_real_size.py, generated once into --dir),
  wall time of the process. Goal: <= 12 s.
- same-s, same-l: SAME encoder throughput, fp32, batch 1, random weights (as
  benchmarks/same_encode.py), seconds of audio per second after a warm-up. Goal: >= 6x.
- train: one MLX training step at real size small (fp32 DiT, dora-rows r16 on all targets,
  AdamW, batch 1, 10 s of latents = 108 frames): the time of one step (forward, backward,
  optimizer update; the optimizer state is built in it, a few zero arrays). Goal: >= 4x.

The outputs of the two runs are compared as well (verify's difference, the encoders'
latents, the training loss). The machine may be shared: it is named with its load average
at the start, and each row gives the load average while it ran and the ratio of CPU seconds
(all threads) of the timed part, which other processes' load disturbs much less than wall
time. With no --case, every case runs in this one invocation and the closing table (Markdown,
as the documentation quotes it) has every row.

    python benchmarks/mlx_linux.py [--dir DIR] [--case verify same-s same-l train]
        [--same-s-seconds 2] [--same-l-seconds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sa3ckpt  # noqa: E402, F401  (first: mlx must load after sa3ckpt's BLAS set-up)

# isort: split
import numpy as np  # noqa: E402

CASES = ("verify", "same-s", "same-l", "train")
MODES: tuple[tuple[str, dict[str, str]], ...] = (
    ("reference", {"SA3CKPT_BLAS": "off"}),
    ("as installed", {}),
)
TRAIN_FRAMES = 108  # 10 s at 44.1 kHz / 4096 samples per latent
PROMPT_TOKENS = 32


def files(work: Path) -> tuple[Path, Path, Path]:
    """(base, adapter, merged): made by verify_real_size.py's generator and `sa3ckpt merge`."""
    base = work / "small.official-full.safetensors"
    adapter = work / "small-r16-dora-rows.safetensors"
    merged = work / "merged-fp16.safetensors"
    if not merged.exists():
        script = ROOT / "benchmarks" / "verify_real_size.py"
        subprocess.run([sys.executable, str(script), "--dir", str(work)], check=True)
    return base, adapter, merged


def child_same(codec: str, seconds: float, out: Path) -> dict[str, object]:
    import mlx.core as mx

    from benchmarks.same_encode import audio_clip, random_encoder
    from sa3ckpt.models.same import CODECS

    encoder = random_encoder(CODECS[codec], mx.float32)
    mx.eval(encoder(audio_clip(0.5, seed=3)))  # warm-up on a short clip
    audio = audio_clip(seconds)
    start, cpu = time.perf_counter(), time.process_time()
    latents = encoder(audio)
    mx.eval(latents)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    np.save(out, np.array(latents))
    return {"value": seconds / wall, "wall_s": wall, "cpu_s": cpu}


def child_train(base: Path, out: Path) -> dict[str, object]:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from sa3ckpt.adapters import inject
    from sa3ckpt.models import load_dit, training_local_cond
    from sa3ckpt.train import rectified_flow_loss, rectified_flow_pair

    loaded = load_dit(base)
    dit, cond = loaded.dit, loaded.conditioner
    assert cond is not None
    inject(dit, adapter_type="dora-rows", rank=16, alpha=16)
    top = dit.topology
    rng = np.random.default_rng(0)
    x0 = mx.array(rng.standard_normal((1, top.io_channels, TRAIN_FRAMES)).astype(np.float32))
    mask = mx.ones((1, TRAIN_FRAMES), dtype=mx.bool_)
    prompt = mx.array(rng.standard_normal((1, PROMPT_TOKENS, top.cond_token_dim)), mx.float32)
    cross, glob = cond(prompt, mx.array([10.0]), mx.ones((1, PROMPT_TOKENS), dtype=mx.bool_))
    local = training_local_cond(1, TRAIN_FRAMES, top.io_channels)

    def loss_fn(model: nn.Module, x_t: mx.array, t: mx.array, v: mx.array) -> mx.array:
        return rectified_flow_loss(model(x_t, t, cross, glob, local), v, mask)

    opt = optim.AdamW(learning_rate=1e-4)
    step = nn.value_and_grad(dit, loss_fn)
    t = mx.array([0.4])
    x_t, v, _ = rectified_flow_pair(x0, t, mx.random.key(0))
    mx.eval(x_t, v, cross, glob, dit.parameters())
    start, cpu = time.perf_counter(), time.process_time()
    loss, grads = step(dit, x_t, t, v)
    opt.update(dit, grads)
    mx.eval(dit.parameters(), opt.state, loss)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    np.save(out, np.array([loss.item()]))
    return {"value": wall, "wall_s": wall, "cpu_s": cpu}


def child(case: str, args: argparse.Namespace) -> int:
    """One case in this process; prints one JSON line (the BLAS line included)."""
    from sa3ckpt.mlx_runtime import active

    out = Path(args.out)
    if case in ("same-s", "same-l"):
        seconds = args.same_s_seconds if case == "same-s" else args.same_l_seconds
        row = child_same(case, seconds, out)
    elif case == "train":
        row = child_train(files(args.dir)[0], out)
    else:
        raise SystemExit(f"no child case {case}")
    row["blas"] = active().line()
    print(json.dumps(row))
    return 0


def run_verify(work: Path, env: dict[str, str]) -> dict[str, object]:
    base, adapter, merged = files(work)
    cmd = [sys.executable, "-m", "sa3ckpt", "verify", str(base), str(adapter), str(merged)]
    start = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--json"], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    doc = json.loads(proc.stdout.read())
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time
    wall = time.perf_counter() - start
    return {
        "value": wall,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "exit": os.waitstatus_to_exitcode(status),
        "verdict": doc["verdict"],
        "difference": doc["difference"],
        "blas": doc.get("blas", {}).get("line", "?"),
    }


def run_child(case: str, args: argparse.Namespace, env: dict[str, str], out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--out", str(out), "--dir", str(args.dir)]
    cmd += ["--same-s-seconds", str(args.same_s_seconds)]
    cmd += ["--same-l-seconds", str(args.same_l_seconds)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"{case} failed (exit {result.returncode}):\n{result.stderr}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


Goal = tuple[str, Callable[[float, float], float], Callable[[float, float], bool]]
GOALS: dict[str, Goal] = {
    # (unit, ratio from (reference, installed), goal met from (ratio, installed))
    "verify": ("s", lambda r, i: r / i, lambda ratio, i: i <= 12.0),
    "same-s": ("audio s/s", lambda r, i: i / r, lambda ratio, i: ratio >= 6.0),
    "same-l": ("audio s/s", lambda r, i: i / r, lambda ratio, i: ratio >= 6.0),
    "train": ("s/step", lambda r, i: r / i, lambda ratio, i: ratio >= 4.0),
}


def unit_of(case: str) -> str:
    return GOALS[case][0]


GOAL_TEXT = {"verify": "<= 12 s", "same-s": ">= 6x", "same-l": ">= 6x", "train": ">= 4x"}


def compare(case: str, rows: list[dict], outs: list[Path]) -> str:
    """How far the installed run's output is from the reference run's."""
    if case == "verify":
        a, b = (float(str(r["difference"])) for r in rows)
        return f"verdicts {rows[0]['verdict']}/{rows[1]['verdict']}, differences {a:.3g}/{b:.3g}"
    ref, new = (np.load(p) for p in outs)
    rel = float(np.abs(new - ref).max() / max(float(np.abs(ref).max()), 1e-30))
    what = "loss" if case == "train" else "latents"
    return f"{what} max relative difference {rel:.2e}"


def machine() -> str:
    """The CPU, the cores this process may use, mlx's version and the BLAS as installed."""
    from importlib.metadata import version

    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith("model name")]
        cpu = lines[0].split(":", 1)[1].strip()
    except (OSError, IndexError):
        cpu = platform.processor() or platform.machine()

    from sa3ckpt.mlx_runtime import active
    from sa3ckpt.threads import cores

    return (
        f"{cpu}, {cores()} cores usable of {os.cpu_count()}; "
        f"{platform.system()} {platform.release()}; mlx {version('mlx')}; "
        f"as installed: {active().line()}"
    )


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (5 min {five:.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sa3ckpt-verify-bench"))
    parser.add_argument("--case", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--same-s-seconds", type=float, default=2.0)
    parser.add_argument("--same-l-seconds", type=float, default=1.0)
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args)
    args.dir.mkdir(parents=True, exist_ok=True)
    if "verify" in args.case or "train" in args.case:
        files(args.dir)
    print(f"machine: {machine()}")
    print(f"load average at the start: {load()}", flush=True)
    table = []
    for case in args.case:
        rows, outs, loads = [], [], []
        for name, extra in MODES:
            env = {**os.environ, **extra}
            if not extra:
                env.pop("SA3CKPT_BLAS", None)
            out = args.dir / f"bench-{case}-{name.replace(' ', '-')}.npy"
            row = run_verify(args.dir, env) if case == "verify" else run_child(case, args, env, out)
            rows.append(row)
            outs.append(out)
            loads.append(os.getloadavg()[0])
            print(
                f"  {case:7} {name:13} {float(str(row['value'])):9.3f} {unit_of(case)} "
                f"(wall {float(str(row['wall_s'])):.2f} s, CPU {float(str(row['cpu_s'])):.2f} s, "
                f"load {loads[-1]:.1f})  {row['blas']}",
                flush=True,
            )
        table.append(row_of(case, rows, outs, loads))
    print(f"load average at the end: {load()}")
    print()
    print(
        "| case | unit | reference BLAS | as installed | ratio (wall) | ratio (CPU) | load "
        "| goal | outputs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for line in table:
        print(line)
    return 0


def row_of(case: str, rows: list[dict], outs: list[Path], loads: list[float]) -> str:
    """One Markdown table row: both runs' value (wall and CPU seconds), the ratios, the load
    average after each run, the goal and the comparison of the outputs."""
    unit, ratio_of, met_of = GOALS[case]
    ref, new = (float(str(r["value"])) for r in rows)
    ratio = ratio_of(ref, new)
    cpu_ratio = float(str(rows[0]["cpu_s"])) / float(str(rows[1]["cpu_s"]))
    met = "met" if met_of(ratio, new) else "NOT met"
    cells = [
        f"{float(str(r['value'])):.4g} (wall {float(str(r['wall_s'])):.1f} s, "
        f"CPU {float(str(r['cpu_s'])):.1f} s)"
        for r in rows
    ]
    return (
        f"| {case} | {unit} | {cells[0]} | {cells[1]} | {ratio:.1f}× | {cpu_ratio:.1f}× "
        f"| {loads[0]:.1f} / {loads[1]:.1f} | {GOAL_TEXT[case]}: {met} "
        f"| {compare(case, rows, outs)} |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
