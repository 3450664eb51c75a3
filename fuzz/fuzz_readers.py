"""Mutation fuzzer for every sa3ckpt reader: hostile input must give the typed error or a
valid result, never another exception, never a read outside the file, never unbounded memory.

    python -m fuzz.fuzz_readers --seconds 60          # the bounded CI pass
    python -m fuzz.fuzz_readers --seconds 3600 --seed 7   # a longer run

Each target starts from valid seed files (the fixtures) and applies random mutations: byte
flips, insertions, deletions, truncations, splices of two seeds, JSON-aware edits of
safetensors headers and metadata, and interesting integers in length fields. Inputs that
raise anything but `Sa3ckptError` (or a documented ValueError of a pure parser) are saved to
fuzz/crashes/ with the traceback, and the run fails. Memory is capped with RLIMIT_AS so an
unbounded allocation shows up as a crash instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sa3ckpt.adapters.config import ConfigError, LoraConfig  # noqa: E402
from sa3ckpt.adapters.formats import load_adapter  # noqa: E402
from sa3ckpt.adapters.xs_bases import load_bases  # noqa: E402
from sa3ckpt.errors import Sa3ckptError  # noqa: E402
from sa3ckpt.io.formats import identify  # noqa: E402
from sa3ckpt.io.legacy_pickle import looks_like_pickle  # noqa: E402
from sa3ckpt.io.safetensors import open_safetensors  # noqa: E402
from sa3ckpt.io.sniff import sniff_container  # noqa: E402
from sa3ckpt.ops.inspect.checkpoint_kind import identify_kind  # noqa: E402
from sa3ckpt.ops.inspect.report import inspect_file, inspect_path  # noqa: E402
from sa3ckpt.ops.validate import validate_path  # noqa: E402

FIXTURES = ROOT / "fixtures" / "data"
CRASHES = Path(__file__).resolve().parent / "crashes"
MEMORY_LIMIT = 4 << 30  # bytes of address space for the whole fuzz process
INTERESTING = [0, 1, 7, 8, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**64 - 1]


# --- mutations ---------------------------------------------------------------------------------


def _flip(data: bytearray, rng: random.Random) -> None:
    if data:
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)


def _byte(data: bytearray, rng: random.Random) -> None:
    if data:
        data[rng.randrange(len(data))] = rng.randrange(256)


def _insert(data: bytearray, rng: random.Random) -> None:
    i = rng.randrange(len(data) + 1)
    data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))


def _delete(data: bytearray, rng: random.Random) -> None:
    if data:
        i = rng.randrange(len(data))
        del data[i : i + rng.randrange(1, 32)]


def _truncate(data: bytearray, rng: random.Random) -> None:
    del data[rng.randrange(len(data) + 1) :]


def _length_field(data: bytearray, rng: random.Random) -> None:
    """Overwrite an 8-byte little-endian integer (safetensors prefix, GGUF counts/offsets)."""
    if len(data) >= 8:
        i = 0 if rng.random() < 0.5 else rng.randrange(len(data) - 7)
        data[i : i + 8] = struct.pack("<Q", rng.choice(INTERESTING))


def _header_json(data: bytearray, rng: random.Random) -> None:
    """Edit one field of a safetensors header and re-encode it with a consistent prefix."""
    if len(data) < 8:
        return
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except (ValueError, UnicodeDecodeError):
        return
    if not isinstance(header, dict) or not header:
        return
    key = rng.choice(list(header))
    entry = header[key]
    choices: list[Callable[[], object]] = [
        lambda: rng.choice(["F16", "F32", "BF16", "I64", "F17", "", None, 3]),
        lambda: [rng.choice(INTERESTING) for _ in range(rng.randrange(0, 4))],
        lambda: [rng.choice(INTERESTING), rng.choice(INTERESTING)],
        lambda: {"nested": {"deep": [1, 2, 3]}},
        lambda: "x" * rng.randrange(0, 64),
    ]
    if isinstance(entry, dict) and entry:
        entry[rng.choice(list(entry))] = rng.choice(choices)()
    else:
        header[key] = rng.choice(choices)()
    if rng.random() < 0.3:  # also rename a key (adapter names matter to the dialect parser)
        header[
            key + rng.choice([".x", ".lora_A", ".parametrizations.weight.9.M_xs", "\x1b[2J"])
        ] = header.pop(key)
    raw = json.dumps(header).encode()
    data[:] = struct.pack("<Q", len(raw)) + raw + data[8 + n :]


MUTATIONS = (_flip, _byte, _insert, _delete, _truncate, _length_field, _header_json)


def mutate(seed: bytes, other: bytes, rng: random.Random) -> bytes:
    data = bytearray(seed)
    if rng.random() < 0.05 and other:  # splice two seeds
        cut = rng.randrange(len(data) + 1)
        data = data[:cut] + bytearray(other[rng.randrange(len(other) + 1) :])
    for _ in range(rng.randrange(1, 6)):
        rng.choice(MUTATIONS)(data, rng)
    return bytes(data)


# --- targets -------------------------------------------------------------------------------------


def _read_all(path: str) -> None:
    with open_safetensors(path) as f:
        for key in f:
            f.array(key).sum()


def _peft_dir(folder: Path, config: bytes, weights: bytes) -> str:
    (folder / "adapter_config.json").write_bytes(config)
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return str(folder)


@dataclass
class Target:
    """A reader under fuzz: seed files, how to write one input, what to call, what is allowed."""

    name: str
    seeds: list[Path]
    run: Callable[[str], object]
    allowed: tuple[type[BaseException], ...] = (Sa3ckptError,)
    suffix: str = ".safetensors"
    executions: int = 0
    crashes: list[str] = field(default_factory=list)


def _adapter_seeds() -> list[Path]:
    """Fixture adapters, plus the edge-corpus adapter whose header length starts with 0x80."""
    edge = sorted((FIXTURES / "edge").glob("*.safetensors"))
    return sorted((FIXTURES / "adapters").glob("*/*.safetensors"))[:12] + edge


def _sniff_seeds() -> list[Path]:
    """Files whose first bytes look alike: safetensors (one starting 0x80 0x02), raw pickles,
    damaged files starting with the pickle marker."""
    return sorted((FIXTURES / "edge").glob("*")) + sorted((FIXTURES / "malformed").glob("pickle*"))


def _sniff(path: str) -> None:
    """The sniffers never raise, and agree: a safetensors sniff is never a pickle."""
    container = sniff_container(path)
    if container == "safetensors" and looks_like_pickle(path):
        raise AssertionError("sniffed as safetensors and as a pickle")
    identify(path)
    identify_kind(path)


def _kinds(path: str) -> None:
    """A damaged file of any checkpoint kind: identify_kind never raises; inspect and
    validate fail only with the library's own errors."""
    identify_kind(path)
    validate_path(path)
    inspect_file(path)


def targets(tmp: Path) -> list[Target]:
    gguf = []
    try:
        import gguf as _  # noqa: F401

        from sa3ckpt.ops.convert.adapters import convert_adapter

        seed = tmp / "seed.gguf"
        convert_adapter(
            str(FIXTURES / "adapters/tiny-small/lora.safetensors"),
            str(seed),
            to="sa3cpp",
            drop_conditioner=True,
        )
        gguf = [
            Target("gguf", [seed], lambda p: load_adapter(p), suffix=".gguf"),
            # the header parser inspect and URLs use (io.gguf_header), not gguf-py's reader
            Target("gguf-header", [seed], lambda p: inspect_file(p), suffix=".gguf"),
        ]
    except ImportError:
        pass
    bases_seed = tmp / "bases.safetensors"
    _write_bases_seed(bases_seed)
    return [
        Target(
            "safetensors", _adapter_seeds() + sorted((FIXTURES / "malformed").glob("*")), _read_all
        ),
        Target("adapter-load", _adapter_seeds(), lambda p: load_adapter(p)),
        Target("inspect", _adapter_seeds(), lambda p: inspect_path(p, stats=True)),
        Target("validate", _adapter_seeds(), lambda p: validate_path(p, deep=True)),
        Target("bases", [bases_seed], load_bases),
        Target("sniff", _sniff_seeds(), _sniff, allowed=()),  # identify never raises
        Target("kinds", sorted((FIXTURES / "kinds").glob("*")), _kinds),
        *gguf,
    ]


def _write_bases_seed(path: Path) -> None:
    from sa3ckpt.adapters.xs_bases import compute_bases, save_bases
    from sa3ckpt.synth import synth_base
    from sa3ckpt.targets import FAMILIES

    fam = FAMILIES["tiny-small"]
    base = synth_base(fam, seed=1)
    weights = {t.name: base.weight_2d(t).astype("float32") for t in fam.targets[:6]}
    save_bases(compute_bases(weights, 2, "fuzz seed"), path)


def _fuzz_config(rng: random.Random, budget: float) -> tuple[int, list[str]]:
    """lora_config JSON: random documents must give a LoraConfig or ConfigError."""
    values = [None, True, 0, -1, 4, 2.5, float("inf"), "lora", "", [], ["x"], [1], {"a": 1}]
    keys = ["rank", "alpha", "adapter_type", "include", "exclude", "step", "base_model"]
    count, crashes = 0, []
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        doc = {k: rng.choice(values) for k in rng.sample(keys, rng.randrange(len(keys) + 1))}
        text = json.dumps(doc) if rng.random() < 0.9 else json.dumps(doc)[: rng.randrange(20)]
        count += 1
        try:
            LoraConfig.from_json(text)
        except ConfigError:
            pass
        except Exception:
            crashes.append(f"{text!r}\n{traceback.format_exc()}")
    return count, crashes


def _fuzz_peft(rng: random.Random, budget: float, tmp: Path) -> tuple[int, list[str]]:
    seed_dir = FIXTURES / "adapters" / "tiny-small" / "peft-dora"
    config = (seed_dir / "adapter_config.json").read_bytes()
    weights = (seed_dir / "adapter_model.safetensors").read_bytes()
    count, crashes = 0, []
    deadline = time.monotonic() + budget
    folder = tmp / "peft"
    folder.mkdir(exist_ok=True)
    while time.monotonic() < deadline:
        c = mutate(config, b"", rng) if rng.random() < 0.5 else config
        w = mutate(weights, b"", rng) if rng.random() < 0.7 else weights
        path = _peft_dir(folder, c, w)
        count += 1
        for call in (load_adapter, lambda p: validate_path(p, deep=True), inspect_path):
            try:
                call(path)
            except Sa3ckptError:
                pass
            except Exception:
                crashes.append(f"peft config={c[:200]!r}\n{traceback.format_exc()}")
    return count, crashes


def run(seconds: float, seed: int, only: set[str] | None = None) -> int:
    """Fuzz every target (or those named in `only`) for about `seconds`; return 1 on a crash."""
    rng = random.Random(seed)
    CRASHES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sa3ckpt-fuzz-") as tmp_name:
        tmp = Path(tmp_name)
        all_targets = [t for t in targets(tmp) if only is None or t.name in only]
        share = seconds / (len(all_targets) + 2)
        total_crashes = 0
        for target in all_targets:
            seeds = [p.read_bytes() for p in target.seeds]
            deadline = time.monotonic() + share
            path = tmp / f"input{target.suffix}"
            while time.monotonic() < deadline:
                data = mutate(rng.choice(seeds), rng.choice(seeds), rng)
                path.write_bytes(data)
                target.executions += 1
                try:
                    target.run(str(path))
                except target.allowed:
                    pass
                except Exception:
                    digest = f"{target.name}-{target.executions}"
                    (CRASHES / f"{digest}{target.suffix}").write_bytes(data)
                    (CRASHES / f"{digest}.txt").write_text(traceback.format_exc())
                    target.crashes.append(digest)
            total_crashes += len(target.crashes)
            found = len(target.crashes)
            print(f"{target.name:<13} {target.executions:>8} executions  {found} crashes")
        count, crashes = _fuzz_config(rng, share)
        print(f"{'lora_config':<13} {count:>8} executions  {len(crashes)} crashes")
        peft_count, peft_crashes = _fuzz_peft(rng, share, tmp)
        print(f"{'peft-folder':<13} {peft_count:>8} executions  {len(peft_crashes)} crashes")
        for i, text in enumerate(crashes + peft_crashes):
            (CRASHES / f"text-{i}.txt").write_text(text)
        total_crashes += len(crashes) + len(peft_crashes)
        total = sum(t.executions for t in all_targets) + count + peft_count
        print(f"fuzz: {total} executions, {total_crashes} crashes (seed {seed}, {seconds:.0f} s)")
        return 1 if total_crashes else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # Cap the address space of this process only: an unbounded allocation becomes a crash.
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    return run(args.seconds, args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
