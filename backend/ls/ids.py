"""The one parser of Label Studio ids (tasks, projects, annotations), for ``/predict`` and ``/webhook`` alike.

Label Studio ids are 64-bit database keys, sent as JSON numbers or, by some serializers, as strings of digits.
An id is a non-negative ``int`` up to :data:`MAX_ID` (``bool`` excluded), or a string of 1 to :data:`MAX_ID_DIGITS`
ASCII digits. Nothing else is read as an id: not floats (``3.0``), not signs or spaces, and not the other characters
:meth:`str.isdigit` admits (``'٣'``, ``'²'``); the length bound keeps ``int()`` away from strings of thousands of
digits (Python refuses more than 4,300 with a ``ValueError``, and a long one costs quadratic time).
"""

from __future__ import annotations

from typing import Any

MAX_ID = 2**63 - 1
"""The largest id (Label Studio's keys are 64-bit; SQLite's INTEGER too)."""

MAX_ID_DIGITS = 18
"""The longest id string read (every such string is below :data:`MAX_ID`)."""

_ASCII_DIGITS = frozenset("0123456789")


class IdError(ValueError):
    """``value`` is not a Label Studio id; the message says what it is instead (never the whole value)."""


def _shown(value: Any, limit: int = 40) -> str:
    """``value`` for an error message: short, and never a conversion that could itself fail or take long."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value).bit_length() > 64:
        return f"an integer of {abs(value).bit_length()} bits"  # str() of a huge int may itself be refused
    if isinstance(value, str) and len(value) > limit:
        return f"a string of {len(value):,} characters"
    if value is not None and not isinstance(value, (bool, int, float, str)):
        return f"a {type(value).__name__}"  # a list or an object: its repr could be long
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_id(value: Any) -> int:
    """``value`` as an id (see the module docstring).

    Raises:
        IdError: anything else, with a message that begins ``must be a non-negative integer id`` (the callers
            answer it with a 4xx status).
    """
    what = "must be a non-negative integer id"
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= MAX_ID:
            return value
        raise IdError(f"{what} below 2**63, got {_shown(value)}")
    if isinstance(value, str):
        if len(value) > MAX_ID_DIGITS:
            raise IdError(f"{what} of at most {MAX_ID_DIGITS} digits, got {_shown(value)}")
        if not value or not _ASCII_DIGITS.issuperset(value):
            raise IdError(f"{what} (ASCII digits), got {_shown(value)}")
        return int(value)
    raise IdError(f"{what}, got {_shown(value)}")


def id_or_none(value: Any) -> int | None:
    """:func:`parse_id`, or None where ``value`` is not an id (for ids a request may leave out or get wrong)."""
    try:
        return parse_id(value)
    except IdError:
        return None
