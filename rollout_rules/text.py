"""Free text from callers (reasons, alert summaries, actors) is stored as given and shown on one
line: a newline or an escape sequence in it must not print as a forged audit line or move a
terminal's cursor."""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BREAKS = {"\u2028", "\u2029", "\x85"}


def one_line(text: str) -> str:
    """``text`` with every control character, line or paragraph separator written as its
    escape (``\\n``, ``\\x1b``, ``\\u2028``), so it prints as one line of plain characters."""
    if text.isprintable():
        return text
    return "".join(_escaped(c) if _unsafe(c) else c for c in text)


def _unsafe(c: str) -> bool:
    return c in _BREAKS or unicodedata.category(c) in ("Cc", "Cf", "Cs")


def _escaped(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
