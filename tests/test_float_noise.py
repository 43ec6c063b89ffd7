"""What a user reads carries no binary-float tails: the error is computed from counts
(100 x wrong / n, one rounding) and every metric is logged as `tracking.shown` rounds it."""

from fractions import Fraction

import pytest
import torch

from mixmatch_core.tracking import shown
from mixmatch_core.train import error_pct


def confusion(n: int, wrong: int) -> torch.Tensor:
    """A 2-class confusion matrix of n examples, `wrong` of them off the diagonal."""
    return torch.tensor([[n - wrong, wrong], [0, 0]], dtype=torch.long)


@pytest.mark.parametrize("n", [1000, 10000, 26032])    # digits-sized, CIFAR-10's and SVHN's test sets
def test_error_pct_is_100_wrong_over_n_rounded_once(n):
    for wrong in range(0, n + 1, 97):
        assert error_pct(confusion(n, wrong)) == float(Fraction(100 * wrong, n))   # the nearest float


def test_error_pct_prints_as_the_decimal_it_is():
    assert repr(error_pct(confusion(1000, 44))) == "4.4"      # 100 x (1 - 956/1000) was 4.400000000000004
    assert repr(error_pct(confusion(10000, 9015))) == "90.15"


@pytest.mark.parametrize("value, text", [
    (4.400000000000004, "4.4"), (90.14999999999999, "90.15"),
    (0.1 + 0.2, "0.3"), (1.2345678901234e-07, "1.23456789012e-07"), (float("nan"), "nan"), (float("inf"), "inf")])
def test_logged_metrics_keep_twelve_significant_digits(value, text):
    assert repr(shown(value)) == text


def test_a_run_logs_its_metrics_as_shown_rounds_them():
    from mixmatch_core.config import resolve
    from mixmatch_core.tracking import RunTracker
    tracker = RunTracker(resolve({"dataset": "digits"}))      # nothing is sent before flush
    tracker.log_metrics({"error": (4.4 + 4.7) / 2, "test_error": 100 * (1 - 956 / 1000)}, 10)
    assert [(k, repr(v)) for k, v, *_ in tracker.pending] == [("error", "4.55"), ("test_error", "4.4")]
