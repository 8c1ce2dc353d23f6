"""How the errors of a user backbone quote an exception raised by the user's code: its first line."""
from __future__ import annotations


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else "no message"
