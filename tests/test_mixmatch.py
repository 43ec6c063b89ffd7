"""Specification of MixMatch's pure functions (methods/mixmatch.py, Algorithm 1) and the shared
ops it uses (methods/common.py)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixmatch_core.methods.common import frozen_bn_stats, mixup_pairs, sample_lambda
from mixmatch_core.methods.common import soft_xent as loss_x
from mixmatch_core.methods.common import squared_prob_error as loss_u
from mixmatch_core.methods.mixmatch import (
    forward_interleaved, guess_labels, interleave, interleave_offsets, mixup, rampup, sharpen)

C = 5  # classes of the toy model


def toy_model(seed: int = 0) -> nn.Module:
    """Conv + BN + linear on [B, 3, 4, 4] images; BN momentum 0.5 so stat changes are visible."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.5),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, C)).train()


def bn_state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()
            if "running" in k or "num_batches" in k}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, 4, generator=g)


# --- sharpen (Eq. 7) -----------------------------------------------------------------------

def test_sharpen_matches_hand_computed_value():
    # [0.6, 0.4]^2 = [0.36, 0.16], normalised by 0.52 -> [9/13, 4/13]
    out = sharpen(torch.tensor([[0.6, 0.4]]), T=0.5)
    torch.testing.assert_close(out, torch.tensor([[9 / 13, 4 / 13]]))


def test_sharpen_with_T_1_is_identity():
    p = torch.softmax(torch.randn(4, C), dim=-1)
    torch.testing.assert_close(sharpen(p, 1.0), p)


@pytest.mark.parametrize("T", [0.25, 0.5, 1.0, 2.0])
def test_sharpen_rows_sum_to_one(T):
    p = torch.softmax(torch.randn(6, C), dim=-1)
    torch.testing.assert_close(sharpen(p, T).sum(-1), torch.ones(6))


def test_lower_temperature_gives_higher_max_probability():
    p = torch.softmax(torch.randn(6, C), dim=-1)
    maxes = [sharpen(p, T).max(-1).values for T in (1.0, 0.5, 0.25)]
    assert torch.all(maxes[1] > maxes[0]) and torch.all(maxes[2] > maxes[1])


# --- frozen_bn_stats / guess_labels (Algorithm 1 lines 7-8) --------------------------------

def test_frozen_bn_stats_restores_running_stats_and_counter():
    model = toy_model()
    model(images(8, 1))  # non-trivial stats first
    before = bn_state(model)
    with frozen_bn_stats(model):
        model(images(8, 2))
        assert not torch.equal(model[1].running_mean, before["1.running_mean"])  # it did move
    assert_same_state(bn_state(model), before)


def test_frozen_bn_stats_keeps_backward_working():
    model = toy_model()
    with frozen_bn_stats(model):
        out = model(images(8, 1))
    out.square().mean().backward()
    assert model[0].weight.grad is not None


class LogitsAreInputs(nn.Module):
    """A 'model' whose logits are its inputs, so its softmax is under the test's control."""

    def forward(self, x):
        return x


def test_guess_labels_averages_softmax_over_views_then_sharpens():
    # view 1 -> p = [0.8, 0.2], view 2 -> p = [0.4, 0.6]; mean [0.6, 0.4]; T=0.5 -> [9/13, 4/13]
    views = [torch.tensor([[0.8, 0.2]]).log(), torch.tensor([[0.4, 0.6]]).log()]
    q = guess_labels(LogitsAreInputs(), views, T=0.5)
    torch.testing.assert_close(q, torch.tensor([[9 / 13, 4 / 13]]))


def test_guess_labels_with_T_1_is_the_plain_average():
    views = [torch.tensor([[0.8, 0.2]]).log(), torch.tensor([[0.4, 0.6]]).log()]
    torch.testing.assert_close(guess_labels(LogitsAreInputs(), views, T=1.0),
                               torch.tensor([[0.6, 0.4]]))


def test_guess_labels_returns_fp32_distributions_without_grad():
    model = toy_model()
    q = guess_labels(model, [images(8, 1), images(8, 2)], T=0.5)
    assert q.shape == (8, C) and q.dtype == torch.float32
    assert not q.requires_grad and q.grad_fn is None
    torch.testing.assert_close(q.sum(-1), torch.ones(8))


def test_guess_labels_uses_batch_stats_and_leaves_bn_running_stats_unchanged():
    model = toy_model()
    model(images(8, 0))
    before = bn_state(model)
    views = [images(8, 1), images(8, 2)]
    q = guess_labels(model, views, T=0.5)
    assert model.training
    assert_same_state(bn_state(model), before)
    # training-mode (batch-statistics) forward of each view, done by hand
    with torch.no_grad():
        p = torch.stack([torch.softmax(model(v), -1) for v in views]).mean(0)
    torch.testing.assert_close(q, sharpen(p, 0.5))


def test_guess_labels_under_bf16_autocast_returns_fp32():
    model = toy_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = guess_labels(model, [images(8, 1), images(8, 2)], T=0.5)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q.sum(-1), torch.ones(8))


# --- mixup (Algorithm 1 lines 10-14, Eq. 8-11) ---------------------------------------------

def test_mixup_pairs_matches_hand_computed_mix():
    x = torch.tensor([[1.0], [3.0], [5.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    perm, lam = torch.tensor([1, 0, 2]), torch.tensor([0.75, 0.5, 0.9])
    xm, tm = mixup_pairs(x, t, perm, lam)
    torch.testing.assert_close(xm, torch.tensor([[1.5], [2.0], [5.0]]))
    torch.testing.assert_close(tm, torch.tensor([[0.75, 0.25], [0.5, 0.5], [0.5, 0.5]]))


def test_sample_lambda_is_per_sample_and_at_least_one_half():
    torch.manual_seed(0)
    lam = sample_lambda(1000, 0.75)
    assert lam.shape == (1000,) and lam.dtype == torch.float32
    assert torch.all(lam >= 0.5) and torch.all(lam <= 1.0)
    assert lam.std() > 0.05  # one lambda per sample, not one per batch


def test_sample_lambda_with_alpha_0_is_one():
    assert torch.equal(sample_lambda(7, 0.0), torch.ones(7))


def basis_batch(n: int):
    """Row i of x (4-D, as images) and of the targets is the one-hot e_i, so every mixed row
    reveals its own weight (entry i) and its partner (the other non-zero entry)."""
    eye = torch.eye(n)
    return eye.view(n, 1, 1, n).clone(), eye.clone()


def partners(t_mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lambda', partner) per row from basis targets; a row left unmixed is its own partner."""
    n = t_mix.shape[0]
    lam = t_mix.diagonal().clone()
    off = t_mix - torch.diag(lam)
    partner = torch.where(off.max(-1).values > 0, off.argmax(-1), torch.arange(n))
    return lam, partner


def test_mixup_mixes_inputs_and_targets_alike():
    torch.manual_seed(0)
    x, t = basis_batch(12)
    xm, tm = mixup(x, t, n_labeled=4, alpha=0.75, mode="all")
    # same lambda and same partner for input and target <=> identical rows
    torch.testing.assert_close(xm.flatten(1), tm)


def test_mixup_lambda_per_row_is_at_least_one_half_and_varies():
    torch.manual_seed(0)
    x, t = basis_batch(48)
    _, tm = mixup(x, t, n_labeled=16, alpha=0.75, mode="all")
    lam, partner = partners(tm)
    mixed = partner != torch.arange(48)
    assert torch.all(lam >= 0.5)
    assert lam[mixed].std() > 0.05  # per-sample lambda


def test_mixup_is_reproducible_from_the_global_torch_seed():
    x, t = basis_batch(12)
    torch.manual_seed(3)
    a = mixup(x, t, 4, 0.75)
    torch.manual_seed(3)
    b = mixup(x, t, 4, 0.75)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _partner_maps(n: int, draws: int, seed: int = 0) -> torch.Tensor:
    """[draws, n]: the partner of every row in `draws` independent mixup calls (mode 'all')."""
    torch.manual_seed(seed)
    x, t = basis_batch(n)
    return torch.stack([partners(mixup(x, t, n_labeled=2, alpha=0.75, mode="all")[1])[1]
                        for _ in range(draws)])


def test_mixup_partner_is_a_fresh_uniform_permutation_not_a_roll_or_reversal():
    # Official MixMode: tf.random_shuffle of the batch, i.e. a uniformly random permutation per
    # step. A fixed roll or reversal gives every row the same partner at every step; a random
    # roll gives every (row, partner) pair but a constant offset partner[i] - i within a draw.
    n, draws = 6, 400
    maps = _partner_maps(n, draws)
    assert all(sorted(m.tolist()) == list(range(n)) for m in maps)   # each draw is a permutation
    pairs = torch.zeros(n, n)
    for m in maps:
        pairs[torch.arange(n), m] += 1
    assert (pairs > 0).all(), pairs      # every row meets every partner (itself included) ...
    assert pairs.min() > draws / n / 3   # ... about equally often (expected 400/6 = 67 each)
    offsets = (maps - torch.arange(n)) % n
    constant = (offsets == offsets[:, :1]).all(dim=1)
    assert constant.float().mean() < 0.05   # a uniform permutation is a roll with p = 6/720


def folded_beta_cdf(alpha: float):
    """CDF of lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha), on [0.5, 1]:
    P(lambda' <= x) = P(1 - x <= lambda <= x) = 2 F(x) - 1 (Beta(a, a) is symmetric)."""
    from scipy.stats import beta
    return lambda x: 2.0 * beta.cdf(x, alpha, alpha) - 1.0


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])   # SVHN+extra, fs_mixup, the default
def test_sample_lambda_follows_the_folded_beta_distribution(alpha):
    # Kolmogorov-Smirnov on 20,000 draws: Uniform(0.5, 1) (a common shortcut) or an unfolded
    # Beta is rejected with p < 1e-10 at this n; the right distribution passes at 1e-3.
    from scipy.stats import kstest
    torch.manual_seed(0)
    lam = sample_lambda(20_000, alpha).double().numpy()
    assert kstest(lam, folded_beta_cdf(alpha)).pvalue > 1e-3
    assert kstest(lam, "uniform", args=(0.5, 0.5)).pvalue < 1e-6   # the test has power


def test_mixup_mixes_with_folded_beta_weights():
    # The weights mixup actually applies (read back from basis targets), not just the sampler.
    from scipy.stats import kstest
    torch.manual_seed(0)
    x, t = basis_batch(100)
    lam = torch.cat([partners(mixup(x, t, 40, 0.75, "all")[1])[0] for _ in range(100)])
    # a row drawn as its own partner reads back lambda' = 1 (about 1 in 100 rows): leave those out
    lam = lam[lam < 1.0].double().numpy()
    assert kstest(lam, folded_beta_cdf(0.75)).pvalue > 1e-3


N, NL = 12, 4  # 4 labeled rows, then K=2 views of 4 unlabeled rows
LAB, UNL = torch.arange(N) < NL, torch.arange(N) >= NL


@pytest.mark.parametrize("mode, mixed_rows, partner_pool", [
    ("all", torch.ones(N, dtype=torch.bool), None),  # partner from the whole concatenation
    ("labeled", LAB, LAB),
    ("unlabeled", UNL, UNL),
    ("separate", torch.ones(N, dtype=torch.bool), "own block"),
])
def test_mixup_mode_touches_only_its_rows_and_draws_partners_from_its_block(
        mode, mixed_rows, partner_pool):
    torch.manual_seed(1)
    x, t = basis_batch(N)
    xm, tm = mixup(x, t, NL, 0.75, mode)
    lam, partner = partners(tm)
    # rows outside the mode are bit-identical to the input
    assert torch.equal(xm[~mixed_rows], x[~mixed_rows])
    assert torch.equal(tm[~mixed_rows], t[~mixed_rows])
    # rows inside the mode are actually mixed (for this seed, with 12 rows)
    assert (partner[mixed_rows] != torch.arange(N)[mixed_rows]).any()
    if partner_pool == "own block":
        assert torch.equal(LAB[partner], LAB)  # labeled with labeled, unlabeled with unlabeled
    elif partner_pool is not None:
        assert partner_pool[partner[mixed_rows]].all()
    torch.testing.assert_close(xm.flatten(1), tm)


def test_mixup_all_mixes_across_labeled_and_unlabeled():
    torch.manual_seed(1)
    x, t = basis_batch(N)
    _, partner = partners(mixup(x, t, NL, 0.75, "all")[1])
    assert (LAB != LAB[partner]).any()


def test_mixup_none_is_identity():
    x, t = basis_batch(N)
    xm, tm = mixup(x, t, NL, 0.75, "none")
    assert torch.equal(xm, x) and torch.equal(tm, t)


@pytest.mark.parametrize("mode", ["all", "none", "labeled", "unlabeled", "separate"])
def test_mixup_with_alpha_0_is_identity(mode):
    x, t = basis_batch(N)
    xm, tm = mixup(x, t, NL, 0.0, mode)
    assert torch.equal(xm, x) and torch.equal(tm, t)


def test_mixup_rejects_unknown_mode():
    x, t = basis_batch(N)
    with pytest.raises(ValueError):
        mixup(x, t, NL, 0.75, "xx.yx")


# --- interleave (official libml/layers.py) -------------------------------------------------

@pytest.mark.parametrize("nu", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 2, 6, 7, 8, 64])
def test_interleave_twice_is_identity(nu, batch):
    chunks = [torch.randn(batch, 2) for _ in range(nu + 1)]
    back = interleave(interleave(chunks, batch), batch)
    for a, b in zip(back, chunks):
        assert torch.equal(a, b)


@pytest.mark.parametrize("batch, nu, offsets", [
    (6, 2, [0, 2, 4, 6]), (7, 2, [0, 2, 4, 7]), (8, 2, [0, 2, 5, 8]), (64, 2, [0, 21, 42, 64])])
def test_interleave_offsets_put_extra_rows_on_last_groups(batch, nu, offsets):
    assert interleave_offsets(batch, nu) == offsets


@pytest.mark.parametrize("batch, expected", [
    (6, [[0, 1, 12, 13, 24, 25], [10, 11, 2, 3, 14, 15], [20, 21, 22, 23, 4, 5]]),
    (7, [[0, 1, 12, 13, 24, 25, 26], [10, 11, 2, 3, 14, 15, 16], [20, 21, 22, 23, 4, 5, 6]]),
])
def test_interleave_gives_chunk_0_a_slice_of_every_chunk(batch, expected):
    chunks = [torch.arange(batch) + 10 * i for i in range(3)]
    assert [c.tolist() for c in interleave(chunks, batch)] == expected


# --- losses (Eq. 3, 4) ---------------------------------------------------------------------

def test_loss_x_matches_hand_computed_soft_cross_entropy():
    # softmax([0, ln 3]) = [1/4, 3/4]; target [1/2, 1/2] -> -(ln(1/4) + ln(3/4)) / 2
    logits = torch.tensor([[0.0, math.log(3.0)]])
    expected = -(math.log(0.25) + math.log(0.75)) / 2
    torch.testing.assert_close(loss_x(logits, torch.tensor([[0.5, 0.5]])),
                               torch.tensor(expected))


def test_loss_x_equals_cross_entropy_for_one_hot_targets():
    logits, labels = torch.randn(6, C), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(loss_x(logits, F.one_hot(labels, C).float()),
                               F.cross_entropy(logits, labels))


def test_loss_u_matches_hand_computed_value():
    # row 1: p = [1/4, 3/4] vs [1, 0] -> 0.5625 + 0.5625; row 2: p = [1/2, 1/2] vs same -> 0
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    torch.testing.assert_close(loss_u(logits, targets), torch.tensor(2 * 0.5625 / 4))


def test_loss_u_equals_mse_of_softmax_with_mean_over_rows_and_classes():
    logits, targets = torch.randn(6, C), torch.softmax(torch.randn(6, C), -1)
    torch.testing.assert_close(loss_u(logits, targets),
                               F.mse_loss(torch.softmax(logits, -1), targets))


def test_losses_are_fp32_for_bf16_logits():
    logits, targets = torch.randn(6, C).bfloat16(), torch.softmax(torch.randn(6, C), -1)
    assert loss_x(logits, targets).dtype == torch.float32
    assert loss_u(logits, targets).dtype == torch.float32


# --- rampup --------------------------------------------------------------------------------

@pytest.mark.parametrize("step, steps, expected", [
    (0, 16384, 0.0), (8192, 16384, 0.5), (16384, 16384, 1.0), (10**6, 16384, 1.0),
    (0, 0, 1.0), (5, 0, 1.0)])
def test_rampup_is_linear_from_0_to_1_then_flat(step, steps, expected):
    assert rampup(step, steps) == expected


# --- forward_interleaved -------------------------------------------------------------------

def test_forward_interleaved_updates_bn_stats_like_one_forward_of_interleaved_chunk_0():
    model, ref = toy_model(), toy_model()
    batches = [images(6, i) for i in range(3)]
    forward_interleaved(model, batches, 6, "interleave")
    ref(interleave(batches, 6)[0])  # the one pass that may touch running stats
    assert_same_state(bn_state(model), bn_state(ref))


def test_forward_interleaved_returns_logits_of_the_chunks_run_by_hand():
    model, ref = toy_model(), toy_model()
    batches = [images(7, i) for i in range(3)]  # 7 rows: uneven interleave groups
    out = forward_interleaved(model, batches, 7, "interleave")
    by_hand = interleave([ref(b) for b in interleave(batches, 7)], 7)
    for a, b in zip(out, by_hand):
        torch.testing.assert_close(a, b)


def test_forward_interleaved_gradients_equal_those_of_plain_training_forwards():
    # restoring the BN buffers must not change what backward computes
    model, ref = toy_model(), toy_model()
    batches = [images(6, i) for i in range(3)]
    forward_interleaved(model, batches, 6, "interleave")[1].square().sum().backward()
    interleave([ref(b) for b in interleave(batches, 6)], 6)[1].square().sum().backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_forward_interleaved_rows_stay_aligned_with_inputs():
    # in eval mode each row's logits depend on that row only, so alignment is visible
    model = toy_model().eval()
    batches = [images(6, i) for i in range(3)]
    out = forward_interleaved(model, batches, 6, "interleave")
    for a, b in zip(out, batches):
        torch.testing.assert_close(a, model(b))


def test_forward_interleaved_fused_is_one_forward_of_the_concatenation():
    model, ref = toy_model(), toy_model()
    batches = [images(6, i) for i in range(3)]
    out = forward_interleaved(model, batches, 6, "fused")
    whole = ref(torch.cat(batches))
    torch.testing.assert_close(torch.cat(out), whole)
    assert [o.shape[0] for o in out] == [6, 6, 6]
    assert_same_state(bn_state(model), bn_state(ref))


@pytest.mark.parametrize("bn_mode", ["interleave", "fused"])
def test_forward_interleaved_backpropagates_under_bf16_autocast(bn_mode):
    model = toy_model()
    batches = [images(6, i) for i in range(3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = forward_interleaved(model, batches, 6, bn_mode)
        loss = loss_x(out[0], torch.full((6, C), 1 / C)) + loss_u(torch.cat(out[1:]),
                                                                  torch.full((12, C), 1 / C))
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(model[0].weight.grad).all()


def test_forward_interleaved_rejects_unknown_bn_mode():
    with pytest.raises(ValueError):
        forward_interleaved(toy_model(), [images(6, 0)] * 3, 6, "per_chunk")
