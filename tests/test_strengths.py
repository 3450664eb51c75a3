"""`ADAPTER[:STRENGTH]`: one parser; a suffix that is not a plain finite number is exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.errors import UsageError
from sa3ckpt.strengths import AdapterArg, StrengthError, parse_adapter_arg, parse_strength
from tests.helpers import BASE_OFFICIAL, run_cli

LORA = str(DATA_DIR / "adapters" / "tiny-small" / "lora.safetensors")

BAD_SUFFIXES = ["abc", "", "0x10", "1_0", "nan", "inf", "-inf", "1e999", "١", "0.5.1", "1e", "+"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.7", 0.7), ("-1.5", -1.5), ("+2", 2.0), (".5", 0.5), ("5.", 5.0), ("2e-1", 0.2)],
)
def test_plain_numbers_are_strengths(text: str, value: float) -> None:
    assert parse_strength(text) == value
    assert parse_adapter_arg(f"a.safetensors:{text}") == AdapterArg("a.safetensors", value)


@pytest.mark.parametrize("suffix", BAD_SUFFIXES)
def test_anything_else_after_the_last_colon_is_a_usage_error(suffix: str) -> None:
    with pytest.raises(StrengthError) as caught:
        parse_adapter_arg(f"a.safetensors:{suffix}")
    assert caught.value.exit_code == 2
    assert caught.value.text == suffix
    assert (repr(suffix) if suffix else "(empty)") in str(caught.value)


def test_two_strengths_and_no_path_are_usage_errors() -> None:
    with pytest.raises(StrengthError, match="two strengths"):
        parse_adapter_arg("a.safetensors:5:6")
    for text in (":", ":0.5"):
        with pytest.raises(UsageError, match="no path"):
            parse_adapter_arg(text)


def test_an_existing_path_wins_over_its_suffix(tmp_path: Path) -> None:
    odd = tmp_path / "take:abc"
    odd.write_bytes(b"")
    assert parse_adapter_arg(str(odd)) == AdapterArg(str(odd), 1.0)
    inner = tmp_path / "run:5"
    inner.write_bytes(b"")
    assert parse_adapter_arg(f"{inner}:0.5") == AdapterArg(str(inner), 0.5)


def test_a_suffix_with_a_path_separator_is_part_of_the_path() -> None:
    assert parse_adapter_arg("C:/x/a.safetensors") == AdapterArg("C:/x/a.safetensors", 1.0)
    assert parse_adapter_arg("C:\\x\\a.safetensors:0.5") == AdapterArg("C:\\x\\a.safetensors", 0.5)


@pytest.mark.parametrize("suffix", ["abc", "", "0x10", "5:6", "1_0"])
@pytest.mark.parametrize("command", ["merge", "combine"])
def test_cli_refuses_a_bad_strength_with_exit_2(tmp_path: Path, command: str, suffix: str) -> None:
    out = tmp_path / "o.safetensors"
    lead = [str(BASE_OFFICIAL)] if command == "merge" else []
    method = ["--method", "cat"] if command == "combine" else []
    result = run_cli(command, *lead, f"{LORA}:{suffix}", "-o", str(out), *method)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sa3ckpt: error: "), result.stderr
    shown = suffix.split(":")[-1]
    assert "strength" in lines[0] and (repr(shown) if shown else "(empty)") in lines[0]
    assert not out.exists()
