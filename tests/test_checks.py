"""diffsmooth_fast.checks: bools refused, bounds inclusive and exclusive, NaN and infinities refused, one wording."""

from __future__ import annotations

import math
import re

import pytest

from diffsmooth_fast.checks import check_choice, check_float, check_int, is_int, is_number


def test_is_int_and_is_number_refuse_bools():
    assert is_int(3) and is_int(-1) and not is_int(True) and not is_int(False) and not is_int(3.0)
    assert is_number(3) and is_number(2.5) and is_number(math.nan) and not is_number(True) and not is_number("1")


@pytest.mark.parametrize("value,minimum,maximum,below", [(1, 1, None, None), (0, 0, 5, None), (5, 0, 5, None),
                                                         (2**64 - 1, 0, None, 2**64), (-7, None, None, None)])
def test_check_int_accepts_and_returns_the_value(value, minimum, maximum, below):
    assert check_int("k", value, minimum, maximum, below=below) == value


@pytest.mark.parametrize("call,message", [
    (lambda: check_int("m", 0, 1), "m must be an integer >= 1, got 0"),
    (lambda: check_int("m", True, 1), "m must be an integer >= 1, got True"),
    (lambda: check_int("m", False, 0), "m must be an integer >= 0, got False"),
    (lambda: check_int("m", 2.0, 1), "m must be an integer >= 1, got 2.0"),
    (lambda: check_int("m", "3", 1), "m must be an integer >= 1, got '3'"),
    (lambda: check_int("seed", 2**64, 0, below=2**64), f"seed must be an integer in [0, 2**64), got {2**64}"),
    (lambda: check_int("seed", -1, 0, below=2**64), "seed must be an integer in [0, 2**64), got -1"),
    (lambda: check_int("timestep", 1000, 0, below=1000), "timestep must be an integer in [0, 1000), got 1000"),
    (lambda: check_int("k", 6, 0, 5), "k must be an integer in [0, 5], got 6"),
    (lambda: check_int("k", 6, maximum=5), "k must be an integer <= 5, got 6"),
    (lambda: check_int("k", 5, below=5), "k must be an integer < 5, got 5"),
    (lambda: check_int("k", None), "k must be an integer, got None"),
])
def test_check_int_messages(call, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        call()


@pytest.mark.parametrize("value,kwargs", [(0.5, {"above": 0.0, "below": 1.0}), (1, {"above": 0.0, "maximum": 1.0}),
                                          (0.0, {"minimum": 0.0}), (-3, {}), (0.999, {"minimum": 0, "below": 1})])
def test_check_float_accepts_and_returns_a_float(value, kwargs):
    got = check_float("x", value, **kwargs)
    assert got == value and type(got) is float


@pytest.mark.parametrize("call,message", [
    (lambda: check_float("sigma", 0.0, above=0.0), "sigma must be > 0, got 0.0"),
    (lambda: check_float("sigma", -1, above=0.0), "sigma must be > 0, got -1"),
    (lambda: check_float("sigma", math.nan, above=0.0), "sigma must be a finite number > 0, got nan"),
    (lambda: check_float("sigma", math.inf, above=0.0), "sigma must be a finite number > 0, got inf"),
    (lambda: check_float("sigma", True, above=0.0), "sigma must be a finite number > 0, got True"),
    (lambda: check_float("sigma", "0.25", above=0.0), "sigma must be a finite number > 0, got '0.25'"),
    (lambda: check_float("x", -math.inf), "x must be a finite number, got -inf"),
    (lambda: check_float("x", 10**400), f"x must be a finite number, got {10**400}"),  # too large for a float
    (lambda: check_float("alpha", 1.0, above=0.0, below=1.0), "alpha must be in (0, 1), got 1.0"),
    (lambda: check_float("alpha", 0, above=0.0, below=1.0), "alpha must be in (0, 1), got 0"),
    (lambda: check_float("fraction", 1.5, above=0.0, maximum=1.0), "fraction must be in (0, 1], got 1.5"),
    (lambda: check_float("dropout", 1.0, minimum=0.0, below=1.0), "dropout must be in [0, 1), got 1.0"),
    (lambda: check_float("p", 2, minimum=0, maximum=1), "p must be in [0, 1], got 2"),
    (lambda: check_float("local_sigma", -0.1, minimum=0.0), "local_sigma must be >= 0, got -0.1"),
    (lambda: check_float("eps", 0.25, maximum=0.125), "eps must be <= 0.125, got 0.25"),
    (lambda: check_float("eps", 2.5, below=2.5), "eps must be < 2.5, got 2.5"),
])
def test_check_float_messages(call, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        call()


def test_conflicting_bounds_are_a_programming_error():
    with pytest.raises(TypeError):
        check_int("k", 1, maximum=2, below=3)
    with pytest.raises(TypeError):
        check_float("x", 1.0, minimum=0.0, above=0.0)
    with pytest.raises(TypeError):
        check_float("x", 1.0, maximum=2.0, below=2.0)


def test_check_choice():
    assert check_choice("dataset", "npz", ("cifar10", "npz")) == "npz"
    assert check_choice("k", 2, [1, 2]) == 2
    with pytest.raises(ValueError, match="^" + re.escape("dataset must be one of cifar10, npz, got 'mnist'") + "$"):
        check_choice("dataset", "mnist", ("cifar10", "npz"))
    with pytest.raises(ValueError, match=re.escape("k must be one of 1, 2, got True")):
        check_choice("k", True, (1, 2))  # True == 1, but a bool is no integer choice
