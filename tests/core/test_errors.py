"""core.errors.one_line: the one rule for messages that a server or a client passes on."""
from __future__ import annotations

import pytest

from pupick.core.errors import ERROR_CHARS, one_line


@pytest.mark.parametrize("message,expected", [
    ("a  b\n\tc ", "a b c"),
    ("x" * ERROR_CHARS, "x" * ERROR_CHARS),
    (ValueError("bad\nvalue"), "bad value"),
])
def test_short_messages_are_one_line_and_whole(message, expected):
    assert one_line(message) == expected


def test_a_long_message_keeps_its_start_and_end_and_says_what_was_left_out():
    message = "setting 'arch' must be one of resnet8 (got '" + "x" * 100_000 + "') END"
    shown = one_line(message)
    assert len(shown) <= ERROR_CHARS + 60 and "\n" not in shown
    assert shown.startswith("setting 'arch' must be one of resnet8 (got 'xxx") and shown.endswith("xxx') END")
    left_out = int(shown.split("…[")[1].split(" characters left out")[0])
    assert left_out == len(message) - ERROR_CHARS
