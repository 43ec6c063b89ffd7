"""ReMixMatch against what google-research/remixmatch computes (cta/cta_remixmatch.py on
remixmatch_no_cta.py, libml/layers.py), each reference written independently in numpy with the
official shapes: guess_label's alignment and sharpening, PMovingAverage and PData, the redux
modes, random_rotate, the full loss (KL, match, rotation) with pinned MixUp draws, which passes
get gradient and which update batch norm, the rotation head's place in the model, the views,
every preset and ablation row as literal official flags, and an exact resume.
"""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from mixmatch_core import methods
from mixmatch_core.config import resolve
from mixmatch_core.methods import mixmatch, remixmatch
from mixmatch_core.models import build_model
from mixmatch_core.train import build_models, decay_params, train
from mixmatch_core.views import Unlabeled, Views

B, C, HW = 8, 3, 3            # 8 rows = 4 rotation quarters of 2; 3 classes; 1 x 3 x 3 images
D = HW * HW


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_xent(logits, targets):
    """softmax_cross_entropy_with_logits_v2, reduce_mean over rows."""
    z = logits - logits.max(-1, keepdims=True)
    return float(-(targets * (z - np.log(np.exp(z).sum(-1, keepdims=True)))).sum(-1).mean())


def np_guess_label(p_model_y, p_data, p_model, T, use_dm):
    """remixmatch_no_cta.py guess_label lines 51-59."""
    if use_dm:
        p = p_model_y * ((1e-6 + p_data) / (1e-6 + p_model))
        p = p / p.sum(axis=1, keepdims=True)
    else:
        p = p_model_y
    p = p ** (1.0 / T)
    return p / p.sum(axis=1, keepdims=True)


class NpPMovingAverage:
    """layers.PMovingAverage: a [buf_size, nclass] buffer of batch means, starting at 1/nclass."""

    def __init__(self, nclass, buf_size):
        self.ma = np.ones([buf_size, nclass]) / nclass

    def __call__(self):
        v = self.ma.mean(axis=0)
        return v / v.sum()

    def update(self, entry):
        self.ma = np.concatenate([self.ma[1:], [entry.mean(axis=0)]], axis=0)


class NpPData:
    """layers.PData, the branch our datasets take (no p_unlabeled flag, p_labeled never set)."""

    def __init__(self, nclass):
        self.p_data = np.ones(nclass) / nclass

    def __call__(self):
        return self.p_data / self.p_data.sum()

    def update(self, entry, decay=0.999):
        self.p_data = self.p_data * decay + entry.mean(axis=0) * (1 - decay)


def np_random_rotate(x_nchw):
    """random_rotate (remixmatch_no_cta.py 79-84) on NHWC, as the official code slices it."""
    x = x_nchw.transpose(0, 2, 3, 1)
    b4 = len(x) // 4
    x, xt = x[:2 * b4], x[2 * b4:].transpose(0, 2, 1, 3)
    out = np.concatenate([x[:b4], x[b4:, ::-1, ::-1], xt[:b4, ::-1], xt[b4:, :, ::-1]], axis=0)
    labels = np.concatenate([np.full(b4, r) for r in range(4)])
    return out.transpose(0, 3, 1, 2), labels


class Toy(nn.Module):
    """logits = fc(embed(x)), embed = the flattened image; every embed output is recorded (with its
    graph) in call order, so a test can ask which passes a loss term reaches."""

    def __init__(self, w):
        super().__init__()
        self.fc = nn.Linear(D, C, bias=False, dtype=torch.float64)
        self.fc.weight.data = torch.tensor(w.T)
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))   # so every pass has a graph
        self.outputs = []

    def embed(self, x):
        self.outputs.append(x.flatten(1) * self.scale)
        return self.outputs[-1]

    def forward(self, x):
        return self.fc(self.embed(x))


def toy_model(cfg, rs):
    """Toy with ReMixMatch's extensions, set to known values: a rotation head and non-uniform
    p_model / p_data buffers (so that distribution alignment changes the guess)."""
    model = Toy(3 * rs.randn(D, C))
    remixmatch.extend_model(cfg, model, None)
    model.double()
    if cfg.w_rot > 0:
        model.rot_head.weight.data = torch.tensor(rs.randn(4, D))
        model.rot_head.bias.data = torch.tensor(rs.randn(4))
    model.p_model.copy_(torch.tensor(rs.rand(cfg.dbuf, C) + 0.2))
    model.p_data.copy_(torch.tensor(rs.dirichlet(np.ones(C))))
    return model


def remix_cfg(**kw):
    return resolve({"variant": "remixmatch", "dataset": "digits", **kw})


@pytest.fixture
def one_thread():
    """One torch thread for the test (conv passes this small cost several times more with two
    threads on a shared machine); a run's num_threads is process-wide: put it back afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(n)


# ---- distribution alignment -------------------------------------------------------------------
@pytest.mark.parametrize("use_dm", [True, False])
def test_guess_label_aligns_by_p_data_over_p_model_then_sharpens(use_dm):
    rs = np.random.RandomState(0)
    p_model_y, p_data, p_model = rs.dirichlet(np.ones(C), 5), rs.dirichlet(np.ones(C)), rs.dirichlet(np.ones(C))
    ours = remixmatch.guess_label(*(torch.tensor(a) for a in (p_model_y, p_data, p_model)), 0.5, use_dm)
    want = np_guess_label(p_model_y, p_data, p_model, 0.5, use_dm)
    np.testing.assert_allclose(ours.numpy(), want, rtol=1e-5)
    assert not ours.requires_grad


def test_p_model_averages_the_last_dbuf_batch_means_and_p_data_is_an_ema_of_labels():
    """Six steps into a 3-batch buffer: p_model forgets the first three batches entirely (a
    buffer, not an EMA); p_data moves 0.1% towards each labeled batch's label mean."""
    cfg, rs = remix_cfg(dbuf=3), np.random.RandomState(1)
    model = Toy(rs.randn(D, C))
    remixmatch.extend_model(cfg, model, None)
    ref_model, ref_data = NpPMovingAverage(C, 3), NpPData(C)
    for _ in range(6):
        p, y = rs.dirichlet(np.ones(C), 2 * B), rs.randint(0, C, B)
        remixmatch.update_distributions(model, torch.tensor(p), torch.tensor(y), C)
        ref_model.update(p)
        ref_data.update(np.eye(C)[y])
    np.testing.assert_allclose(remixmatch.distribution(model.p_model).numpy(), ref_model(), rtol=1e-6)
    np.testing.assert_allclose(remixmatch.distribution(model.p_data).numpy(), ref_data(), rtol=1e-6)


@pytest.mark.parametrize("redux", ["1st", "swap", "mean"])
def test_redux_picks_the_probabilities_each_views_target_comes_from(redux):
    """guess_label lines 38-45: 1st tiles the anchor's softmax, swap gives view i view i+1's
    (the last view the anchor's), mean tiles the mean over views."""
    rs, K = np.random.RandomState(2), 3
    w, views = rs.randn(D, C), [rs.randn(B, 1, HW, HW) for _ in range(K + 1)]
    model = Toy(w)
    _, ours = remixmatch.guess_passes(model, [torch.tensor(v) for v in views], redux, with_kl=True)
    p = [np_softmax(v.reshape(B, D) @ w) for v in views]
    want = {"1st": np.tile(p[0], (K + 1, 1)), "swap": np.concatenate(p[1:] + p[:1]),
            "mean": np.tile(sum(p) / len(p), (K + 1, 1))}[redux]
    np.testing.assert_allclose(ours.numpy(), want, rtol=1e-5)


# ---- rotation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [8, 12])
def test_rotation_quarters_are_random_rotates_slices_and_np_rot90(batch):
    x = np.random.RandomState(3).randn(batch, 2, 4, 4)
    ours, labels = remixmatch.rotate_quarters(torch.tensor(x))
    want, want_labels = np_random_rotate(x)
    np.testing.assert_array_equal(ours.numpy(), want)
    np.testing.assert_array_equal(labels.numpy(), want_labels)
    # label -> counter-clockwise quarter turns: 0 -> 0, 1 -> 2 (180), 2 -> 1 (90 ccw), 3 -> 3 (90 cw)
    turns = {0: 0, 1: 2, 2: 1, 3: 3}
    for row, lab in zip(ours.numpy(), labels.numpy()):
        assert any(np.array_equal(row, np.rot90(xi, turns[lab], axes=(1, 2))) for xi in x)


def test_the_rotation_head_is_a_decayed_averaged_checkpointed_part_of_the_model():
    """classify_rot's kernel matches model_vars('classify') (a regex prefix), so it is decayed;
    ema.apply(model_vars()) averages it; its buffers are saved with the model. w_rot = 0: the
    official graph has no classify_rot."""
    cfg = remix_cfg()
    model, ema = build_models(cfg, 10, 1, torch.device("cpu"), 8)
    assert any(p is model.rot_head.weight for p in decay_params(model))
    assert not any(p is model.rot_head.bias for p in decay_params(model))
    assert model.rot_head.out_features == 4 and torch.equal(ema.rot_head.weight, model.rot_head.weight)
    assert {"p_model", "p_data", "rot_head.weight"} <= set(model.state_dict())
    assert model.state_dict()["p_model"].shape == (128, 10)
    no_rot, _ = build_models(remix_cfg(w_rot=0.0), 10, 1, torch.device("cpu"), 8)
    assert not hasattr(no_rot, "rot_head")


# ---- the whole loss -----------------------------------------------------------------------------
def pin_mixup(monkeypatch, n, seed=4):
    lam = 0.5 + 0.5 * np.random.RandomState(seed).rand(n)
    perm = np.random.RandomState(seed + 1).permutation(n)
    monkeypatch.setattr(mixmatch, "sample_lambda", lambda k, alpha, device=None: torch.tensor(lam[:k]))
    monkeypatch.setattr(torch, "randperm", lambda k, device=None, **kw: torch.tensor(perm[:k]))
    return lam, perm


def np_remixmatch(cfg, w, rot_w, rot_b, p_model_buf, p_data, x, y, views, lam, perm, ramp):
    """remixmatch_no_cta.py lines 93-163 with redux '1st' and the logits x @ W."""
    K = len(views) - 1
    flat = [v.reshape(B, D) for v in views]
    rot_x, rot_l = np_random_rotate(views[1])
    loss_rot = np_xent(rot_x.reshape(B, D) @ rot_w.T + rot_b, np.eye(4)[rot_l])
    p_model_y = np.tile(np_softmax(flat[0] @ w), (K + 1, 1))
    p_model_mean = p_model_buf.mean(0) / p_model_buf.mean(0).sum()
    ly = np_guess_label(p_model_y, p_data / p_data.sum(), p_model_mean, cfg.T, cfg.use_dm)
    loss_kl = np_xent(flat[1] @ w, ly[:B])
    rows, targets = np.concatenate([x.reshape(B, D)] + flat), np.concatenate([np.eye(C)[y], ly])
    a = lam[:, None]
    mixed, mixed_t = a * rows + (1 - a) * rows[perm], a * targets + (1 - a) * targets[perm]
    loss_xe = np_xent(mixed[:B] @ w, mixed_t[:B])
    pu = np_softmax(mixed[B:] @ w)
    loss_xeu = np_xent(mixed[B:] @ w, mixed_t[B:]) if cfg.use_xe else float(((mixed_t[B:] - pu) ** 2).mean())
    total = loss_xe + cfg.w_kl * ramp * loss_kl + cfg.w_match * ramp * loss_xeu + cfg.w_rot * loss_rot
    return total, loss_xe, loss_xeu, p_model_y


@pytest.mark.parametrize("use_xe", [True, False])
def test_losses_match_the_official_computation(monkeypatch, use_xe):
    cfg, rs = remix_cfg(K=2, use_xe=use_xe, dbuf=4), np.random.RandomState(5)
    model = toy_model(cfg, rs)
    x, y = rs.randn(B, 1, HW, HW), rs.randint(0, C, B)
    views = [rs.randn(B, 1, HW, HW) for _ in range(cfg.K + 1)]
    lam, perm = pin_mixup(monkeypatch, (cfg.K + 2) * B)
    before = [t.detach().numpy().copy() for t in (model.fc.weight, model.rot_head.weight, model.rot_head.bias,
                                                  model.p_model, model.p_data)]
    u = Unlabeled([torch.tensor(views[0])], [torch.tensor(v) for v in views[1:]])
    loss, lx, lu = remixmatch.losses(cfg, model, model, torch.tensor(x), torch.tensor(y), u, 0.3)
    total, want_x, want_u, p_model_y = np_remixmatch(cfg, before[0].T, *before[1:], x, y, views, lam, perm, 0.3)
    assert (loss.item(), lx.item(), lu.item()) == pytest.approx((total, want_x, want_u), rel=1e-5)
    # after the step (official post_ops): the buffers took this step's entries
    ref_model, ref_data = NpPMovingAverage(C, 4), NpPData(C)
    ref_model.ma, ref_data.p_data = before[3], before[4]
    ref_model.update(p_model_y)
    ref_data.update(np.eye(C)[y])
    np.testing.assert_allclose(model.p_model.numpy(), ref_model.ma, rtol=1e-6)
    np.testing.assert_allclose(model.p_data.numpy(), ref_data.p_data, rtol=1e-6)


def test_the_warm_up_reaches_w_match_and_w_kl_at_rampup_steps_and_never_w_rot():
    cfg = remix_cfg(rampup_steps=100)
    assert [remixmatch.unlabeled_weight(cfg, s) for s in (0, 50, 100, 500)] == [0.0, 0.5, 1.0, 1.0]


# ---- gradient flow and batch norm -------------------------------------------------------------
def receives(term, outputs):
    """For each recorded output: does `term` send it a non-zero gradient?"""
    live = [o for o in outputs if o.requires_grad]
    grads = iter(torch.autograd.grad(term, live, allow_unused=True, retain_graph=True))
    return [o.requires_grad and (lambda g: g is not None and bool(g.abs().sum() > 0))(next(grads)) for o in outputs]


@pytest.mark.parametrize("redux", ["1st", "swap"])
def test_guesses_carry_no_gradient_and_each_term_reaches_its_passes(redux):
    """Passes in call order: u_1 (KL), the guessing passes, the K + 2 mixed passes, rot(u_1).
    ly = tf.stop_gradient(guess.p_target): no guessing pass gets anything; the KL term and the
    rotation term reach only their own passes; L_x and L_u reach the mixed passes."""
    cfg, rs = remix_cfg(K=2, redux=redux), np.random.RandomState(6)
    model = toy_model(cfg, rs)
    x, y = torch.tensor(rs.randn(B, 1, HW, HW)), torch.tensor(rs.randint(0, C, B))
    views = [torch.tensor(rs.randn(B, 1, HW, HW)) for _ in range(cfg.K + 1)]
    loss, lx, lu = remixmatch.losses(cfg, model, model, x, y, Unlabeled(views[:1], views[1:]), 1.0)
    n_guess = 1 if redux == "1st" else cfg.K       # swap: u_1's probabilities come from its KL pass
    passes = ["kl"] + ["guess"] * n_guess + ["mixed"] * (cfg.K + 2) + ["rot"]
    assert len(model.outputs) == len(passes)
    extra = loss - lx - cfg.w_match * lu                  # w_kl * KL + w_rot * rot
    assert receives(extra, model.outputs) == [p in ("rot", "kl") for p in passes]
    assert receives(lx, model.outputs) == [p == "mixed" for p in passes]
    assert receives(lu, model.outputs) == [p == "mixed" for p in passes]


def np_interleave(chunks, batch):
    """layers.interleave: nu + 1 near-equal groups (the remainder to the last ones); group i of
    chunk 0 swaps with group i of chunk i."""
    nu = len(chunks) - 1
    sizes = [batch // (nu + 1)] * (nu + 1)
    for i in range(batch - sum(sizes)):
        sizes[-i - 1] += 1
    cuts = np.cumsum([0] + sizes)
    groups = [[c[cuts[p]:cuts[p + 1]] for p in range(nu + 1)] for c in chunks]
    for i in range(1, nu + 1):
        groups[0][i], groups[i][i] = groups[i][i], groups[0][i]
    return [np.concatenate(g) for g in groups]


def test_only_the_last_interleaved_pass_updates_batch_norm_statistics(monkeypatch, one_thread):
    """post_ops = the UPDATE_OPS of classifier(batches[-1]) only: rotation, guessing, KL and the
    first K + 1 interleaved mixed passes leave the running statistics as they were."""
    torch.manual_seed(0)
    cfg, rs = remix_cfg(K=1), np.random.RandomState(7)
    model = build_model("small_cnn4", 10, 1)
    remixmatch.extend_model(cfg, model, None)
    fresh = copy.deepcopy(model)
    x, y = rs.randn(B, 1, 8, 8).astype("f"), rs.randint(0, 10, B)
    views = [rs.randn(B, 1, 8, 8).astype("f") for _ in range(cfg.K + 1)]
    lam, perm = pin_mixup(monkeypatch, (cfg.K + 2) * B)
    remixmatch.losses(cfg, model, model, torch.tensor(x), torch.tensor(y),
                      Unlabeled([torch.tensor(views[0])], [torch.tensor(v) for v in views[1:]]), 1.0)
    rows, a = np.concatenate([x] + views), lam[:, None, None, None]
    mixed = a * rows + (1 - a) * rows[perm]
    last = np_interleave(np.split(mixed, cfg.K + 2), B)[-1]
    fresh(torch.tensor(last, dtype=torch.float32))        # that pass alone, from the same start
    for name, buf in model.named_buffers():
        if "running" in name or "num_batches" in name:
            assert torch.allclose(buf, dict(fresh.named_buffers())[name], atol=1e-5), name


# ---- views, presets and the ablation rows -------------------------------------------------------
@pytest.mark.parametrize("user,want", [
    ({}, Views(weak=1, strong=8, labeled="strong", probe=True)),              # cta_remixmatch.py: AugmentPoolCTA
    ({"anchor_view": "strong"}, Views(strong=9, labeled="strong", probe=True)),   # ab_cta_remixmatch_noweak.py
    ({"augment": "none"}, Views(weak=9)),                                     # ab_remixmatch.py: 'd.d.d', no CTA
    ({"augment": "randaugment"}, Views(weak=1, strong=8)),
])
def test_views_follow_the_official_augment_pools(user, want):
    assert remixmatch.views(resolve({"variant": "remixmatch", **user})) == want


def test_the_preset_is_cta_remixmatchs_flags_and_cifar10_sh():
    cfg = resolve({"variant": "remixmatch"})
    official = dict(
        K=8,                        # runs/ssl/cifar10.sh:19 --K=8 (libml/augment.py:45 default 1)
        wd=0.02, alpha=0.75,        # cta/cta_remixmatch.py:63-64 wd, beta
        w_kl=0.5, w_match=1.5, w_rot=0.5,          # cta/cta_remixmatch.py:65-67
        rampup_steps=(1024 << 10) // 64,           # cta/cta_remixmatch.py:71 warmup_kimg=1024, batch 64
        redux="1st", use_dm=True, use_xe=True,     # cta/cta_remixmatch.py:72-74
        batch_size=64, lr=0.002, steps=(1 << 16 << 10) // 64,   # cta/cta_remixmatch.py:77-79
        T=0.5, dbuf=128, ema_decay=0.999,          # remixmatch_no_cta.py:62-63 model() defaults
        augment="ctaugment", cutout=False,         # CTAClassifySemi's AugmentPoolCTA (libml/augment.py:190-208)
        cta_depth=2, cta_threshold=0.80, cta_decay=0.99,   # cta/lib/train.py:26-28
        optimizer=None, lr_schedule=None, wd_mode=None,    # AdamOptimizer(lr), wd *= lr decoupled (lines 69, 158-160)
        anchor_view="weak")
    assert {k: getattr(cfg, k) for k in official} == official


# runs/ssl/ablation.sh (DEFAULT_ARGS: cifar10.3@250-1, augment d.d.d) and the 40-label / STL-10
# lines of runs/ssl/{cifar10,svhn,stl10}.sh, flag by flag in our names.
ONLY_WEAK = dict(augment="none", redux="swap")   # ab_remixmatch.py: no CTA, redux default 'swap' (line 74)
OFFICIAL_ROWS = {
    "remixmatch_k1": dict(K=1),                     # ablation.sh:19
    "remixmatch_k2": dict(K=2),                     # ablation.sh:20
    "remixmatch_k4": dict(K=4),                     # ablation.sh:21
    "remixmatch_k8": dict(K=8),                     # ablation.sh:22
    "remixmatch_k16": dict(K=16),                   # ablation.sh:23
    "remixmatch_no_kl": dict(K=8, w_kl=0.0),        # ablation.sh:26
    "remixmatch_no_rot": dict(K=8, w_rot=0.0),      # ablation.sh:28
    "remixmatch_no_dm": dict(K=8, use_dm=False),    # ablation.sh:30
    "remixmatch_l2": dict(K=8, w_match=75.0, use_xe=False),   # ablation.sh:32
    "remixmatch_only_strong": dict(K=8, anchor_view="strong"),   # ablation.sh:35 (ab_cta_remixmatch_noweak.py)
    "remixmatch_only_weak_k1": dict(ONLY_WEAK, K=1),             # ablation.sh:38
    "remixmatch_only_weak_k8": dict(ONLY_WEAK, K=8),             # ablation.sh:39
    "remixmatch_only_weak_mean_k1": dict(ONLY_WEAK, K=1, redux="mean"),   # ablation.sh:40
    "remixmatch_only_weak_mean_k8": dict(ONLY_WEAK, K=8, redux="mean"),   # ablation.sh:41
    "remixmatch_40": dict(K=1, w_rot=2.0, rampup_steps=(8192 << 10) // 64),   # cifar10.sh:23
    "remixmatch_svhn_40": dict(K=1, w_rot=3.0),     # svhn.sh:23
    "remixmatch_stl10": dict(K=4),                  # stl10.sh:19 (--scales=4: the STL-10 preset)
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_ROWS))
def test_each_named_variant_is_its_official_line(name):
    base, cfg = resolve({"variant": "remixmatch"}), resolve({"variant": name})
    changed = {k: getattr(cfg, k) for k in base.to_dict() if getattr(cfg, k) != getattr(base, k)}
    assert changed == {"variant": name, **{k: v for k, v in OFFICIAL_ROWS[name].items() if getattr(base, k) != v}}
    assert cfg.method == "remixmatch"


def test_the_registry_holds_exactly_these_rows():
    assert set(methods.METHODS["remixmatch"].variants) == set(OFFICIAL_ROWS)


@pytest.mark.parametrize("user,forwards", [
    ({}, 1 + 3 + 3 + 3 * 10 + 1),                  # anchor guess, KL pass + backward, rotation, 10 mixed, probe
    ({"redux": "swap", "augment": "none"}, 8 + 3 + 3 + 3 * 10),
    ({"w_kl": 0.0, "w_rot": 0.0, "K": 1}, 1 + 3 * 3 + 1),
])
def test_dry_run_cost_counts_the_passes_of_a_step(user, forwards):
    cfg = resolve({"variant": "remixmatch", **user})
    assert methods.METHODS["remixmatch"].forwards_per_step(cfg) == forwards


# ---- a run, killed and resumed ------------------------------------------------------------------


def test_a_run_resumes_to_exactly_the_numbers_of_an_uninterrupted_one(tmp_path, one_thread):
    """The rotation head, p_model, p_data and CTAugment's rates are saved and restored with the
    run."""
    def cfg(sub):
        return resolve(dict(variant="remixmatch", K=2, dataset="digits", n_labeled=50, steps=4, eval_every=2,
                            median_of=2, log_every=2, batch_size=8, rampup_steps=2, progress=False, device="cpu",
                            model="small_cnn4", num_threads=one_thread, out_dir=str(tmp_path / sub)))

    class Stop(Exception):
        pass

    def stop_at_2(step, h):
        if step == 2:
            raise Stop

    full = train(cfg("a"))
    with pytest.raises(Stop):
        train(cfg("b"), on_eval=stop_at_2)
    resumed = train(cfg("b"))
    assert resumed.history == full.history
    a = torch.load(f"{cfg('a').run_dir}/ckpt.pt", weights_only=True)
    b = torch.load(f"{cfg('b').run_dir}/ckpt.pt", weights_only=True)
    assert not torch.equal(a["model"]["p_data"], torch.full((10,), 0.1))   # the buffers moved
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert a["augment"].keys() == b["augment"].keys() and a["augment"]
    for k in a["augment"]:
        assert torch.equal(a["augment"][k], b["augment"][k]), k



def test_the_eager_rotation_pass_survives_compiled_passes_writing_back_bn_statistics(one_thread):
    """Under torch.compile every forward writes its BN statistics back with a versioned copy_,
    and the rotation pass (model.embed, never compiled) saves them for its backward: it must run
    after every compiled pass, or backward raises (rotation_loss's docstring). Simulated here on
    an eager model whose forward writes back as AOTAutograd does; checked once for real with
    torch.compile(backend="aot_eager"): the same losses and gradients as eager."""
    torch.manual_seed(0)
    cfg = remix_cfg(K=1)
    model = build_model("small_cnn4", 10, 1)
    remixmatch.extend_model(cfg, model, None)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    forward = model.forward

    def forward_writing_back(t):
        """The pass computes on copies of the statistics (which its backward may keep) and
        writes them back to the buffers with copy_, as a compiled graph does."""
        real = [(m.running_mean, m.running_var) for m in bns]
        for m in bns:
            m.running_mean, m.running_var = m.running_mean.clone(), m.running_var.clone()
        out = forward(t)
        for m, (mean, var) in zip(bns, real):
            mean.copy_(m.running_mean)
            var.copy_(m.running_var)
            m.running_mean, m.running_var = mean, var
        return out

    model.forward = forward_writing_back
    x, y = torch.randn(B, 1, 8, 8), torch.randint(0, 10, (B,))
    u = Unlabeled([torch.randn(B, 1, 8, 8)], [torch.randn(B, 1, 8, 8)])
    remixmatch.losses(cfg, model, model, x, y, u, 0.5)[0].backward()
    assert model.rot_head.weight.grad.abs().sum() > 0
