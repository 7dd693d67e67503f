"""Callers' free text prints as one line of plain characters, however it was written."""

from __future__ import annotations

from rollout_rules.text import one_line


def test_control_characters_and_line_breaks_are_escaped() -> None:
    forged = "ok\nrev 99   2026-01-01T00:00:00Z  admin  promoted\x1b[2K\r\u2028\u202e\tend"
    shown = one_line(forged)
    assert shown == ("ok\\nrev 99   2026-01-01T00:00:00Z  admin  promoted\\x1b[2K\\r\\u2028"
                     "\\u202e\\tend")
    assert shown.isprintable() and one_line("plain, café, 東京") == "plain, café, 東京"
