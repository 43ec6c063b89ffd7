"""Each method's loss against an independent computation of what its official file computes.

Every registered method has one (test_every_registered_method_has_a_loss_test). The random
draws (Beta lambdas, MixMatch's shuffle, VAT's probe) are pinned or replayed; the rest is numpy.

The references here are written from the official files' shapes, in numpy (float64) with
numpy's broadcasting where the official code broadcasts, so a change of meaning in our code
(a mask applied per row instead of the [B] x [B, 1] broadcast, a partner changed, a term
dropped) fails, whatever our own helpers compute.
"""
import numpy as np
import pytest
import torch

from mixmatch_core import methods
from mixmatch_core.config import ConfigError, resolve
from mixmatch_core.methods import METHODS, pseudo_label
from mixmatch_core.views import Unlabeled


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_xent_argmax(logits):
    """sparse_softmax_cross_entropy_with_logits(labels=argmax(logits), logits): shape [B]."""
    logp = np.log(np_softmax(logits))
    return -logp[np.arange(len(logits)), logits.argmax(axis=-1)]


def official_pl(logits, threshold):
    """pseudo_label.py lines 47-61, with their shapes: [B] *= [B, 1] broadcasts to [B, B]."""
    loss_pl = np_xent_argmax(logits)                                              # [B]
    greater = (np_softmax(logits) > threshold).any(axis=-1, keepdims=True)        # [B, 1]
    loss_pl = loss_pl * greater.astype(loss_pl.dtype)                             # [B, B]
    assert loss_pl.shape == (len(logits), len(logits))
    return loss_pl.mean()


def per_row_pl(logits, threshold):
    """What the official comment intends: only confident rows count, averaged over all rows."""
    mask = (np_softmax(logits) > threshold).any(axis=-1)                          # [B]
    return (np_xent_argmax(logits) * mask).mean()


PL_LOGITS = np.array([[10.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 9.0], [1.0, 1.2, 0.0], [0.0, 6.0, 0.5]])


@pytest.mark.parametrize("mode,reference", [("official", official_pl), ("per_row", per_row_pl)])
def test_pseudo_label_loss_matches_numpy_with_the_official_shapes(mode, reference):
    ours = pseudo_label.pseudo_label_loss(torch.tensor(PL_LOGITS), 0.95, mode).item()
    assert ours == pytest.approx(reference(PL_LOGITS, 0.95), rel=1e-4)   # ours runs in float32


def test_the_two_pseudo_label_modes_differ_and_official_is_the_default():
    assert official_pl(PL_LOGITS, 0.95) != pytest.approx(per_row_pl(PL_LOGITS, 0.95), rel=1e-3)
    cfg = resolve({"variant": "pseudo_label"})
    assert cfg.pl_mask == "official" and "pl_mask" in cfg.identity()
    assert resolve({"variant": "pseudo_label", "pl_mask": "per_row"}).cell_key != cfg.cell_key


def test_official_pseudo_label_pulls_unconfident_rows_too():
    """The broadcast gives every row gradient towards its argmax (scaled by the confident
    fraction); per_row gives an unconfident row none."""
    for mode, moves in (("official", True), ("per_row", False)):
        lg = torch.tensor(PL_LOGITS, requires_grad=True)
        pseudo_label.pseudo_label_loss(lg, 0.95, mode).backward()
        assert bool(lg.grad[1].abs().sum() > 0) == moves, mode


def test_a_wrong_pl_mask_is_one_line_naming_the_field_and_values():
    with pytest.raises(ConfigError, match=r"^pl_mask: 'rowwise' is not one of official, per_row$"):
        resolve({"variant": "pseudo_label", "pl_mask": "rowwise"})
    with pytest.raises(ConfigError, match=r"^pl_mask: not a hyperparameter of method 'vat'"):
        resolve({"variant": "vat", "pl_mask": "official"})


# ---- every method's losses on a toy linear model, against numpy --------------------------------------
B, D, C = 6, 4, 3
LAM = np.array([0.9, 0.6, 0.75, 0.5, 0.8, 0.7])           # pinned Beta draws (already folded >= 0.5)


class Linear(torch.nn.Module):
    """logits = x @ W, no state: every pass is the same function (batch norm plays no part)."""

    def __init__(self, w: np.ndarray):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return x.flatten(1) @ self.w


def toy(seed=0, views=2):
    rs = np.random.RandomState(seed)
    return (rs.randn(B, D), rs.randint(0, C, B), [rs.randn(B, D) for _ in range(views)], 3 * rs.randn(D, C))


def np_log_softmax(z):
    return z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))


def soft_xent(logits, targets):
    """softmax_cross_entropy_with_logits_v2, averaged over rows."""
    return float(-(targets * np_log_softmax(logits)).sum(-1).mean())


def sq_err(p, q):
    """reduce_mean((p - q) ** 2) over rows and classes."""
    return float(((p - q) ** 2).mean())


def losses_of(name, x, y, u_views, w, weight=0.7, ema_w=None, **user):
    cfg = resolve({"variant": name, **user})
    mod = methods.load(name)
    t = Unlabeled([torch.tensor(v) for v in u_views[:mod.views(cfg).weak]])
    teacher = Linear(ema_w if ema_w is not None else w)
    loss, lx, lu = mod.losses(cfg, Linear(w), teacher, torch.tensor(x), torch.tensor(y), t, weight)
    return cfg, loss.item(), lx.item(), lu.item()


def pin_lambda(monkeypatch, *draws):
    """The method's Beta draws return these arrays, in call order."""
    it = iter(draws)
    for name in methods.METHODS:      # each method imports sample_lambda by name
        mod = methods.load(name)
        if hasattr(mod, "sample_lambda"):
            monkeypatch.setattr(mod, "sample_lambda", lambda n, alpha, device=None: torch.tensor(next(it)[:n]))


def test_supervised_is_cross_entropy_and_nothing_else():
    x, y, u, w = toy(1)
    _, loss, lx, lu = losses_of("supervised", x, y, u, w)
    want = soft_xent(x @ w, np.eye(C)[y])
    assert (loss, lx, lu) == pytest.approx((want, want, 0.0), rel=1e-5)


def test_fs_mixup_mixes_each_row_with_the_reversed_batch(monkeypatch):
    x, y, u, w = toy(2)
    pin_lambda(monkeypatch, LAM)
    _, loss, lx, _ = losses_of("fs_mixup", x, y, u, w)
    lam = LAM[:, None]
    x_mix, t_mix = lam * x + (1 - lam) * x[::-1], lam * np.eye(C)[y] + (1 - lam) * np.eye(C)[y][::-1]
    assert lx == pytest.approx(soft_xent(x_mix @ w, t_mix), rel=1e-5) and loss == lx


def test_mixup_mixes_labeled_and_guessed_unlabeled_rows_with_the_reversed_batch(monkeypatch):
    x, y, (u, _), w = toy(3)
    lam_u = LAM[::-1].copy()
    pin_lambda(monkeypatch, LAM, lam_u)
    _, loss, lx, lu = losses_of("mixup", x, y, [u], w, weight=1.0)
    a, b = LAM[:, None], lam_u[:, None]
    want_x = soft_xent((a * x + (1 - a) * x[::-1]) @ w, a * np.eye(C)[y] + (1 - a) * np.eye(C)[y][::-1])
    p = np_softmax(u @ w)                                   # the live model's guess, before mixing
    want_u = soft_xent((b * u + (1 - b) * u[::-1]) @ w, b * p + (1 - b) * p[::-1])
    assert (lx, lu, loss) == pytest.approx((want_x, want_u, want_x + want_u), rel=1e-5)


def test_pi_model_targets_its_first_view_with_the_live_model():
    x, y, (u1, u2), w = toy(4)
    _, loss, lx, lu = losses_of("pi_model", x, y, [u1, u2], w)
    want_u = sq_err(np_softmax(u1 @ w), np_softmax(u2 @ w))
    assert (lx, lu, loss) == pytest.approx((soft_xent(x @ w, np.eye(C)[y]), want_u,
                                            soft_xent(x @ w, np.eye(C)[y]) + 0.7 * want_u), rel=1e-5)


def test_mean_teacher_targets_the_first_view_with_the_ema_model():
    x, y, (u1, u2), w = toy(5)
    w_ema = 0.5 * w
    _, loss, lx, lu = losses_of("mean_teacher", x, y, [u1, u2], w, ema_w=w_ema)
    want_u = sq_err(np_softmax(u1 @ w_ema), np_softmax(u2 @ w))
    assert (lu, loss) == pytest.approx((want_u, lx + 0.7 * want_u), rel=1e-5)


def test_ict_mixes_inputs_and_ema_predictions_with_the_reversed_batch(monkeypatch):
    x, y, (u, _), w = toy(6)
    w_ema = -0.3 * w
    pin_lambda(monkeypatch, LAM)
    _, loss, lx, lu = losses_of("ict", x, y, [u], w, ema_w=w_ema)
    lam = LAM[:, None]
    q = np_softmax(u @ w_ema)                                  # teacher on the unmixed batch
    want_u = sq_err(lam * q + (1 - lam) * q[::-1], np_softmax((lam * u + (1 - lam) * u[::-1]) @ w))
    assert (lu, loss) == pytest.approx((want_u, lx + 0.7 * want_u), rel=1e-5)


def test_pseudo_label_losses_use_the_official_broadcast():
    x, y, (u, _), w = toy(7)
    confident = np_softmax(u @ w).max(-1) > 0.95
    assert confident.any() and not confident.all()          # the broadcast and per_row differ here
    _, loss, lx, lu = losses_of("pseudo_label", x, y, [u], w)
    assert (lu, loss) == pytest.approx((official_pl(u @ w, 0.95), lx + 0.7 * official_pl(u @ w, 0.95)), rel=1e-4)


def np_normalize(d):
    """third_party/vat_utils.get_normalized_vector, per row."""
    d = d / (1e-12 + np.abs(d).max(axis=1, keepdims=True))
    return d / np.sqrt(1e-6 + (d ** 2).sum(axis=1, keepdims=True))


def np_kl(a, b):
    """layers.kl_divergence_from_logits(a, b) = KL(softmax a || softmax b) per row."""
    la, lb = np_log_softmax(a), np_log_softmax(b)
    return (np.exp(la) * (la - lb)).sum(-1)


@pytest.mark.parametrize("weight", [0.7, 0.0])
def test_vat_follows_one_power_iteration_and_adds_unramped_entropy(weight):
    """vat_utils: d = xi normalize(N(0,1)); g = grad_d mean KL(p(u) || p(u + d));
    r = eps normalize(g); L = xent + w KL(p(u + r) || p(u)) + entmin_weight H(p(u)).
    For logits = x W the gradient is (softmax((u + d) W) - p(u)) W^T / B, in closed form."""
    x, y, (u, _), w = toy(8)
    torch.manual_seed(11)
    probe = torch.randn(B, D, dtype=torch.float64).numpy()      # the draw vat.losses makes
    torch.manual_seed(11)
    cfg, loss, lx, lu = losses_of("vat", x, y, [u], w, weight=weight)
    p_logits = u @ w
    d = cfg.vat_xi * np_normalize(probe)
    grad = (np_softmax((u + d) @ w) - np_softmax(p_logits)) @ w.T / B
    r = cfg.vat_eps * np_normalize(grad)
    want_u = float(np_kl((u + r) @ w, p_logits).mean())        # student first, teacher second
    p = np_softmax(p_logits)
    entropy = float(-(p * np.log(p)).sum(-1).mean())
    assert (lu, loss) == pytest.approx((want_u, lx + weight * want_u + cfg.entmin_weight * entropy), rel=1e-5)


def test_mixmatch_mixes_every_row_with_its_shuffled_partner_after_one_guess(monkeypatch):
    """mixmatch.py: q = Sharpen(mean_k p(u_k), T) for every view; W = concat(X, U_1, U_2) mixed
    row by row with W[perm] (lambda folded per row), inputs and targets alike; L_x = xent on the
    first B rows, L_u = squared error on the rest."""
    x, y, (u1, u2), w = toy(9)
    n = 3 * B
    lam = 0.5 + 0.5 * np.random.RandomState(1).rand(n)
    perm = np.random.RandomState(2).permutation(n)
    pin_lambda(monkeypatch, lam)
    monkeypatch.setattr(torch, "randperm", lambda k, device=None, **kw: torch.tensor(perm[:k]))
    cfg, loss, lx, lu = losses_of("mixmatch", x, y, [u1, u2], w)
    q = (np_softmax(u1 @ w) + np_softmax(u2 @ w)) / 2
    q = q ** (1 / cfg.T) / (q ** (1 / cfg.T)).sum(-1, keepdims=True)
    rows, targets = np.concatenate([x, u1, u2]), np.concatenate([np.eye(C)[y], q, q])
    a = lam[:, None]
    mixed, mixed_t = a * rows + (1 - a) * rows[perm], a * targets + (1 - a) * targets[perm]
    want_x = soft_xent(mixed[:B] @ w, mixed_t[:B])
    want_u = sq_err(mixed_t[B:], np_softmax(mixed[B:] @ w))
    assert (lx, lu, loss) == pytest.approx((want_x, want_u, want_x + 0.7 * want_u), rel=1e-5)


def test_every_registered_method_has_a_loss_test():
    tested = {"supervised", "fs_mixup", "mixup", "pi_model", "mean_teacher", "ict", "pseudo_label", "vat",
              "mixmatch", "fixmatch", "remixmatch"}   # fixmatch, remixmatch: tests/test_<name>.py
    assert tested == set(METHODS)
