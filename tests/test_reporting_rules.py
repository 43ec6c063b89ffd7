"""The pieces every method shares: the reporting rule, Welch's test between rows, the EMA.

Each against an independent computation: the median written out by hand, Welch's t-test with
the Welch-Satterthwaite degrees of freedom and the t distribution's tail from mpmath's
regularized incomplete beta (not scipy, which the product uses), the EMA step written as
ema + (1 - decay) (live - ema).
"""
import math

import mpmath
import pytest
import torch

from mixmatch_core.run_report import final_metrics, report_errors
from mixmatch_core.train import ema_update
from sweeps.table import _welch


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
