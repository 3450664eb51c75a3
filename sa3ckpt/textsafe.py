"""Make untrusted text (metadata, key names) safe to print on a terminal or in a log.

Adapter files come from strangers; a metadata value with an ANSI escape or a carriage
return could rewrite what the user sees. Every human-readable output goes through
`escape_control`; JSON output stays exact (json.dumps escapes control characters itself).
"""

from __future__ import annotations

import unicodedata

_SAFE_WHITESPACE = {" "}


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_control(text: str, *, max_len: int | None = None) -> str:
    """Replace control, format and separator characters (C*, Zl, Zp) with visible escapes."""
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in _SAFE_WHITESPACE or not (category.startswith("C") or category in ("Zl", "Zp")):
            out.append(ch)
        else:
            out.append(_escape_char(ch))
    result = "".join(out)
    if max_len is not None and len(result) > max_len:
        result = result[: max_len - 1] + "…"
    return result
