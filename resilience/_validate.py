"""Checks every public setting goes through at construction: type, finiteness, range, syntax.

One place for the rules, so each settings class says only which bounds apply to it. Wrong types
raise ``TypeError``, wrong values ``ValueError``; the message names the setting and the value.
"""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = ["boolean", "header_name", "integer", "number", "show"]

# RFC 9110 section 5.6.2: a field name is a token.
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def show(value: object) -> str:
    """``repr(value)``, bounded: never raises (an int of 5,000 digits has no repr)."""
    try:
        text = repr(value)
    except ValueError:
        return f"an int of {value.bit_length()} bits" if isinstance(value, int) else "?"
    return text if len(text) <= 80 else text[:77] + "..."


def number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
) -> float:
    """A finite int or float (not a bool) within ``[low, high]`` and ``> above``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {show(value)}")
    try:
        as_float = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be finite, got {show(value)}") from None
    if not math.isfinite(as_float):
        raise ValueError(f"{name} must be finite, got {show(value)}")
    _check_range(name, as_float, value, low, high, above)
    return as_float


def integer(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """An int (not a bool) within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {show(value)}")
    _check_range(name, value, value, low, high, None)
    return value


def boolean(name: str, value: object) -> bool:
    """``True`` or ``False``: a truthy string such as ``"false"`` is not a flag."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {show(value)}")
    return value


def header_name(name: str, value: object) -> str:
    """An HTTP field name (an RFC 9110 token: no spaces, colons or line breaks)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {show(value)}")
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{name} must be an HTTP header name, got {show(value)}")
    return value


def _check_range(
    name: str,
    as_float: float,
    value: object,
    low: float | None,
    high: float | None,
    above: float | None,
) -> None:
    if low is not None and as_float < low:
        raise ValueError(f"{name} must be >= {low:g}, got {show(value)}")
    if above is not None and as_float <= above:
        raise ValueError(f"{name} must be > {above:g}, got {show(value)}")
    if high is not None and as_float > high:
        raise ValueError(f"{name} must be <= {high:g}, got {show(value)}")
