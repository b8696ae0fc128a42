"""Spread over seeds: mean, sample standard deviation and a Student-t 95 % interval, for one variant
and for the paired difference of two variants trained on the same seeds.

A study's seeds are its independent replicates: the interval says where the mean over *training
seeds* lies, the quantity a reader compares between variants (a binomial error over validation images
would only describe the finite validation set). Pairing by seed removes what the seeds share (the
data order, the initial weights), so a paired difference is usually much tighter than the two
variants' intervals suggest. With fewer than two seeds there is no spread: sd and interval are None.

The sd has an interval too (chi-square, assuming normal seed-to-seed variation): a target such as "sd at
most 0.03" needs it, because five seeds pin an sd down only to within a factor of about 5 (0.6x-2.9x).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from scipy.stats import chi2
from scipy.stats import t as student_t

LEVEL = 0.95  # the interval's coverage


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    sd: float | None  # sample standard deviation (n - 1 in the denominator)
    low: float | None  # the Student-t interval at LEVEL: mean -/+ t(n-1) * sd / sqrt(n)
    high: float | None
    values: tuple[float, ...]  # every seed's value, in seed order
    sd_low: float | None = None  # the sd's chi-square interval at LEVEL (sd_interval)
    sd_high: float | None = None

    def as_dict(self) -> dict:
        return dict(asdict(self), values=list(self.values), level=LEVEL)

    @classmethod
    def from_dict(cls, d: dict) -> Summary:
        """The inverse of :meth:`as_dict` (reports keep summaries as JSON-ready dicts; older ones lack the
        sd's interval)."""
        return cls(d["n"], d["mean"], d["sd"], d["low"], d["high"], tuple(d["values"]),
                   d.get("sd_low"), d.get("sd_high"))

    def text(self, digits: int = 3, signed: bool = False) -> str:
        """``0.315 ± 0.167 [0.108, 0.522]`` (mean ± sd [interval]); one value stays one value. ``signed``:
        mean and interval with their sign (a difference)."""
        sign = "+" if signed else ""
        if self.sd is None:
            return f"{self.mean:{sign}.{digits}f} (1 seed)"
        return (f"{self.mean:{sign}.{digits}f} ± {self.sd:.{digits}f} "
                f"[{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]")

    def spread(self, digits: int = 3, signed: bool = False) -> str:
        """``0.315 ± 0.167`` (mean ± sd, the tables' cell); one value stays one value. ``signed``: the mean
        with its sign (a difference)."""
        mean = f"{self.mean:{'+' if signed else ''}.{digits}f}"
        return mean if self.sd is None else f"{mean} ± {self.sd:.{digits}f}"

    def error_bar(self) -> list[list[float]] | None:
        """The interval as matplotlib's asymmetric ``yerr`` around the mean (None: one seed, no interval)."""
        return None if self.sd is None else [[self.mean - self.low], [self.high - self.mean]]


def t_quantile(n: int, level: float = LEVEL) -> float:
    """The two-sided Student-t quantile for ``n`` values (n - 1 degrees of freedom)."""
    return float(student_t.ppf(0.5 + level / 2, n - 1))


def sd_interval(sd: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The interval of a standard deviation estimated from ``n`` values:
    ``sd * sqrt((n - 1) / chi2_{(1+level)/2})`` to ``sd * sqrt((n - 1) / chi2_{(1-level)/2})``, n - 1 df."""
    df = n - 1
    return (sd * math.sqrt(df / chi2.ppf(0.5 + level / 2, df)), sd * math.sqrt(df / chi2.ppf(0.5 - level / 2, df)))


def summarize(values: list[float]) -> Summary:
    """Mean, sd and t interval of ``values`` (non-finite values are refused: a diverged run has no score)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize needs at least one value")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"summarize got a non-finite value: {values}")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Summary(1, mean, None, None, None, tuple(values))
    sd = statistics.stdev(values)
    half = t_quantile(len(values)) * sd / math.sqrt(len(values))
    return Summary(len(values), mean, sd, mean - half, mean + half, tuple(values), *sd_interval(sd, len(values)))


def paired_difference(variant: dict[int, float], reference: dict[int, float]) -> Summary | None:
    """``variant - reference`` over the seeds both have (seed -> value); None when they share none."""
    shared = sorted(variant.keys() & reference.keys())
    return summarize([variant[s] - reference[s] for s in shared]) if shared else None
