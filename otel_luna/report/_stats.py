"""Nearest-rank percentiles, shared by the reports (and the same definition as Flux's
``quantile(method: "exact_selector")``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import TypeVar

__all__ = ["nearest_rank"]

_Number = TypeVar("_Number", int, float)


def nearest_rank(values: Sequence[_Number], percent: float) -> _Number | None:
    """The nearest-rank ``percent`` percentile: the sorted value at rank ``ceil(p/100 * n)``.

    p is the smallest value such that at least p % of the values are less than or equal to it
    (rank 1 when ``ceil`` gives 0); it is always one of the values, and p100 is the max. Exact
    arithmetic (``Fraction`` of the decimal ``percent``), so 95 of 20 values is rank 19, never 20
    through a rounding error. ``None`` for no values. Flux's ``quantile(method:
    "exact_selector")`` is the same definition; InfluxQL's ``percentile()`` rounds the rank
    instead (``floor(n * p / 100 + 0.5)``) and can be one rank lower.
    """
    if not values:
        return None
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    ordered = sorted(values)
    rank = math.ceil(Fraction(str(percent)) * len(ordered) / 100)
    return ordered[max(rank, 1) - 1]
