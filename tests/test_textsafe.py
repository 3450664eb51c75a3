"""Untrusted text is escaped before it reaches a terminal."""

from __future__ import annotations

from sa3ckpt.textsafe import escape_control


def test_escapes_terminal_controls() -> None:
    assert escape_control("a\x1b[31mred\x1b[0m") == "a\\x1b[31mred\\x1b[0m"
    assert escape_control("line\r\nnext\tx") == "line\\x0d\\x0anext\\x09x"
    assert escape_control("bidi\u202eevil") == "bidi\\u202eevil"
    assert escape_control("sep\u2028x") == "sep\\u2028x"
    assert escape_control("\x7f\x9b") == "\\x7f\\x9b"


def test_keeps_printable_text_and_cuts() -> None:
    assert escape_control("sa3-medium ünïcode 音楽") == "sa3-medium ünïcode 音楽"
    assert escape_control("x" * 10, max_len=5) == "xxxx…"
