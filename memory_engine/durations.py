"""Field types the resource schema shares: durations written as ``"30s"`` or ``"1h30m"``, and the
error shape of a field check (a reason that may quote user text, never a format string)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Final

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

__all__ = ["Duration", "field_error", "parse_duration", "pydantic_check"]


def field_error(kind: str, reason: str) -> PydanticCustomError:
    # The reason travels in the context, never in the template: it may quote user text with braces.
    return PydanticCustomError(kind, "{reason}", {"reason": reason})


_UNITS_S: Final[dict[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# "ms" comes before "m" in the alternation so "500ms" is not read as 500 minutes and an "s".
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds: a number (not ``bool``), ``"0"``, ``"90"``, or a duration
    such as ``"500ms"``, ``"30s"``, ``"5m"``, ``"24h"``, ``"1d"``, ``"1h30m"``.

    Raises :class:`ValueError` naming the value when it is negative, not finite or not a duration.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        # bool is an int, but "ttl: yes" is a typo, not one second.
        raise ValueError(f"expected seconds or a duration such as '30s', got {value!r}")
    if isinstance(value, str):
        text, seconds, pos = value.strip(), 0.0, 0
        if _PLAIN_NUMBER.fullmatch(text):
            text += "s"
        while pos < len(text) and (part := _DURATION_PART.match(text, pos)):
            seconds, pos = seconds + float(part[1]) * _UNITS_S[part[2]], part.end()
        if not text or pos < len(text):
            raise ValueError(f"{value!r} is not a duration such as '500ms', '30s', '5m', '1h30m'")
    else:
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration {value!r} must be a finite number of seconds >= 0")
    return seconds


def pydantic_check(kind: str, check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    # pydantic would prefix a ValueError's message with "Value error, "; a custom error does not.
    def validate(value: Any) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            raise field_error(kind, str(exc)) from None

    return validate


Duration = Annotated[float, BeforeValidator(pydantic_check("duration", parse_duration))]
"""Seconds as ``float``; accepts numbers or strings like ``"30s"``, ``"1h30m"``, ``"500ms"``."""
