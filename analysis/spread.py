"""The spread of a handful of repeated measurements: mean, standard deviation, extremes and a
95% confidence interval for the mean (Student's t), without scipy.

Pure functions of plain numbers; the report and the figures use them for repetitions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30 (computed here by
# integrating the t density numerically; they agree with every printed table to 4 places).
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963985


def t975(df: int) -> float:
    """t_{0.975, df}: the table up to 30 degrees of freedom, then the Cornish-Fisher expansion
    of t about the normal quantile (within 1e-4 of the exact value from df = 30 on)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(frozen=True)
class Spread:
    """n values (NaN and None left out): mean, sample standard deviation (n - 1), median,
    min, max, and the half-width of the 95% t-interval of the mean (NaN when n < 2)."""

    n: int
    mean: float
    std: float
    median: float
    min: float
    max: float
    ci95: float

    @property
    def ci95_low(self) -> float:
        return self.mean - self.ci95

    @property
    def ci95_high(self) -> float:
        return self.mean + self.ci95


def spread(values: Iterable[object]) -> Spread:
    """The spread of `values`; numbers that are missing (None, NaN, not numbers) are dropped,
    so n counts only the values measured."""
    numbers = sorted(v for v in (_number(x) for x in values) if v is not None)
    n = len(numbers)
    if n == 0:
        return Spread(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean = math.fsum(numbers) / n
    middle = n // 2
    median = numbers[middle] if n % 2 else (numbers[middle - 1] + numbers[middle]) / 2
    if n < 2:
        return Spread(1, mean, math.nan, median, numbers[0], numbers[0], math.nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in numbers) / (n - 1))
    return Spread(n, mean, std, median, numbers[0], numbers[-1], t975(n - 1) * std / math.sqrt(n))


def _number(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or math.isinf(number) else number
