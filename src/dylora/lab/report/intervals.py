"""Uncertainty of a mean over seeds, from its two sources, and the verdicts it allows.

A run's score on the dev set varies for two reasons: training (another seed trains another
adapter) and the dev rows (another sample of rows scores it otherwise). For a quantity computed per
seed on the whole dev set (a score, or a difference of scores such as DyLoRA's average minus
LoRA's), ``Interval`` combines

* the seeds: the between-seed variance s² of the per-seed values (every seed sees the same rows,
  so it is training noise), contributing s²/n to the variance of their mean;
* the rows: a paired bootstrap. Each resample draws the dev rows with replacement once and uses
  them for every seed, method and rank; the task's metric is recomputed on them (accuracy, F1,
  MCC, Pearson: the metric, not a mean of per-row scores), and the quantity's mean over seeds
  with it. The resamples' standard deviation is SE_rows.

SE = sqrt(s²/n + SE_rows²), and the interval is the estimate ± q·SE, q the quantiles of Student's t
with n - 1 degrees of freedom and of the normal weighted by the two parts' shares of the variance:
q = w·t(n-1) + (1 - w)·z, w = (s²/n) / SE². Measured on the simulation of tests/test_intervals.py
(90 % intervals, 1,000 to 2,000 trials each, 3 and 5 seeds, seeds or rows dominating or mixed), this
covers the truth in 88.5 to 92.3 % of trials. Student's t at n - 1 throughout over-covers when the rows
dominate (98.7 % at 3 seeds, 95 % at 5); Welch-Satterthwaite degrees of freedom under-cover when the
seeds dominate (87.0 to 88.0 % at 3 seeds: its degrees of freedom grow exactly when s² comes out
small). One seed has no s²: the rows alone, normal quantile.
Resampling uses a fixed seed and count, so a report regenerates byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

LEVEL = 0.90  # two-sided: each bound is a one-sided test at 5 %
RESAMPLES = 2000
RESAMPLE_SEED = 0
MAX_SEEDS = 1000  # seeds_needed looks no further


def resample_counts(n_rows: int, resamples: int = RESAMPLES, seed: int = RESAMPLE_SEED) -> np.ndarray:
    """(resamples x n_rows) how often each dev row is drawn in each bootstrap resample (rows sum to n_rows)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_rows, np.full(n_rows, 1 / n_rows), size=resamples).astype(np.float64)


def weighted_metric(metric: str, predictions: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``metric`` of the rows drawn ``counts`` times (one value per row of ``counts``), as scikit-learn and
    scipy compute it on those rows, with dylora.metrics.glue's conventions (0 where undefined).
    accuracy, f1 (positive class 1), matthews_correlation (binary) and pearson; others raise KeyError."""
    counts = np.atleast_2d(counts)
    n = counts.sum(axis=1)
    p, y = np.asarray(predictions), np.asarray(labels)
    if metric == "accuracy":
        return counts @ (p == y).astype(float) / n
    if metric == "pearson":
        x, z = p.astype(float), y.astype(float)
        sx, sz = counts @ x, counts @ z
        cov = counts @ (x * z) - sx * sz / n
        vx, vz = counts @ (x * x) - sx**2 / n, counts @ (z * z) - sz**2 / n
        ok = (vx > 1e-12 * np.maximum(1, counts @ (x * x))) & (vz > 1e-12 * np.maximum(1, counts @ (z * z)))
        return np.where(ok, cov / np.sqrt(np.where(ok, vx * vz, 1)), 0.0)
    tp = counts @ ((p == 1) & (y == 1)).astype(float)
    fp = counts @ ((p == 1) & (y != 1)).astype(float)
    fn = counts @ ((p != 1) & (y == 1)).astype(float)
    if metric == "f1":
        denominator = 2 * tp + fp + fn
        return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0)
    if metric == "matthews_correlation":
        tn = n - tp - fp - fn
        denominator = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
        return np.where(denominator > 0, (tp * tn - fp * fn) / np.sqrt(np.where(denominator > 0, denominator, 1)),
                        0.0)
    raise KeyError(f"no resampled form of metric {metric!r}")


def resampled(metric: str, predictions: np.ndarray, labels: np.ndarray, counts: np.ndarray,
              score: Callable[[np.ndarray, np.ndarray], float] | None = None) -> np.ndarray:
    """``weighted_metric``, or ``score`` (any metric) on each resample's rows where it has no closed form."""
    try:
        return weighted_metric(metric, predictions, labels, counts)
    except KeyError:
        if score is None:
            raise
    out = []
    for row in np.atleast_2d(counts).astype(int):
        take = np.repeat(np.arange(len(row)), row)
        out.append(score(np.asarray(predictions)[take], np.asarray(labels)[take]))
    return np.asarray(out, dtype=float)


@dataclass(frozen=True)
class Interval:
    """The mean over ``n`` seeds of a per-seed quantity, and its ``LEVEL`` interval."""

    estimate: float
    lo: float
    hi: float
    n: int
    s_seed: float  # between-seed standard deviation (nan for one seed)
    se_rows: float  # the bootstrap's standard error of the mean over seeds

    @classmethod
    def of(cls, per_seed: np.ndarray, rows: np.ndarray, level: float = LEVEL) -> "Interval":
        """From the per-seed values on the whole dev set and the resampled means over seeds."""
        per_seed = np.asarray(per_seed, float)
        n, estimate = len(per_seed), float(np.mean(per_seed))
        se_rows = float(np.std(rows, ddof=1)) if len(rows) > 1 else 0.0
        s_seed = float(np.std(per_seed, ddof=1)) if n > 1 else math.nan
        half = quantile(n, s_seed, se_rows, level) * standard_error(n, s_seed, se_rows)
        return cls(estimate, estimate - half, estimate + half, n, s_seed, se_rows)


def standard_error(n: int, s_seed: float, se_rows: float) -> float:
    seeds = 0.0 if n < 2 else s_seed**2 / n
    return math.sqrt(seeds + se_rows**2)


def quantile(n: int, s_seed: float, se_rows: float, level: float = LEVEL) -> float:
    """Student's t (n - 1 degrees of freedom) and the normal quantile, weighted by the seeds' and the rows'
    shares of the variance of the mean."""
    z = float(stats.norm.ppf(0.5 + level / 2))
    if n < 2 or s_seed == 0:
        return z
    seeds = s_seed**2 / n
    w = seeds / (seeds + se_rows**2)
    return w * float(stats.t.ppf(0.5 + level / 2, n - 1)) + (1 - w) * z


# ---------------------------------------------------------------------------- verdicts

# criterion -> (lower threshold, upper threshold): it passes when its interval lies inside them
THRESHOLDS = {
    "drop_margin": (0.0, math.inf),  # LoRA loses more than DyLoRA when truncated to r_min
    "avg_gap": (-1.0, math.inf),  # DyLoRA's average over ranks at most 1 point below LoRA's (non-inferiority)
    "gap_at_r_max": (-2.0, 2.0),  # the two within 2 points at r_max (two one-sided tests)
}


def passes(criterion: str, interval: Interval) -> bool:
    low, high = THRESHOLDS[criterion]
    return interval.lo > low and interval.hi < high


def fails(criterion: str, interval: Interval) -> bool:
    """The interval lies wholly on the wrong side of a threshold."""
    low, high = THRESHOLDS[criterion]
    return interval.hi < low or interval.lo > high


def verdict(criteria: dict[str, Interval]) -> str:
    """holds (every criterion passes), fails (some interval lies wholly on the wrong side), else undecided."""
    if all(passes(name, interval) for name, interval in criteria.items()):
        return "holds"
    if any(fails(name, interval) for name, interval in criteria.items()):
        return "fails"
    return "undecided"


def seeds_needed(criteria: dict[str, Interval], level: float = LEVEL) -> str:
    """For an undecided task: the fewest seeds at which every criterion's interval, at the observed estimate
    and variances, clears the threshold it is nearest to; "dev set too small" when the rows alone span it;
    "needs at least 2 seeds to estimate" with one seed."""
    most = 0
    for name, interval in criteria.items():
        if passes(name, interval) or fails(name, interval):
            continue
        if interval.n < 2:
            return "needs at least 2 seeds to estimate"
        gap = min(abs(interval.estimate - t) for t in THRESHOLDS[name] if math.isfinite(t))
        if quantile(10**9, interval.s_seed, interval.se_rows, level) * interval.se_rows >= gap:
            return "dev set too small"
        n = interval.n
        while quantile(n, interval.s_seed, interval.se_rows, level) * standard_error(
                n, interval.s_seed, interval.se_rows) >= gap:
            n += 1
            if n > MAX_SEEDS:
                return f"more than {MAX_SEEDS}"
        most = max(most, n)
    return str(most) if most else ""
