"""Built-in models that need no download: today the linear toy problem (toy.py)."""

from .toy import ToyProblem, make_toy

__all__ = ["ToyProblem", "make_toy"]
