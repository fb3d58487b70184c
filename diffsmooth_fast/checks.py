"""Checks of user-given numbers and choices, with one wording for every message.

Why a module of its own: ``bool`` is a subclass of ``int`` in Python, so ``isinstance(True, int)`` holds and
``n=True`` would pass a plain ``isinstance`` check as 1; every check here refuses bools. And a user who gives a
bad ``sigma`` to the library, the command line or an op should read the same sentence. The messages:

- integers, for a wrong type and a wrong value alike: ``m must be an integer >= 1, got 0``,
  ``seed must be an integer in [0, 2**64), got -1``;
- floats: ``sigma must be a finite number > 0, got nan`` when the value is no finite number (bools, strings,
  NaN, infinities), ``sigma must be > 0, got 0.0`` when it is one outside the bounds;
- choices: ``dataset must be one of cifar10, imagenet, got 'mnist'``.

Bounds read as in mathematics: ``minimum``/``maximum`` are inclusive (``[a, b]``), ``above``/``below`` exclusive
(``(a, b)``). This module imports nothing from the package, so any module may use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeGuard, TypeVar

__all__ = ["check_choice", "check_float", "check_int", "is_int", "is_number"]

T = TypeVar("T")


def is_int(value: object) -> TypeGuard[int]:
    """True for a Python ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """True for an ``int`` or ``float`` that is not a ``bool`` (NaN and infinities included)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None, *,
              below: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) in the bounds, else a ValueError naming ``name``.

    Args:
        minimum: smallest allowed value (inclusive).
        maximum: largest allowed value (inclusive); give ``below`` instead for an exclusive bound (``< 2**64``).
    """
    if maximum is not None and below is not None:
        raise TypeError("check_int: give maximum (inclusive) or below (exclusive), not both")
    if not is_int(value) or not _within(value, minimum, maximum, None, below):
        raise ValueError(f"{name} must be an integer{_bounds(minimum, maximum, None, below)}, got {value!r}")
    return value


def check_float(name: str, value: object, *, minimum: float | None = None, maximum: float | None = None,
                above: float | None = None, below: float | None = None) -> float:
    """``value`` as a float if it is a finite number (int or float, not a bool) in the bounds, else a ValueError.

    Args:
        minimum, maximum: inclusive bounds (``>= minimum``, ``<= maximum``).
        above, below: exclusive bounds (``> above``, ``< below``), e.g. ``above=0.0, below=1.0`` for alpha.
    """
    if minimum is not None and above is not None or maximum is not None and below is not None:
        raise TypeError("check_float: give one lower bound (minimum or above) and one upper (maximum or below)")
    bounds = _bounds(minimum, maximum, above, below)
    if not is_number(value) or not _finite(value):
        raise ValueError(f"{name} must be a finite number{bounds}, got {value!r}")
    if not _within(value, minimum, maximum, above, below):
        raise ValueError(f"{name} must be{bounds}, got {value!r}")
    return float(value)


def check_choice(name: str, value: object, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices``, else ``ValueError("<name> must be one of a, b, got 'c'")``."""
    options = tuple(choices)
    for option in options:
        if value == option and isinstance(value, bool) == isinstance(option, bool):  # True is not 1 here
            return option
    raise ValueError(f"{name} must be one of {', '.join(str(o) for o in options)}, got {value!r}")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _within(value: float, minimum: float | None, maximum: float | None, above: float | None,
            below: float | None) -> bool:
    return ((minimum is None or value >= minimum) and (maximum is None or value <= maximum)
            and (above is None or value > above) and (below is None or value < below))


def _bounds(minimum: float | None, maximum: float | None, above: float | None, below: float | None) -> str:
    """The bounds as the message states them: ``" >= 1"``, ``" in (0, 1]"``, ``" in [0, 2**64)"`` or ``""``."""
    low = (f"[{_show(minimum)}" if minimum is not None else f"({_show(above)}" if above is not None else None)
    high = (f"{_show(maximum)}]" if maximum is not None else f"{_show(below)})" if below is not None else None)
    if low is not None and high is not None:
        return f" in {low}, {high}"
    if low is not None:
        return f" {'>=' if minimum is not None else '>'} {low[1:]}"
    if high is not None:
        return f" {'<=' if maximum is not None else '<'} {high[:-1]}"
    return ""


def _show(bound: float) -> str:
    """A bound as a person writes it: 0 not 0.0, 2**64 not 18446744073709551616."""
    if isinstance(bound, float) and bound.is_integer():
        bound = int(bound)
    if isinstance(bound, int) and bound >= 2**32 and bound & (bound - 1) == 0:
        return f"2**{bound.bit_length() - 1}"
    return str(bound)
