"""The pieces every method shares: the reporting rule, the comparisons between rows (paired by
seed, else Welch), the interquartile mean over a grid, the EMA.

Each against an independent computation: the median written out by hand, Welch's t-test with
the Welch-Satterthwaite degrees of freedom and the t distribution's tail from mpmath's
regularized incomplete beta (not scipy, which the product uses), the paired t-test with 2
degrees of freedom in closed form, the paired bootstrap as scipy's one-sample bootstrap of the
differences, the interquartile mean sorted and cut by hand, the EMA step written as
ema + (1 - decay) (live - ema).
"""
import math

import mpmath
import numpy as np
import pytest
import torch

from mixmatch_core.run_report import final_metrics, report_errors
from mixmatch_core.train import ema_update
from scipy.stats import bootstrap, ttest_ind, ttest_rel

from sweeps import stats


# ---- the reporting rule: error = median of the last N evaluations ----------------------------
@pytest.mark.parametrize("errors, n, median", [
    ([60.0, 50.0, 40.0, 10.0, 11.0, 90.0], 3, 11.0),          # last 3: mean 37, median 11
    ([60.0, 50.0, 40.0, 10.0, 11.0, 90.0], 4, 25.5),          # last 4, even: (11 + 40) / 2; mean 37.75
    ([70.0, 12.0, 13.0, 80.0], 20, 41.5),                     # N > evaluations: all of them; mean 43.75
])
def test_reported_error_is_the_median_of_the_last_n_not_the_mean_last_or_best(errors, n, median):
    last = errors[-n:]
    assert sum(last) / len(last) != median                   # the values tell median from mean
    out = report_errors(errors, n)
    assert out == {"error": median, "error_last": errors[-1], "error_best": min(errors)}


def test_final_metrics_report_the_test_error_of_the_evaluated_model_and_the_raw_one_apart():
    history = [{"test_error": e, "test_error_raw": e + 5} for e in (60.0, 50.0, 40.0, 10.0, 11.0, 90.0)]
    out = final_metrics(history, 3)
    assert (out["error"], out["error_raw"]) == (11.0, 16.0)


# ---- Welch's t-test (unequal variances) -------------------------------------------------------
def _welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """stats.compare on rows that share no seed: Welch's t and p."""
    c = stats.compare(dict(enumerate(a)), {100 + i: x for i, x in enumerate(b)})
    assert c.test == stats.WELCH
    return c.t, c.p


def welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float]:
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)            # sample variances (ddof = 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    t = (ma - mb) / math.sqrt(se2)
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))   # Welch-Satterthwaite
    p = float(mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True))  # two-sided tail
    return t, p


@pytest.mark.parametrize("a, b", [
    ([10.0, 12.5, 11.0], [20.0, 26.0, 17.0, 30.5, 22.0]),      # unequal n and variances
    ([48.3, 47.2], [61.07, 61.81]),                           # two seeds each, as in results/
])
def test_welch_p_value_matches_an_independent_unequal_variance_computation(a, b):
    t, p = _welch(a, b)
    t_ref, p_ref = welch_by_hand(a, b)
    assert (t, p) == (pytest.approx(t_ref, rel=1e-9), pytest.approx(p_ref, rel=1e-6))


def test_welch_is_not_students_pooled_t_test():
    """Pooled variance (Student) gives another p on these values: the test can tell them apart."""
    a, b = [10.0, 12.5, 11.0], [20.0, 26.0, 17.0, 30.5, 22.0]
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    pooled = (sum((x - ma) ** 2 for x in a) + sum((x - mb) ** 2 for x in b)) / (na + nb - 2)
    t = (ma - mb) / math.sqrt(pooled * (1 / na + 1 / nb))
    df = na + nb - 2
    p_student = float(mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True))
    assert _welch(a, b)[1] != pytest.approx(p_student, rel=1e-3)


# ---- paired by seed ---------------------------------------------------------------------------
# Three labeled splits of very different difficulty; the variant is worse on each by 0.5, 0.6 and
# 0.9 points (mean 0.667, median 0.6): the split's spread hides that from Welch, not from the pairs.
FULL3 = {1: 10.0, 2: 14.0, 3: 30.0}
VARIANT3 = {1: 10.5, 2: 14.6, 3: 30.9}


def test_paired_difference_interval_and_p_match_a_closed_form_with_two_degrees_of_freedom():
    d = [VARIANT3[s] - FULL3[s] for s in FULL3]
    mean = sum(d) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 2 / 3)
    t = mean / se
    p = 1 - t / math.sqrt(2 + t * t)                    # two-sided tail of Student's t with 2 dof
    q = 0.95 / math.sqrt(2 * 0.975 * 0.025)             # its 0.975 quantile, (2u - 1) / sqrt(2u(1 - u))
    c = stats.compare(VARIANT3, FULL3)
    assert (c.test, c.n_pairs, c.n_dropped) == (stats.PAIRED, 3, 0)
    assert (c.diff, c.t, c.p) == (pytest.approx(mean, rel=1e-12), pytest.approx(t, rel=1e-9), pytest.approx(p))
    assert (c.low, c.high) == (pytest.approx(mean - q * se), pytest.approx(mean + q * se))
    assert c.diff != pytest.approx(sorted(d)[1])        # the mean of the differences, not their median


def test_paired_p_is_scipys_ttest_rel_and_pairing_changes_the_conclusion_against_welch():
    a, b = list(VARIANT3.values()), list(FULL3.values())
    c = stats.compare(VARIANT3, FULL3)
    assert c.p == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-12) and c.p < 0.05
    assert ttest_ind(a, b, equal_var=False).pvalue > 0.9


def test_pairs_match_by_seed_not_by_position():
    shuffled = {3: 30.9, 1: 10.5, 2: 14.6}
    assert stats.compare(shuffled, FULL3) == stats.compare(VARIANT3, FULL3)


def test_seeds_finished_on_one_side_only_are_dropped_pairwise_and_counted():
    c = stats.compare({1: 10.5, 2: 14.6}, {**FULL3, 4: 12.0})
    assert (c.test, c.n_pairs, c.n_dropped, c.n_variant, c.n_full) == (stats.PAIRED, 2, 2, 2, 4)
    assert c.diff == pytest.approx(0.55)


def test_fewer_than_two_shared_seeds_fall_back_to_welch_or_to_no_test():
    assert stats.compare({1: 10.5, 5: 11.0}, {1: 10.0, 6: 12.0}).test == stats.WELCH
    assert stats.compare({1: 10.5}, FULL3).test == stats.TOO_FEW
    assert stats.compare({}, FULL3) is None


FULL5 = {1: 10.0, 2: 14.0, 3: 30.0, 4: 11.2, 5: 19.9}
VARIANT5 = {1: 10.5, 2: 14.6, 3: 30.9, 4: 12.0, 5: 20.0}


def test_with_five_pairs_the_bootstrap_interval_resamples_pairs_as_scipys_bootstrap_of_the_differences():
    d = np.array([VARIANT5[s] - FULL5[s] for s in FULL5])
    ref = bootstrap((d,), np.mean, confidence_level=0.95, rng=np.random.default_rng(7)).confidence_interval
    c = stats.compare(VARIANT5, FULL5)
    assert (c.boot_low, c.boot_high) == (pytest.approx(ref.low, abs=0.02), pytest.approx(ref.high, abs=0.02))
    assert 0 < c.boot_low < c.diff < c.boot_high < d.max()        # unpaired, it would straddle 0 widely
    assert math.isnan(stats.compare(VARIANT3, FULL3).boot_low)      # 3 pairs: no bootstrap


@pytest.mark.parametrize("variant, share", [
    (VARIANT3, 0.0),                                   # worse on every split
    ({1: 9.0, 2: 14.0, 3: 31.0}, 0.5),                # better on one, tied on one (half), worse on one
    ({1: 9.0, 2: 13.0, 3: 29.0}, 1.0),
])
def test_probability_of_improvement_is_the_share_of_pairs_where_the_variant_errs_less(variant, share):
    assert stats.compare(variant, FULL3).p_better == share


# ---- the interquartile mean over a grid ---------------------------------------------------------
def test_iqm_is_the_mean_of_the_middle_half_of_all_runs_pooled_over_label_counts():
    runs = {50: [40.0, 20.0, 30.0, 90.0], 250: [10.0, 12.0, 11.0, 0.0]}
    pooled = sorted(runs[50] + runs[250])               # 0 10 11 12 | 20 30 40 90: cut 2 each side
    assert stats.iqm(runs)[0] == pytest.approx(sum(pooled[2:6]) / 4)


def test_iqm_bootstrap_resamples_seeds_within_each_label_count():
    """Constant within each label count: every stratified resample has the same IQM, so the
    interval is a point; resampling the pooled runs would mix the label counts and spread it."""
    point, low, high = stats.iqm({50: [30.0] * 4, 250: [10.0] * 4})
    assert point == low == high == 20.0


# ---- the parameter EMA ------------------------------------------------------------------------
def test_ema_moves_towards_the_live_weights_by_one_minus_decay_per_step():
    ema, live = [torch.zeros(3), torch.full((2,), 4.0)], [torch.ones(3), torch.zeros(2)]
    decay = 0.9
    for step in range(1, 4):
        before = [e.clone() for e in ema]
        ema_update(ema, live, decay)
        for e, b, p in zip(ema, before, live):
            assert torch.allclose(e, b + (1 - decay) * (p - b))   # a (1 - decay) step towards live
        assert torch.allclose(ema[0], torch.full((3,), 1 - decay ** step))
    assert torch.equal(live[0], torch.ones(3)) and torch.equal(live[1], torch.zeros(2))   # live untouched
