"""Building blocks of the resource schema: frozen sections that refuse unknown keys, cross-field
rule problems raised together, durations written as ``"30s"`` or ``"1h30m"``, and the error shape
of a field check (a reason that may quote user text, never a format string)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "Duration",
    "FrozenSection",
    "PositiveInt",
    "Ratio",
    "RuleProblems",
    "Share",
    "Text",
    "field_error",
    "parse_duration",
    "pydantic_check",
]


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


class RuleProblems(list[InitErrorDetails]):
    # Cross-field rule violations, raised together. pydantic nests a ValidationError raised in a
    # validator under that model's location, so each keeps its own path (flushing.summary_tokens).

    def add(self, path: str, reason: str, value: object = None) -> None:
        loc = tuple(path.split(".")) if path else ()
        self.append(InitErrorDetails(type=field_error("rule", reason), loc=loc, input=value))

    def raise_any(self, title: str) -> None:
        if self:
            raise ValidationError.from_exception_data(title, self)


class FrozenSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Ratio = Annotated[float, Field(strict=True, gt=0, le=1)]
Share = Annotated[float, Field(strict=True, ge=0, le=1)]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
Text = Annotated[str, Field(min_length=1)]
