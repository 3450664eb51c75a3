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


def test_seeds_hold_the_sniffing_edge_cases(tmp_path: Path) -> None:
    """The 0x80 cases of issue 13 are fuzz seeds: the adapter whose header length starts
    80 02 seeds the readers, and every edge/pickle-marker file seeds the sniffer."""
    by_name = {t.name: t for t in fuzz_readers.targets(tmp_path)}
    edge_adapter = FIXTURES / "edge" / "header_length_128_mod_256.safetensors"
    for name in ("adapter-load", "inspect", "validate", "safetensors"):
        assert edge_adapter in by_name[name].seeds, name
    sniff_seeds = {p.name for p in by_name["sniff"].seeds}
    assert {"header_length_128_mod_256.safetensors", "raw_pickle_protocol_2.ckpt"} <= sniff_seeds
    assert "pickle_marker_no_opcodes.safetensors" in sniff_seeds
    assert by_name["sniff"].allowed == ()  # identify and the sniffers never raise
