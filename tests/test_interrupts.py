"""Interrupted or failing merges and conversions leave no output and no temp files."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters import tiled
from sa3ckpt.errors import OutputError
from sa3ckpt.io.safetensors import SafetensorsStreamWriter, write_safetensors
from sa3ckpt.names import official_base_key
from sa3ckpt.ops.merge.driver import AdapterArg, merge_checkpoint
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES
from tests.helpers import foreground_cli, foreground_python, run_cli

ADAPTER = str(DATA_DIR / "adapters" / "tiny-small" / "dora-rows.safetensors")
BASE = str(DATA_DIR / "bases" / "tiny-small.official.safetensors")


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory) -> tuple[Path, Path]:
    """A medium-shaped base slice (blocks 0-5) and a dora-rows adapter: a merge of a few seconds."""
    folder = tmp_path_factory.mktemp("slow")
    fam = FAMILIES["medium"]
    targets = [t for t in fam.targets if t.block is not None and t.block < 6]
    rng = np.random.default_rng(0)
    base = folder / "base.safetensors"
    specs = [(official_base_key(t.name), "F16", t.weight_shape) for t in targets]
    with SafetensorsStreamWriter(base, specs, {}) as writer:
        for key, _, shape in specs:
            writer.write(key, (rng.random(shape, dtype=np.float32) - 0.5).astype(np.float16))
    adapter = synth_adapter(fam, "dora-rows", rank=16, include=["layers.[0-5]."])
    path = folder / "adapter.safetensors"
    write_safetensors(path, adapter.file_tensors(), adapter.metadata())
    return base, path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_merge_leaves_nothing(tmp_path: Path, slow_job, sig) -> None:
    base, adapter = slow_job
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(
        foreground_cli("merge", str(base), str(adapter), "-o", str(out_dir / "m.safetensors")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(out_dir.iterdir()) and time.monotonic() < deadline:  # the temp file appears
        time.sleep(0.02)
    assert any(out_dir.iterdir()), "merge never started writing"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert list(out_dir.iterdir()) == []


# A child running `sa3ckpt convert --to sa3cpp` whose gguf write step stalls inside numpy's
# `tofile`, at the exact place where numpy swallowed an interrupt: tofile first asks whether
# the file is an os.PathLike, the ABC check reads the file's `__class__` (Python code here), and
# an exception there came out of tofile as a TypeError (exit 1, "internal error"). The child
# says "inside" once there and waits for the parent's SENT file, which the parent creates only
# after sending its signal (so the signal is pending before the stall can end).
GGUF_STALL_CHILD = r"""
import io, os, sys, time
import gguf
from sa3ckpt.cli import main

adapter, out, sent = sys.argv[1:4]
original = gguf.GGUFWriter.write_tensors_to_file


class Stalling(io.BufferedWriter):
    @property
    def __class__(self):
        if not os.path.exists(sent):
            print("inside", flush=True)
            deadline = time.monotonic() + 60
            while not os.path.exists(sent) and time.monotonic() < deadline:
                time.sleep(0.005)
        return type(self)


def stalled(self, **kwargs):
    self.fout = [Stalling(f.detach()) for f in self.fout]  # next isinstance: numpy's tofile
    return original(self, **kwargs)


gguf.GGUFWriter.write_tensors_to_file = stalled
sys.exit(main(["convert", adapter, "-o", out, "--to", "sa3cpp", "--drop-conditioner"]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_inside_the_gguf_write_exits_130(tmp_path: Path, sig) -> None:
    """Was: SIGTERM inside the gguf package's write step exited 1 ("internal error: TypeError")
    because numpy's tofile turned the KeyboardInterrupt into a TypeError."""
    pytest.importorskip("gguf")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    sent = tmp_path / "sent"
    lora = ADAPTER.replace("dora-rows", "lora")
    proc = subprocess.Popen(
        foreground_python(GGUF_STALL_CHILD, lora, str(out_dir / "a.gguf"), str(sent)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    watchdog = threading.Timer(120, proc.kill)  # a hung child fails the test, never the run
    watchdog.start()
    try:
        line = proc.stdout.readline()
        assert line == "inside\n", proc.stderr.read()
        proc.send_signal(sig)
        sent.write_bytes(b"")
        _, stderr = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip() == "sa3ckpt: interrupted; nothing was written"
    assert list(out_dir.iterdir()) == []


# A child that writes small outputs through every atomic writer in a loop, with the CLI's
# SIGTERM handler. After each interrupt it reports the temp files left that the registry does
# not know about (so a leak shows up at the signal that caused it); the ones it knows about
# (an interrupt at the very entry of an `__exit__`, before any `try` can run) are removed at
# exit by TEMPS.remove_all, which the last assertion checks.
STORM_CHILD = r"""
import os, signal, sys
import numpy as np
from sa3ckpt.cli import _terminate
from sa3ckpt.io import atomic
from sa3ckpt.io.atomic import StagedOutput, atomic_output
from sa3ckpt.io.base_checkpoint import NpzStreamWriter
from sa3ckpt.io.npz_writer import NpzPositionalWriter
from sa3ckpt.io.safetensors import write_safetensors

folder, rounds = sys.argv[1], int(sys.argv[2])
os.fsync = lambda fd: None  # durability is not under test: without it, more rounds per second
TEMPS = getattr(atomic, "TEMPS", ())  # the registry (absent before issue 13)
tensors = {"dit.proj_in.lora_A": np.zeros((2, 3), np.float32)}

def st(path):
    write_safetensors(path + ".safetensors", tensors)

def plain(path):
    with atomic_output(path + ".json") as f:
        f.write(b"{}")

def npz(path):
    with NpzStreamWriter(path + ".npz") as w:
        w.write("a", tensors["dit.proj_in.lora_A"])

def npz_positional(path):
    with NpzPositionalWriter(path + ".p.npz", [("a", "F32", (2, 3))]) as w:
        w.write_at("a", 0, tensors["dit.proj_in.lora_A"])

def staged(path):
    with StagedOutput(path + ".staged") as out:
        write_safetensors(out.temp_path, tensors)

writers = [st, plain, npz, npz_positional, staged]
try:
    from sa3ckpt.io.gguf_adapter import _import_gguf, write_gguf_adapter
    _import_gguf()
except Exception:  # the gguf extra is optional
    pass
else:
    def gguf_file(path):
        write_gguf_adapter(
            path + ".gguf", tensors, adapter_type="lora", rank=2, alpha=2.0, n_targets=1
        )

    writers.append(gguf_file)
for index, writer in enumerate(writers):  # lazy imports done before any signal
    writer(os.path.join(folder, str(index)))
# A signal landing inside a finalizer (e.g. ZipFile.__del__ during garbage collection) is
# "ignored" by Python after the handler raised: count it as caught, so every signal still gets
# exactly one report instead of the parent waiting for one that never comes.
swallowed = []
def _unraisable(hook_args):
    if issubclass(hook_args.exc_type, KeyboardInterrupt):
        swallowed.append(1)
sys.unraisablehook = _unraisable
signal.signal(signal.SIGTERM, _terminate)
caught = i = 0
report = False
ready = False
while True:
    try:  # the parent signals again once it has read a report: that may land anywhere here
        if not ready:  # announced inside the try: the first signal may come right after it
            ready = True
            print("ready", flush=True)
        if report:  # after the except block: the interrupted writer is gone
            report = False
            left = [n for n in os.listdir(folder) if ".tmp-" in n]
            unknown = [n for n in left if os.path.join(folder, n) not in TEMPS]
            print(f"{len(unknown)} {' '.join(unknown)}", flush=True)
            if caught == rounds:
                break
        while True:
            if swallowed:
                swallowed.clear()
                raise KeyboardInterrupt  # the interrupt a finalizer swallowed
            writers[i % len(writers)](os.path.join(folder, str(i % len(writers))))
            i += 1
    except KeyboardInterrupt:
        caught += 1
        report = True
"""


def test_sigterm_at_any_moment_of_a_write_leaves_no_temp_file(tmp_path: Path) -> None:
    """Was: a SIGTERM between creating a temp file and the `try` that removes it (or inside
    os.fdopen, whose failure path then closed the descriptor twice) left it behind, about one
    run in three of the merge test under load.

    Hundreds of SIGTERMs at seeded random delays (0-2 ms, so they land in every phase:
    creating, writing, fsync, rename) into one process writing small files through every
    atomic writer (the GGUF one too, when the gguf extra is installed: an interrupt that
    numpy's `tofile` would have turned into a TypeError must end the child's write as a
    KeyboardInterrupt like any other); each interrupt must leave no temp file. About a second
    in all.
    """
    rounds = 200
    proc = subprocess.Popen(
        foreground_python(STORM_CHILD, str(tmp_path), str(rounds)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    watchdog = threading.Timer(60, proc.kill)  # a hung child fails the test, never the run
    watchdog.start()
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read() if proc.stderr else ""
        rng = random.Random(13)
        leaks = []
        for _ in range(rounds):
            time.sleep(rng.uniform(0, 0.002))
            proc.send_signal(signal.SIGTERM)
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "child died"
            if not line.startswith("0 "):
                leaks.append(line.strip())
        _, stderr = proc.communicate(timeout=30)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 0, stderr
    assert leaks == []
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_disk_full_mid_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fifth tensor write fails, through either entry point: `write` (in file order) or
    `write_at` (the merge's workers writing tiles where they belong)."""
    calls = {"n": 0}

    def failing_version(original):
        def failing(self, *args):
            calls["n"] += 1
            if calls["n"] == 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            original(self, *args)

        return failing

    for method in ("write", "write_at"):
        original = getattr(SafetensorsStreamWriter, method)
        monkeypatch.setattr(SafetensorsStreamWriter, method, failing_version(original))
    with pytest.raises(OutputError, match=r"m\.safetensors: No space left on device"):
        merge_checkpoint(BASE, [AdapterArg(ADAPTER, 1.0)], str(tmp_path / "m.safetensors"))
    assert list(tmp_path.iterdir()) == []


def test_exception_in_a_worker_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tiled, "merge_rows", broken)  # the one merge kernel
    with pytest.raises(RuntimeError, match="boom"):
        merge_checkpoint(BASE, [AdapterArg(ADAPTER, 1.0)], str(tmp_path / "m.safetensors"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("container", ["npz", "diffusers-folder"])
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, RuntimeError])
def test_interrupt_mid_positional_npz_or_folder_merge_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, container: str, exc_type: type
) -> None:
    """npz and folder outputs are written by the workers at their place too: an interrupt
    after some tiles were written leaves neither the archive's nor any shard's temp file."""
    from safetensors.numpy import save_file

    from sa3ckpt.ops.convert import convert_base
    from sa3ckpt.synth import official_full_tensors
    from sa3ckpt.targets.families import Family
    from sa3ckpt.targets.topology import Topology

    bases = tmp_path / "bases"
    bases.mkdir()
    adapter = ADAPTER
    if container == "npz":
        base = bases / "base.npz"
        convert_base(BASE, base, to="mlx")
    else:  # diffusers needs a width of a multiple of 64
        topology = Topology(
            embed_dim=64, depth=2, differential=False, io_channels=8, cond_token_dim=12,
            timestep_features=8, seconds_features=8,
        )  # fmt: skip
        family = Family("tiny-small-64", "diffusers-shaped", topology, (), test_only=True)
        save_file(official_full_tensors(family, seed=0), str(bases / "official.safetensors"))
        base = bases / "transformer"
        convert_base(bases / "official.safetensors", base, to="diffusers", max_shard_size=20_000)
        lora = synth_adapter(family, "lora", rank=4, alpha=4, seed=1)
        adapter = str(bases / "lora.safetensors")
        write_safetensors(adapter, lora.file_tensors(), lora.metadata())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real, calls = tiled.merge_rows, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise exc_type
        return real(*args, **kwargs)

    monkeypatch.setattr(tiled, "merge_rows", interrupted)
    with pytest.raises(exc_type):
        merge_checkpoint(str(base), [AdapterArg(adapter, 1.0)], str(out_dir / base.name))
    assert len(calls) >= 3 and list(out_dir.iterdir()) == []


def test_disk_full_is_one_line_exit_5(tmp_path: Path) -> None:
    # /dev/full accepts opens and fails every write with ENOSPC: a real full disk.
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    out = str(tmp_path / "m.safetensors")
    script = (
        "import sys, os\n"
        "from sa3ckpt.io import atomic\n"
        "def full(fd, *a, **k):\n"
        "    os.close(fd); return open('/dev/full', 'wb')\n"
        "atomic.os.fdopen = full\n"
        "from sa3ckpt.cli import main\n"
        f"sys.exit(main(['merge', {BASE!r}, {ADAPTER!r}, '-o', {out!r}]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 5, result.stderr  # DESIGN: the output cannot be written
    assert result.stderr.strip() == (
        f"sa3ckpt: error: cannot write {out}: No space left on device (nothing was written)"
    )
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force_everywhere(tmp_path: Path) -> None:
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"precious")
    for args in (
        ["merge", BASE, ADAPTER, "-o", str(out)],
        ["convert", ADAPTER, "-o", str(out), "--to", "sa3"],
        ["combine", ADAPTER.replace("dora-rows", "lora"), "-o", str(out), "--method", "cat"],
    ):
        result = run_cli(*args)
        assert result.returncode == 2 and "--force" in result.stderr, args
    assert out.read_bytes() == b"precious"
    for args in (
        ["merge", BASE, ADAPTER, "-o", BASE, "--force"],
        ["convert", ADAPTER, "-o", ADAPTER, "--to", "sa3", "--force"],
    ):
        result = run_cli(*args)
        assert result.returncode == 2 and "same file" in result.stderr, args


@pytest.mark.parametrize("to", ["sa3", "peft"])
def test_interrupted_convert_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, to: str
) -> None:
    from sa3ckpt.ops.convert import adapters as convert_mod

    original = convert_mod.WRITERS[to]

    def interrupted(ckpt, path, code):
        original(ckpt, path, code)  # the temp output exists now...
        raise KeyboardInterrupt  # ...and Ctrl-C arrives before verification

    monkeypatch.setitem(convert_mod.WRITERS, to, interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_mod.convert_adapter(ADAPTER, str(tmp_path / "out"), to=to)
    assert list(tmp_path.iterdir()) == []
