"""Command-line value types shared by `edge-inspect` and `edge-export`, with errors that name the value."""

from __future__ import annotations

import argparse
import math
from typing import Callable

MAX_SEED = 2**32 - 1


def integer_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """Return an argparse type that accepts integers from `low` to `high` (inclusive)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            upper = f" to {high}" if high is not None else " or more"
            raise argparse.ArgumentTypeError(f"{value} is out of range; use {low}{upper}")
        return value

    return parse


def positive_float(text: str) -> float:
    """Parse a finite number above 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is invalid; use a number above 0")
    return value


def finite_float(text: str) -> float:
    """Parse a finite number (no inf or nan)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is invalid; use a finite number")
    return value


seed = integer_in(0, MAX_SEED)


def fraction(text: str) -> float:
    """Parse a share between 0 and 1."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is invalid; use a share between 0 and 1, for example 0.3")
    return value
