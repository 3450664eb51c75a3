"""The progress events the library sends and the CLI's bar that draws them (fake clock)."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from safetensors.numpy import save_file

from fixtures.generate import DATA_DIR
from sa3ckpt.cli.progress import ProgressBar, item_label
from sa3ckpt.ops.convert.bases import convert_base
from sa3ckpt.ops.library.bases import compute_bases_file
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import AdapterArg, merge_checkpoint
from sa3ckpt.ops.verify.verify import PHASES, verify_merge
from sa3ckpt.progress import ProgressCounter, ProgressEvent
from sa3ckpt.synth import official_full_tensors
from sa3ckpt.targets import FAMILIES
from tests.helpers import BASE_OFFICIAL

ADAPTER = str(DATA_DIR / "adapters" / "tiny-small" / "dora-rows.safetensors")
MB = 1_000_000


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, color_system=None), out


def _bar(clock: FakeClock) -> tuple[ProgressBar, io.StringIO]:
    console, out = _console()
    return ProgressBar("merging", console, clock=clock, live=False), out


def _event(done: int, total: int = 10 * MB, item: str = "") -> ProgressEvent:
    return ProgressEvent(done, total, "bytes", item)


def test_nothing_is_drawn_before_the_delay() -> None:
    clock = FakeClock()
    bar, out = _bar(clock)
    for done in range(0, 10 * MB, MB):
        clock.now += 0.09  # 10 events within 0.9 s
        bar(_event(done))
    assert not bar.visible and out.getvalue() == ""
    assert bar.last == _event(9 * MB)
    bar.close(ok=True)
    assert out.getvalue() == ""  # a fast run leaves no trace at all


def test_the_first_event_after_the_delay_draws_everything_done_so_far() -> None:
    clock = FakeClock()
    bar, out = _bar(clock)
    clock.now += 0.5
    bar(_event(3 * MB))
    clock.now += 0.6  # 1.1 s: past the delay
    bar(_event(4 * MB, item="model.transformer.layers.0.ff.weight"))
    assert bar.visible and bar.state() == (4 * MB, 10 * MB)
    text = out.getvalue()
    assert "merging" in text and "4.0/10.0 MB" in text and "layers.0.ff.weight" in text
    bar.close(ok=False)


def test_bytes_and_rate_follow_the_events() -> None:
    clock = FakeClock()
    bar, out = _bar(clock)
    clock.now += 1.5
    bar(_event(1 * MB))  # drawn: the rate needs two more samples
    bar(_event(2 * MB))
    clock.now += 1.0
    bar(_event(7 * MB))  # 5 MB in 1 s
    assert bar.state() == (7 * MB, 10 * MB)
    last = out.getvalue().rsplit("merging", 1)[1]
    assert "7.0/10.0 MB" in last and "5.0 MB/s" in last
    assert "0:00:01" in last  # 3 MB left at 5 MB/s
    bar.close(ok=True)


def test_success_leaves_the_bar_completed_on_its_own_line() -> None:
    clock = FakeClock()
    bar, out = _bar(clock)
    clock.now += 2.0
    bar(_event(9 * MB))  # the last event may lag the end (a final sync)
    bar.close(ok=True)
    assert bar.state() == (10 * MB, 10 * MB)
    final = out.getvalue().rsplit("merging", 1)[1]
    assert "10.0/10.0 MB" in final and out.getvalue().endswith("\n\x1b[?25h")
    bar(_event(1))  # events after close change nothing
    assert bar.state() == (10 * MB, 10 * MB)


def test_an_error_erases_the_bar() -> None:
    clock = FakeClock()
    bar, out = _bar(clock)
    clock.now += 2.0
    with pytest.raises(KeyboardInterrupt), bar:
        bar(_event(3 * MB))
        raise KeyboardInterrupt
    assert bar.closed and bar.state() == (3 * MB, 10 * MB)
    # The cursor goes back up over the bar and clears its line, for the error line to take.
    assert out.getvalue().endswith("\x1b[1A\x1b[2K")


def test_live_draws_when_the_delay_is_up_without_a_new_event() -> None:
    console, out = _console()
    with ProgressBar("verifying", console, delay=0.05) as bar:
        bar(ProgressEvent(1, 5, "steps", "MERGED: load and run"))  # one long step starts
        deadline = time.monotonic() + 10
        while not bar.visible and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bar.visible and bar.state() == (1, 5)
        assert "1/5 steps" in out.getvalue() and "MERGED: load and run" in out.getvalue()


def test_live_draws_nothing_before_the_first_event() -> None:
    console, out = _console()
    with ProgressBar("merging", console, delay=0.01) as bar:
        time.sleep(0.1)  # the delay is up, but there is nothing to show yet
        assert not bar.visible
    assert out.getvalue() == ""


def test_target_counts_are_shown_as_counts() -> None:
    clock = FakeClock()
    bar, out = _bar(clock)
    clock.now += 1.2
    bar(ProgressEvent(3, 12, "targets", "t.3"))
    assert "3/12 targets" in out.getvalue() and "B/s" not in out.getvalue()
    bar.close(ok=True)


def test_item_names_are_escaped_and_keep_their_end() -> None:
    assert item_label("a\x1b[2Jb") == "a\\x1b[2Jb"
    long = "model.transformer.layers.23.self_attn.to_qkv.weight"
    assert item_label(long, 20) == "…" + long[-19:] and len(item_label(long, 20)) == 20


def test_the_counter_adds_up_in_order_across_threads() -> None:
    events: list[ProgressEvent] = []
    counter = ProgressCounter(events.append, total=4 * 1000 * 3)

    def work() -> None:
        for _ in range(1000):
            counter.advance(3)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [e.done for e in events] == list(range(3, 12001, 3))
    assert counter.done == counter.total == events[-1].total


def _data_bytes(path: Path) -> int:
    """The tensor bytes of a safetensors file: all of it but the length word and header."""
    raw = path.read_bytes()
    (header,) = struct.unpack("<Q", raw[:8])
    return len(raw) - 8 - header


def _keys(path: Path) -> list[str]:
    raw = path.read_bytes()
    (header,) = struct.unpack("<Q", raw[:8])
    return [k for k in json.loads(raw[8 : 8 + header]) if k != "__metadata__"]


@pytest.mark.parametrize("dtype", [None, "fp32"])
def test_merge_reports_every_output_byte(tmp_path: Path, dtype: str | None) -> None:
    events: list[ProgressEvent] = []
    out = tmp_path / "m.safetensors"
    ledger = merge_checkpoint(
        str(BASE_OFFICIAL),
        [AdapterArg(ADAPTER, 1.0)],
        str(out),
        progress=events.append,
        options=MergeOptions(dtype=dtype),
    )
    assert len(events) == len(ledger.merged) + ledger.copied + ledger.cast
    dones = [e.done for e in events]
    assert dones == sorted(set(dones)) and all(e.unit == "bytes" for e in events)
    assert events[-1].done == events[-1].total == _data_bytes(out)
    assert sorted(e.item for e in events) == sorted(_keys(out))  # each tensor once, by name


def test_bases_reports_targets(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    ledger = compute_bases_file(
        str(BASE_OFFICIAL), str(tmp_path / "b.safetensors"), rank=2, progress=events.append
    )
    assert [e.done for e in events] == list(range(1, len(ledger.targets) + 1))
    assert all(e.unit == "targets" and e.total == len(ledger.targets) for e in events)
    assert [e.item for e in events] == ledger.targets


def test_convert_base_reports_every_output_byte(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    out = tmp_path / "mlx.safetensors"
    ledger = convert_base(BASE_OFFICIAL, out, to="mlx", progress=events.append)
    assert len(events) == ledger.tensors and sorted(e.item for e in events) == sorted(_keys(out))
    assert events[-1].done == events[-1].total == _data_bytes(out)


@pytest.mark.parametrize("base_conditioner", [True, False])
def test_verify_reports_its_phases(tmp_path: Path, base_conditioner: bool) -> None:
    """Five phases; six when MERGED has to run again without its conditioner (BASE has none)."""
    tensors = official_full_tensors(FAMILIES["tiny-small"], seed=0, dtype="F16")
    save_file(tensors, str(tmp_path / "full.safetensors"))
    dit_only = {k: v for k, v in tensors.items() if not k.startswith("conditioner.")}
    save_file(dit_only, str(tmp_path / "dit.safetensors"))
    merged = tmp_path / "merged.safetensors"
    merge_checkpoint(str(tmp_path / "full.safetensors"), [AdapterArg(ADAPTER, 1.0)], str(merged))
    base = tmp_path / ("full.safetensors" if base_conditioner else "dit.safetensors")
    events: list[ProgressEvent] = []
    verify_merge(str(base), [AdapterArg(ADAPTER, 1.0)], str(merged), progress=events.append)
    phases = 5 if base_conditioner else 6
    assert [e.done for e in events] == list(range(phases + 1))
    assert [e.item for e in events] == [*PHASES[:phases], ""]
    assert events[-1].total == phases and all(e.unit == "steps" for e in events)
