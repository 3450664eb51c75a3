"""The fuzz harness itself: a short pass finds no crash, and it does catch a planted one."""

from __future__ import annotations

import random
from pathlib import Path

from fuzz import fuzz_readers
from fuzz.fuzz_readers import FIXTURES, Target, mutate


def test_short_fuzz_pass_has_no_crashes() -> None:
    assert fuzz_readers.run(seconds=8, seed=123) == 0


def test_mutations_change_inputs_and_are_deterministic() -> None:
    seed = (FIXTURES / "adapters" / "tiny-small" / "lora.safetensors").read_bytes()
    a = [mutate(seed, seed, random.Random(5)) for _ in range(20)]
    b = [mutate(seed, seed, random.Random(5)) for _ in range(20)]
    assert a == b and any(m != seed for m in a)


def test_harness_reports_a_planted_crash(tmp_path: Path, monkeypatch) -> None:
    def buggy(path: str) -> None:
        if Path(path).stat().st_size % 2:
            raise KeyError("planted")

    planted = Target("planted", [FIXTURES / "adapters" / "tiny-small" / "lora.safetensors"], buggy)
    monkeypatch.setattr(fuzz_readers, "targets", lambda tmp: [planted])
    monkeypatch.setattr(fuzz_readers, "CRASHES", tmp_path)
    monkeypatch.setattr(fuzz_readers, "_fuzz_config", lambda rng, budget: (0, []))
    monkeypatch.setattr(fuzz_readers, "_fuzz_peft", lambda rng, budget, tmp: (0, []))
    assert fuzz_readers.run(seconds=1, seed=1) == 1
    assert planted.crashes and any(p.suffix == ".txt" for p in tmp_path.iterdir())
