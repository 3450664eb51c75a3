"""The merge progress bar as a user sees it: stderr on a pseudo-terminal, or on a plain pipe.

The merge of the tiny fixture takes milliseconds, so the runs that need a bar are slowed by a
wrapper that sleeps in `ProgressCounter.advance` (the library's one progress hook) before
running the real CLI; an optional failure there stands for a disk error or Ctrl-C mid-merge.
The other commands' runs set the bar's delay to 0 in the wrapper instead of sleeping.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from fixtures.generate import DATA_DIR
from tests.helpers import BASE_OFFICIAL

ADAPTER = str(DATA_DIR / "adapters" / "tiny-small" / "dora-rows.safetensors")
TENSORS = 47  # in the tiny-small official base: one progress event each
SLOW = 1.6 / TENSORS  # seconds per tensor: the merge outlives the bar's 1 s delay

WRAPPER = """
import errno, os, sys, time
from sa3ckpt.progress import ProgressCounter
from sa3ckpt.cli import main

real, calls = ProgressCounter.advance, [0]
failures = {"": None, "disk": OSError(errno.ENOSPC, "No space left on device"),
            "interrupt": KeyboardInterrupt()}

def slow(self, amount, item=""):
    calls[0] += 1
    time.sleep(float(os.environ["SLOW"]))
    failure = failures[os.environ.get("FAIL", "")]
    if failure is not None and calls[0] == int(os.environ["FAIL_AT"]):
        raise failure
    real(self, amount, item)

ProgressCounter.advance = slow
if os.environ.get("DELAY"):  # draw sooner: the bar, not the threshold, is under test
    from sa3ckpt.cli.progress import ProgressBar
    ProgressBar.__init__.__kwdefaults__["delay"] = float(os.environ["DELAY"])
sys.exit(main(sys.argv[1:]))
"""


def _env(slow: float, fail: str = "", fail_at: int = 0, delay: str = "") -> dict[str, str]:
    env = {**os.environ, "SLOW": str(slow), "FAIL": fail, "FAIL_AT": str(fail_at)}
    env["DELAY"] = delay
    env["TERM"] = "xterm-256color"  # a terminal rich draws on (a CI's TERM may be dumb)
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "COLUMNS"):
        env.pop(name, None)
    return env


def _merge_args(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        WRAPPER,
        "merge",
        str(BASE_OFFICIAL),
        ADAPTER,
        "-o",
        str(out),
        *extra,
    ]


def _on_pty(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run with stderr on a 120-column pseudo-terminal, stdout on a pipe: (rc, stdout, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env
    )
    os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            seen += chunk
        stdout = proc.communicate(timeout=60)[0].decode()
    finally:
        os.close(master)
    # The terminal turns "\n" into "\r\n"; undo that so texts compare as written.
    return proc.returncode, stdout, seen.decode().replace("\r\n", "\n")


def _on_pipes(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


def test_a_slow_merge_draws_a_bar_that_ends_completed(tmp_path: Path) -> None:
    rc, stdout, stderr = _on_pty(_merge_args(tmp_path / "m.safetensors"), _env(SLOW))
    assert rc == 0, stderr
    assert stdout.startswith("40/40 adapter targets merged")
    assert "merging" in stderr and "kB/s" in stderr and "━" in stderr
    final = stderr.rsplit("\r", 1)[1]  # the last redraw of the bar's line
    assert "23.7/23.7 kB" in final and final.endswith("\n\x1b[?25h")
    assert "Traceback" not in stderr


def test_a_fast_merge_draws_nothing(tmp_path: Path) -> None:
    """A merge that ends before the bar's delay draws nothing. The tiny merge takes
    milliseconds, but on a loaded machine start-up plus merge can pass the default 1 s, so
    the delay is raised: what is under test is that no bar is drawn before it."""
    rc, stdout, stderr = _on_pty(_merge_args(tmp_path / "m.safetensors"), _env(0.0, delay="30"))
    assert rc == 0 and stdout.startswith("40/40 adapter targets merged")
    assert stderr == ""


def test_json_stays_clean_with_the_bar_on_stderr(tmp_path: Path) -> None:
    rc, stdout, stderr = _on_pty(_merge_args(tmp_path / "m.safetensors", "--json"), _env(SLOW))
    assert rc == 0, stderr
    assert json.loads(stdout)["merged"]  # stdout is exactly one JSON document
    assert "merging" in stderr


def test_quiet_draws_nothing(tmp_path: Path) -> None:
    rc, stdout, stderr = _on_pty(
        _merge_args(tmp_path / "m.safetensors", "--quiet", "--json"), _env(SLOW)
    )
    assert rc == 0 and json.loads(stdout)["merged"]
    assert stderr == ""


def test_stderr_not_a_terminal_gets_nothing(tmp_path: Path) -> None:
    slow = _on_pipes(_merge_args(tmp_path / "slow.safetensors"), _env(SLOW))
    fast = _on_pipes(_merge_args(tmp_path / "fast.safetensors"), _env(0.0))
    assert slow.returncode == 0 and slow.stderr == ""
    # Nothing but the normal output: the same as an unslowed run's (the output name aside).
    assert slow.stdout.replace("slow.safetensors", "fast.safetensors") == fast.stdout


@pytest.mark.parametrize(
    ("fail", "last_line", "code"),
    [
        ("disk", "sa3ckpt: error: cannot write ", 5),
        ("interrupt", "sa3ckpt: interrupted; nothing was written", 130),
    ],
)
def test_a_failure_erases_the_bar_before_the_one_error_line(
    tmp_path: Path, fail: str, last_line: str, code: int
) -> None:
    out = tmp_path / "m.safetensors"
    rc, stdout, stderr = _on_pty(_merge_args(out), _env(SLOW, fail, fail_at=TENSORS - 5))
    assert rc == code, stderr
    assert stdout == "" and not out.exists()
    assert "merging" in stderr and "Traceback" not in stderr
    # After the bar's last draw: back to its line, clear it, then the error alone on it.
    bar, erased = stderr.rsplit("\x1b[1A\x1b[2K", 1)
    assert "kB" in bar.rsplit("merging", 1)[1]  # the bar was still there just before
    assert erased.startswith(last_line) and erased.count("\n") == 1 and erased.endswith("\n")


def _other_command(name: str, tmp_path: Path) -> tuple[list[str], str]:
    """(argv, the completed bar) of bases, convert or verify."""
    full = DATA_DIR / "bases" / "tiny-small.official-full.safetensors"
    if name == "verify":
        merged = tmp_path / "merged.safetensors"
        subprocess.run(
            [sys.executable, "-m", "sa3ckpt", "merge", str(full), ADAPTER, "-o", str(merged)],
            check=True,
            capture_output=True,
        )
        return [str(full), ADAPTER, str(merged)], "verifying ━{40} 5/5 steps"
    out = str(tmp_path / "out.safetensors")
    if name == "bases":
        return [str(BASE_OFFICIAL), "-o", out, "--rank", "2"], "bases ━{40} 40/40 targets"
    return [str(BASE_OFFICIAL), "-o", out, "--to", "mlx"], "converting ━{40} 23.7/23.7 kB"


@pytest.mark.parametrize("quiet", [False, True])
@pytest.mark.parametrize("command", ["bases", "convert", "verify"])
def test_the_other_long_commands_draw_a_bar_unless_quiet(
    tmp_path: Path, command: str, quiet: bool
) -> None:
    args, completed = _other_command(command, tmp_path)
    argv = [sys.executable, "-c", WRAPPER, command, *args, *(["--quiet"] if quiet else [])]
    rc, stdout, stderr = _on_pty(argv, _env(0.0, delay="0"))  # no delay: a bar at once
    assert rc == 0, stderr
    assert stdout  # the ledger or report, as without a bar
    if quiet:
        assert stderr == ""
    else:
        final = re.sub("\x1b\\[[0-9;]*m", "", stderr.rsplit("\r", 1)[1])  # colours off
        assert re.match(f"\x1b\\[2K{completed} ", final), final
