"""FixMatch against what the official fixmatch.py and its ablation/ab_fixmatch_*.py files compute.

Each expected value is computed here independently (numpy with the official shapes: a labeled
batch of B rows, uratio * B unlabeled rows per view; TF's float32 lr formula; a numpy loop of
TF's ApplyMomentum), and the official flags are written out as literals, each naming its file
and line (CI has no copy of the official code). Toy models stand in for the WRN.
"""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from mixmatch_core.config import VARIANTS, resolve
from mixmatch_core.methods import METHODS, fixmatch
from mixmatch_core.optim import build_optimizer, lr_at, update_rule
from mixmatch_core.train import decay_params, optimizer_update
from mixmatch_core.views import Unlabeled, Views

B, URATIO, C = 4, 7, 10            # fixmatch.py: xt [batch], y [batch * uratio, 2] (weak, strong)
N = B * URATIO


# ---- the official computation in numpy ---------------------------------------------------------------
def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def official_loss_xeu(logits_weak, logits_strong, confidence, T=1.0, soft=False) -> float:
    """fixmatch.py lines 113-118 (T: ab_fixmatch_sharpen.py line 54; soft:
    ab_fixmatch_sharpen_conditional_consistency.py lines 54-59)."""
    p = np.exp(log_softmax(logits_weak / T))
    logp_strong = log_softmax(logits_strong)
    if soft:
        mask = np.exp(log_softmax(logits_weak)).max(axis=1) >= confidence
        xe = -(p * logp_strong).sum(axis=1)
    else:
        mask = p.max(axis=1) >= confidence
        xe = -logp_strong[np.arange(len(p)), p.argmax(axis=1)]
    return float(np.mean(xe * mask.astype(np.float32)))        # reduce_mean over ALL rows


def official_loss_xe(logits_x, labels) -> float:
    return float(np.mean(-log_softmax(logits_x)[np.arange(len(labels)), labels]))


class Identity(nn.Module):
    """logits = the input rows (so a test writes the logits it wants); keeps each pass's output."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.outputs = []

    def forward(self, x):
        self.outputs.append(x * self.scale)
        return self.outputs[-1]


def batch(seed=0, n_weak=1, n_strong=1):
    """Labeled logits [B, C] with labels, and unlabeled views [N, C] (scaled so that some rows pass
    0.95 and some not). Row 0 of the first weak view is a tie at exactly p = 0.5 (two equal logits,
    the rest too small to count even in float64): the `>=` edge at confidence 0.5."""
    g = torch.Generator().manual_seed(seed)
    x, y = 4 * torch.randn(B, C, generator=g), torch.randint(0, C, (B,), generator=g)
    weak = [6 * torch.randn(N, C, generator=g) for _ in range(n_weak)]
    strong = [6 * torch.randn(N, C, generator=g) for _ in range(n_strong)]
    if weak:
        weak[0][0] = torch.tensor([3.0, 3.0] + [-1e4] * (C - 2))
    return x, y, Unlabeled(weak, strong)


def fixmatch_cfg(**kw):
    return resolve({"variant": "fixmatch", **kw})


# ---- the loss --------------------------------------------------------------------------------------
@pytest.mark.parametrize("confidence,wu", [(0.95, 1.0), (0.5, 0.3)])
def test_loss_is_labeled_xent_plus_wu_times_the_masked_mean_over_all_unlabeled_rows(confidence, wu):
    cfg = fixmatch_cfg(confidence=confidence, wu=wu)
    x, y, u = batch()
    weak, strong = u.weak[0].numpy(), u.strong[0].numpy()
    mask = np.exp(log_softmax(weak)).max(axis=1) >= confidence
    assert 0 < mask.mean() < 1 and mask[0] == (confidence == 0.5)     # the tie row counts at 0.5
    w = fixmatch.unlabeled_weight(cfg, 0)
    loss, lx, lu = fixmatch.losses(cfg, Identity(), Identity(), x, y, u, w)
    want_x, want_u = official_loss_xe(x.numpy(), y.numpy()), official_loss_xeu(weak, strong, confidence)
    assert (lx.item(), lu.item(), loss.item()) == pytest.approx((want_x, want_u, want_x + wu * want_u), rel=1e-5)


@pytest.mark.parametrize("T,soft", [(0.5, False), (0.5, True), (1.0, True)])
def test_sharpened_and_soft_pseudo_labels_are_those_of_the_ablation_files(T, soft):
    cfg = fixmatch_cfg(T=T, pseudo_target="soft" if soft else "hard", confidence=0.8)
    x, y, u = batch(seed=1)
    _, _, lu = fixmatch.losses(cfg, Identity(), Identity(), x, y, u, 1.0)
    assert lu.item() == pytest.approx(official_loss_xeu(u.weak[0].numpy(), u.strong[0].numpy(), 0.8, T, soft),
                                      rel=1e-5)


@pytest.mark.parametrize("anchoring", ["weak.strong", "weak.weak", "strong.strong", "strong.weak"])
def test_anchoring_takes_the_pseudo_label_from_the_first_named_view(anchoring):
    # ab_fixmatch_anchoring.py lines 40-41: view 0 is weak or strong per the flag's first word,
    # view 1 per its second; views of one kind are augmented independently.
    kinds = anchoring.split(".")
    cfg = fixmatch_cfg(anchoring=anchoring)
    assert fixmatch.views(cfg) == Views(weak=kinds.count("weak"), strong=kinds.count("strong"), uratio=7,
                                        probe=True)
    x, y, u = batch(seed=2, n_weak=kinds.count("weak"), n_strong=kinds.count("strong"))
    pool = {"weak": [v.numpy() for v in u.weak], "strong": [v.numpy() for v in u.strong]}
    anchor, learner = pool[kinds[0]].pop(0), pool[kinds[1]].pop(0)
    _, _, lu = fixmatch.losses(cfg, Identity(), Identity(), x, y, u, 1.0)
    assert lu.item() == pytest.approx(official_loss_xeu(anchor, learner, 0.95), rel=1e-5)


# ---- gradient flow ---------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["hard", "soft"])
def test_the_pseudo_label_sends_no_gradient_into_the_weak_rows(target):
    # fixmatch.py line 113: pseudo_labels = tf.stop_gradient(softmax(logits_weak)). The one pass
    # returns [labeled, weak, strong] rows; L_u may reach the strong rows only.
    cfg = fixmatch_cfg(pseudo_target=target, confidence=0.5)
    x, y, u = batch(seed=3)
    model = Identity()
    _, lx, lu = fixmatch.losses(cfg, model, Identity(), x, y, u, 1.0)
    (out,) = model.outputs
    g_u, = torch.autograd.grad(lu, out, retain_graph=True)
    g_x, = torch.autograd.grad(lx, out)
    rows_x, rows_weak, rows_strong = g_u.split([B, N, N])
    assert rows_x.abs().sum() == 0 and rows_weak.abs().sum() == 0 and rows_strong.abs().sum() > 0
    assert g_x[B:].abs().sum() == 0 and g_x[:B].abs().sum() > 0


# ---- one training pass, its batch-norm statistics ---------------------------------------------------
def bn_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.1), nn.Flatten(), nn.Linear(4 * 2 * 2, C))


def images(seed, n):
    return torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def test_labeled_weak_and_strong_rows_share_one_pass_and_one_bn_update():
    # fixmatch.py lines 98-102: interleave + para_cat on one GPU = one training-mode pass over the
    # concatenation; post_ops = its UPDATE_OPS, run once.
    model = bn_model()
    reference = copy.deepcopy(model)
    x, y = images(1, B), torch.randint(0, C, (B,))
    u = Unlabeled([images(2, N)], [images(3, N)])
    _, lx, lu = fixmatch.losses(fixmatch_cfg(confidence=0.0), model, bn_model(1), x, y, u, 1.0)
    logits = reference(torch.cat([x, u.weak[0], u.strong[0]])).detach().numpy()
    bn, ref_bn = model[1], reference[1]
    assert int(bn.num_batches_tracked) == 1
    assert torch.allclose(bn.running_mean, ref_bn.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, ref_bn.running_var, atol=1e-6)
    assert lx.item() == pytest.approx(official_loss_xe(logits[:B], y.numpy()), rel=1e-5)
    assert lu.item() == pytest.approx(official_loss_xeu(logits[B:B + N], logits[B + N:], 0.0), rel=1e-5)


@pytest.mark.parametrize("teacher", ["ema", "ema_train"])
def test_the_mean_teacher_ablations_label_with_the_ema_model_before_the_step(teacher):
    # ab_fixmatch_meanteacher.py line 59 (training=False: EMA weights, the live model's BN
    # running statistics as the EMA getter reads them); _train.py line 59 (training=True: batch
    # statistics; its BN updates are not in post_ops). Both read the state before this step.
    model, ema = bn_model(0), bn_model(1)
    with torch.no_grad():
        model(images(9, 16))          # live running statistics away from their initial values
    live_before, ema_stats_before = copy.deepcopy(model), copy.deepcopy(ema[1].state_dict())
    x, y = images(1, B), torch.randint(0, C, (B,))
    u = Unlabeled([images(2, N)], [images(3, N)])
    _, _, lu = fixmatch.losses(fixmatch_cfg(teacher=teacher, confidence=0.0), model, ema, x, y, u, 1.0)
    teacher_ref = copy.deepcopy(ema)
    if teacher == "ema":
        teacher_ref[1].load_state_dict(live_before[1].state_dict())
        teacher_ref.eval()
    else:
        assert all(torch.equal(v, ema_stats_before[k]) for k, v in ema[1].state_dict().items())
    with torch.no_grad():
        logits_teacher = teacher_ref(u.weak[0]).numpy()
        logits_strong = live_before(torch.cat([x, u.weak[0], u.strong[0]]))[B + N:].numpy()
    assert lu.item() == pytest.approx(official_loss_xeu(logits_teacher, logits_strong, 0.0), rel=1e-5)
    assert ema.training


# ---- the optimiser: lr schedule, coupled weight decay, TF Momentum ------------------------------------
def official_lr(cfg, step: int) -> float:
    """fixmatch.py lines 92-93 (linear: ab_fixmatch_linearlr.py line 35) in float32, as TF builds
    them; self.step counts images (step * batch), train_kimg << 10 is the run's images."""
    f32 = np.float32
    t = np.clip(f32(step * cfg.batch_size) / f32(cfg.steps * cfg.batch_size), f32(0), f32(1))
    if cfg.lr_schedule == "linear":
        return float(f32(cfg.lr) + (f32(cfg.lr_end) - f32(cfg.lr)) * t)
    return float(f32(cfg.lr) * np.cos(t * f32(7 * np.pi) / f32(2 * 8)))


@pytest.mark.parametrize("variant", ["fixmatch", "fixmatch_linearlr"])
def test_lr_at_the_start_middle_and_end_is_the_official_float32_formula(variant):
    cfg = resolve({"variant": variant})
    T = cfg.steps
    got = [lr_at(cfg, s) for s in (0, T // 2, T)]
    assert got == [official_lr(cfg, s) for s in (0, T // 2, T)]
    end = 0.03 * math.cos(7 * math.pi / 16) if variant == "fixmatch" else 0.02
    assert got[0] == pytest.approx(0.03, rel=1e-7) and got[2] == pytest.approx(end, rel=1e-6)


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def net_loss(net):
    inputs = torch.linspace(-1, 1, 12).reshape(4, 3)
    return (net(inputs) - 0.3).square().sum()


@pytest.mark.parametrize("nesterov", [True, False])
def test_two_steps_are_tf_momentum_on_the_loss_plus_wd_times_l2_loss_of_the_kernels(nesterov):
    # fixmatch.py lines 122, 130-131: loss_wd = sum(l2_loss(kernels)) (biases excluded: 'kernel'
    # in the name), MomentumOptimizer(lr, 0.9, use_nesterov).minimize(loss + wd * loss_wd);
    # ab_fixmatch_momentum.py line 74 with its flag nesterov. TF ApplyMomentum, numpy float32:
    #   accum = accum * m + g;  var -= g * lr + accum * m * lr  (nesterov)  |  accum * lr
    cfg = resolve({"variant": "fixmatch" if nesterov else "fixmatch_momentum", "wd": 0.05, "lr": 0.1})
    net, reference = tiny_net(), tiny_net()
    params = list(net.parameters())
    opt, rule = build_optimizer(cfg, params), update_rule(cfg)
    ema_params = [p.detach().clone() for p in params]
    numpy_vars = {n: p.detach().numpy().copy() for n, p in reference.named_parameters()}
    accum = {n: np.zeros_like(v) for n, v in numpy_vars.items()}
    lr, m = np.float32(cfg.lr), np.float32(0.9)
    for _ in range(2):
        optimizer_update(opt, net_loss(net), params, ema_params, decay_params(net), rule.wd_factor,
                         cfg.ema_decay, rule.l2)
        with torch.no_grad():
            for n, p in reference.named_parameters():
                p.copy_(torch.from_numpy(numpy_vars[n]))
        kernels = [p for n, p in reference.named_parameters() if n.endswith("weight")]
        total = net_loss(reference) + cfg.wd * sum(0.5 * k.square().sum() for k in kernels)
        grads = torch.autograd.grad(total, list(reference.parameters()))
        for (n, _), g in zip(reference.named_parameters(), grads):
            g = g.numpy()
            accum[n] = accum[n] * m + g
            numpy_vars[n] = numpy_vars[n] - (g * lr + accum[n] * m * lr if nesterov else accum[n] * lr)
    for n, p in net.named_parameters():
        np.testing.assert_allclose(p.detach().numpy(), numpy_vars[n], rtol=1e-6, atol=1e-7, err_msg=n)


# ---- presets and variants against the official flags ---------------------------------------------------
OFFICIAL = {
    "lr": 0.03,                  # fixmatch.py line 175: set_default('lr', 0.03)
    "wd": 0.0005,                # fixmatch.py line 166
    "confidence": 0.95,          # fixmatch.py line 165
    "wu": 1.0,                   # fixmatch.py line 167
    "uratio": 7,                 # fixmatch.py line 171
    "batch_size": 64,            # fixmatch.py line 174
    "steps": (1 << 16 << 10) // 64,   # fixmatch.py line 176: train_kimg 1 << 16, in images
    "eval_every": 64 * 1024 // 64,    # libml/train.py line 34: report_kimg 64
    "ema_decay": 0.999,          # fixmatch.py line 85: model(..., ema=0.999)
    "optimizer": "momentum", "momentum": 0.9, "nesterov": True,   # fixmatch.py line 130
    "lr_schedule": "cosine",     # fixmatch.py line 93
    "wd_mode": "l2",             # fixmatch.py lines 122, 131: wd * loss_wd in the minimised loss
    "augment": "ctaugment", "cutout": True,   # fixmatch.py line 40: CTA policy + OP('cutout', (1,))
    "cta_depth": 2, "cta_threshold": 0.80, "cta_decay": 0.99,     # cta/lib/train.py lines 26-28
    "T": 1.0,                    # ab_fixmatch_sharpen*.py: flag T, default 1
    "pseudo_target": "hard", "anchoring": "weak.strong", "teacher": "live",
    "adam_beta1": 0.9, "adam_beta2": 0.999,   # ab_fixmatch_adam.py lines 122-123
    "lr_end": 0.02,              # ab_fixmatch_linearlr.py line 109
}
# Each ablation file's diff against fixmatch.py at its own default flags.
OFFICIAL_DIFFS = {
    "fixmatch": {},
    "fixmatch_ra": {"augment": "randaugment", "cutout": True},   # ab_fixmatch_ra.py line 157: 'd.d.rac'
    "fixmatch_nocutout": {"cutout": False},          # ab_fixmatch_nocutout.py line 38: cta.policy only
    "fixmatch_onlycutout": {"augment": "none", "cutout": True},   # ab_fixmatch_onlycutout.py line 35
    "fixmatch_conditional_consistency": {"pseudo_target": "soft"},   # ..._conditional_consistency.py l. 56
    "fixmatch_adam": {"optimizer": "adam", "lr": 0.002},      # ab_fixmatch_adam.py lines 78, 127
    "fixmatch_momentum": {"nesterov": False},      # ab_fixmatch_momentum.py lines 74, 118 (its flag)
    "fixmatch_linearlr": {"lr_schedule": "linear"},     # ab_fixmatch_linearlr.py lines 35, 109
    "fixmatch_meanteacher": {"teacher": "ema"},          # ab_fixmatch_meanteacher.py line 59
    "fixmatch_meanteacher_train": {"teacher": "ema_train"},   # ab_fixmatch_meanteacher_train.py line 59
    "fixmatch_anchoring_weak_weak": {"anchoring": "weak.weak"},   # ab_fixmatch_anchoring.py line 163 flag
    "fixmatch_anchoring_strong_strong": {"anchoring": "strong.strong"},
    "fixmatch_anchoring_strong_weak": {"anchoring": "strong.weak"},
}


@pytest.mark.parametrize("variant", sorted(OFFICIAL_DIFFS))
def test_every_preset_and_variant_is_its_official_files_flags(variant):
    cfg = resolve({"variant": variant})
    want = {**OFFICIAL, **OFFICIAL_DIFFS[variant]}
    assert cfg.method == "fixmatch"
    assert {k: getattr(cfg, k) for k in want} == want


def test_every_registered_fixmatch_variant_has_its_official_diff_listed():
    assert {n for n, d in VARIANTS.items() if d.get("method") == "fixmatch"} == set(OFFICIAL_DIFFS)


@pytest.mark.parametrize("variant,probe", [("fixmatch", True), ("fixmatch_ra", False), ("fixmatch_onlycutout", False)])
def test_views_are_one_weak_and_one_strong_with_the_probe_only_for_ctaugment(variant, probe):
    assert fixmatch.views(resolve({"variant": variant})) == Views(weak=1, strong=1, uratio=7, probe=probe)


@pytest.mark.parametrize("variant,units", [("fixmatch", 46.0), ("fixmatch_ra", 45.0), ("fixmatch_meanteacher", 53.0)])
def test_the_dry_run_prices_a_step_as_one_pass_of_b_plus_2_uratio_b_images(variant, units):
    # (1 + 2 * 7) batches of B forward + backward (3 units each), + the probe's forward of B
    # (CTAugment), + the teacher's forward of 7 B (mean-teacher variants).
    assert METHODS["fixmatch"].forwards_per_step(resolve({"variant": variant})) == units
