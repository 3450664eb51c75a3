"""Plain, escaped Rich text for anything that came out of a checkpoint file.

Metadata, key names and messages are written by whoever made the file. Textual would read
`[...]` in a string as markup and a terminal would obey escape sequences, so every such
string becomes a rich `Text` (never parsed as markup) after `escape_control`.
"""

from __future__ import annotations

from rich.text import Text

from sa3ckpt.textsafe import escape_control


def plain(value: object, style: str = "", max_len: int | None = None) -> Text:
    """`value` as literal text: control characters escaped, markup characters kept as-is."""
    return Text(escape_control(str(value), max_len=max_len), style=style, no_wrap=False)


def joined(parts: list[Text], separator: str = "\n") -> Text:
    """Several safe texts as one, without ever going through markup."""
    return Text(separator).join(parts)
