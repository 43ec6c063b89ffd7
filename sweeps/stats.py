"""The statistics of a comparison: one row (a variant) against another (the full method) at one
label count, paired by seed where they share seeds; and the interquartile mean of a row over a
grid, with rliable's stratified bootstrap interval.

Owns the numbers only (pure functions of errors keyed by seed); table.py places them and
render.py prints them. The rules, in one place:
- A cell trained with seed s drew labeled split s, so two rows at one label count that share
  seeds are paired: the difference is the mean of the per-seed differences (variant - full), its
  95% interval the paired t interval (scipy's ttest_rel), and with >= BOOTSTRAP_MIN_PAIRS pairs
  also a bootstrap interval (scipy.stats.bootstrap, paired=True, BCa, a fixed seed); P(better)
  is the share of pairs where the variant's error is lower (a tie counts half, as rliable's
  probability of improvement counts it). Seeds finished on one side only are dropped pairwise
  and counted (`n_dropped`).
- Rows that share fewer than 2 seeds keep Welch's unpaired t-test (difference of the means,
  Welch's interval), when each side has >= 2 finished seeds; else only the difference is given
  (`n too small`).
- Interquartile mean (Agarwal et al. 2021, rliable): the mean of the middle 50% of all of a
  row's runs pooled over its label counts (scipy's trim_mean, 25% cut each side); its 95%
  interval is the percentile interval of the stratified bootstrap, which resamples the seeds
  within each label count (rliable's StratifiedBootstrap with one task per label count).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap, trim_mean, ttest_ind, ttest_rel

LEVEL = 0.95                     # every interval's confidence level
BOOTSTRAP_MIN_PAIRS = 5          # fewer pairs: the bootstrap's resamples take too few distinct values
BOOTSTRAP_RESAMPLES = 9999       # scipy's default
BOOTSTRAP_SEED = 0               # a table is the same every time it is built
IQM_CUT = 0.25                   # trimmed from each end: the interquartile mean
PAIRED, WELCH, TOO_FEW = "paired t", "Welch", "n too small"     # the test a comparison used


@dataclass(frozen=True)
class Comparison:
    """A variant against the full method at one label count (errors in %, variant - full)."""
    test: str                    # PAIRED | WELCH | TOO_FEW
    diff: float                  # mean per-seed difference (paired), else difference of the means
    low: float = math.nan        # the test's 95% interval (paired t, or Welch's)
    high: float = math.nan
    boot_low: float = math.nan   # paired bootstrap 95% interval (>= BOOTSTRAP_MIN_PAIRS pairs)
    boot_high: float = math.nan
    t: float = math.nan
    p: float = math.nan
    p_better: float = math.nan   # share of pairs where the variant's error is lower (paired only)
    n_variant: int = 0           # finished seeds of each side
    n_full: int = 0
    n_pairs: int = 0             # seeds both sides finished (the pairs the paired test used)
    n_dropped: int = 0           # finished seeds without a partner, left out of the paired test


def compare(variant: dict[int, float], full: dict[int, float]) -> Comparison | None:
    """The variant's errors against the full method's, each keyed by seed (finished seeds only);
    None when a side has none."""
    if not variant or not full:
        return None
    shared = sorted(set(variant) & set(full))
    sizes = {"n_variant": len(variant), "n_full": len(full)}
    if len(shared) >= 2:
        return _paired(np.array([variant[s] for s in shared]), np.array([full[s] for s in shared]),
                       n_dropped=len(variant) + len(full) - 2 * len(shared), **sizes)
    a, b = np.array(list(variant.values())), np.array(list(full.values()))
    if len(a) >= 2 and len(b) >= 2:
        return _welch(a, b, **sizes)
    return Comparison(TOO_FEW, float(a.mean() - b.mean()), **sizes)


def _quiet(fn, *args, **kw):
    """scipy warns where the differences have no spread (then t and p are inf or nan)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def _paired(a: np.ndarray, b: np.ndarray, **counts) -> Comparison:
    res = _quiet(ttest_rel, a, b)
    ci = _quiet(res.confidence_interval, LEVEL)
    boot = paired_bootstrap(a, b) if len(a) >= BOOTSTRAP_MIN_PAIRS else (math.nan, math.nan)
    better = float(np.mean(a < b) + 0.5 * np.mean(a == b))
    return Comparison(PAIRED, float(np.mean(a - b)), float(ci.low), float(ci.high), *boot, float(res.statistic),
                      float(res.pvalue), better, n_pairs=len(a), **counts)


def _welch(a: np.ndarray, b: np.ndarray, **counts) -> Comparison:
    res = _quiet(ttest_ind, a, b, equal_var=False)
    ci = _quiet(res.confidence_interval, LEVEL)
    return Comparison(WELCH, float(a.mean() - b.mean()), float(ci.low), float(ci.high), t=float(res.statistic),
                      p=float(res.pvalue), **counts)


def paired_bootstrap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The 95% BCa bootstrap interval of mean(a - b), resampling pairs (nan where every
    difference is the same: no interval to estimate)."""
    res = _quiet(bootstrap, (a, b), lambda x, y, axis: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                 confidence_level=LEVEL, n_resamples=BOOTSTRAP_RESAMPLES, rng=np.random.default_rng(BOOTSTRAP_SEED))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def iqm(errors_by_count: dict[int, list[float]]) -> tuple[float, float, float]:
    """(IQM, low, high): the interquartile mean of every run (pooled over label counts) and its
    95% percentile interval from the stratified bootstrap (seeds resampled within each label
    count, BOOTSTRAP_RESAMPLES times, a fixed seed)."""
    strata = [np.asarray(v, dtype=float) for v in errors_by_count.values() if len(v)]
    if not strata:
        return math.nan, math.nan, math.nan
    point = float(trim_mean(np.concatenate(strata), IQM_CUT))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    resampled = np.concatenate([s[rng.integers(0, len(s), size=(BOOTSTRAP_RESAMPLES, len(s)))] for s in strata],
                               axis=1)
    stats = trim_mean(resampled, IQM_CUT, axis=1)
    low, high = np.percentile(stats, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return point, float(low), float(high)
