"""Which forward passes each loss term sends gradient into, for every registered method.

One assertion per stop-gradient of the official file (tf.stop_gradient on the teacher, the
guessed targets, the probe's direction; argmax and the threshold mask, which carry none by
construction): a toy linear model records every forward pass, and for each term (L_x, the
unlabeled term, VAT's entropy term) we ask autograd which recorded outputs it depends on. A
removed `no_grad` or `detach` makes a pass that must get nothing get something, and fails.
"""
import numpy as np
import pytest
import torch
from torch import nn

from mixmatch_core import methods
from mixmatch_core.config import resolve
from mixmatch_core.methods import METHODS, pseudo_label
from mixmatch_core.views import Unlabeled


class Recorder(nn.Module):
    """logits = x.flatten(1) @ W; keeps every pass's output (with its graph) in call order."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w, self.outputs = nn.Parameter(w.clone()), []

    def forward(self, x):
        self.outputs.append(x.flatten(1) @ self.w)
        return self.outputs[-1]


def receives(term: torch.Tensor, outputs: list[torch.Tensor]) -> list[bool]:
    """For each recorded output: does `term` send it a non-zero gradient?"""
    live = [o for o in outputs if o.requires_grad]
    grads = iter(torch.autograd.grad(term, live, allow_unused=True, retain_graph=True) if live and
                 term.requires_grad else [None] * len(live))
    flags = []
    for o in outputs:
        g = next(grads) if o.requires_grad else None
        flags.append(g is not None and bool(g.abs().sum() > 0))
    return flags


def run(name: str, K: int = 2, seed: int = 0, dtype=torch.float32):
    """One step's losses of method `name` on a toy batch; returns (losses, live, teacher, w)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(6, 4, generator=g, dtype=dtype), torch.randint(0, 3, (6,), generator=g)
    u_views = [torch.randn(6, 4, generator=g, dtype=dtype) for _ in range(K)]
    # x 8: confident predictions, so that PseudoLabel's threshold (0.95) passes some rows
    w = 8 * torch.randn(4, 3, generator=g, dtype=dtype)
    live, teacher = Recorder(w), Recorder(0.5 * w)
    cfg = resolve({"variant": name})
    mod = methods.load(name)
    torch.manual_seed(seed)
    v = mod.views(cfg)
    out = mod.losses(cfg, live, teacher, x, y, Unlabeled(u_views[:v.weak], u_views[v.weak:v.weak + v.strong]), 0.7)
    return out, live, teacher, cfg


# Per method, the live model's passes in call order, and for each loss term which of them must
# receive gradient (1) and which must not (0). The official stop-gradient each 0 stands for:
EXPECTED = {
    # pi_model.py: logits_teacher = tf.stop_gradient(logits_y) (the first view).
    "pi_model": (["x", "u1 teacher", "u2 student"], {"lx": [1, 0, 0], "lu": [0, 0, 1]}),
    # mean_teacher.py: the EMA model's logits, tf.stop_gradient (the EMA model: checked below).
    "mean_teacher": (["x", "u2 student"], {"lx": [1, 0], "lu": [0, 1]}),
    # ict.py: labels_teacher = tf.stop_gradient(softmax(EMA logits)), then mixed.
    "ict": (["x", "u_mix student"], {"lx": [1, 0], "lu": [0, 1]}),
    # mixup.py: labels_y = tf.stop_gradient(mixed softmax of the guessing pass).
    "mixup": (["x_mix", "u guess", "u_mix"], {"lx": [1, 0, 0], "lu": [0, 0, 1]}),
    # vat.py: logits_teacher = tf.stop_gradient(logits_y) in the VAT term; vat_utils: d =
    # tf.stop_gradient(grad) (the probe pass feeds nothing back); entropy through the clean pass.
    "vat": (["x", "u clean", "u + d probe", "u + r_adv"],
            {"lx": [1, 0, 0, 0], "lu": [0, 0, 0, 1], "entmin": [0, 1, 0, 0]}),
    # pseudo_label.py: argmax target and threshold mask carry no gradient (pinned below).
    "pseudo_label": (["x", "u"], {"lx": [1, 0], "lu": [0, 1]}),
    # mixmatch.py: ly = tf.stop_gradient(guess.p_target): K guessing passes get nothing; the
    # interleaved mixed passes hold labeled and unlabeled rows alike, so both terms reach all.
    "mixmatch": (["u1 guess", "u2 guess", "mixed 0", "mixed 1", "mixed 2"],
                 {"lx": [0, 0, 1, 1, 1], "lu": [0, 0, 1, 1, 1]}),
    # fixmatch.py: one pass of labeled, weak and strong rows; the pseudo-label's stop_gradient
    # acts on rows of that pass (pinned row by row in tests/test_fixmatch.py).
    "fixmatch": (["x + weak + strong"], {"lx": [1], "lu": [1]}),
    # fs_mixup.py and ours: no unlabeled term, no stop-gradient; one pass gets L_x.
    "fs_mixup": (["x_mix"], {"lx": [1], "lu": [0]}),
    "supervised": (["x"], {"lx": [1], "lu": [0]}),
}


def test_every_registered_method_has_its_gradient_flow_pinned():
    # remixmatch (its model needs embed and a rotation head): tests/test_remixmatch.py
    assert set(EXPECTED) | {"remixmatch"} == set(METHODS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_loss_term_reaches_exactly_the_passes_the_official_file_lets_it(name):
    (loss, lx, lu), live, teacher, cfg = run(name, dtype=torch.float64 if name == "vat" else torch.float32)
    passes, terms = EXPECTED[name]
    assert len(live.outputs) == len(passes), [o.shape for o in live.outputs]
    got = {"lx": receives(lx, live.outputs), "lu": receives(lu, live.outputs)}
    if "entmin" in terms:
        got["entmin"] = receives(loss - lx - 0.7 * lu, live.outputs)
    for term, want in terms.items():
        assert got[term] == [bool(v) for v in want], (term, list(zip(passes, got[term])))
    # The teacher (EMA) model: never a gradient, from any term (stop_gradient on its logits).
    assert not any(receives(loss, teacher.outputs)), name
    # The unlabeled term of the supervised methods is a constant zero.
    if name in ("fs_mixup", "supervised"):
        assert not lu.requires_grad and lu.item() == 0.0


@pytest.mark.parametrize("name", ["mean_teacher", "ict"])
def test_the_ema_teacher_is_used_and_its_weights_get_no_gradient(name):
    (loss, _, _), _, teacher, _ = run(name)
    assert len(teacher.outputs) == 1
    loss.backward()
    assert teacher.w.grad is None


def test_mixmatch_with_ema_guess_guesses_with_the_ema_model_without_gradient():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
    u_views = [torch.randn(6, 4, generator=g) for _ in range(2)]
    w = torch.randn(4, 3, generator=g)
    live, ema = Recorder(w), Recorder(0.5 * w)
    loss, _, _ = methods.load("mixmatch").losses(resolve({"variant": "ema_guess"}), live, ema, x, y, Unlabeled(u_views), 1.0)
    assert len(ema.outputs) == 2 and len(live.outputs) == 3
    assert not any(receives(loss, ema.outputs)) and all(receives(loss, live.outputs))


def test_pseudo_label_gradient_treats_argmax_and_mask_as_constants():
    """Official: d L_pl / d logits_j = frac_confident * (softmax_j - onehot(argmax_j)) / B for
    every row j; a mask or target with a gradient path would change it."""
    logits = np.array([[10.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 9.0], [1.0, 1.2, 0.0]])
    lg = torch.tensor(logits, requires_grad=True)
    pseudo_label.pseudo_label_loss(lg, 0.95, "official").backward()
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    frac = (p.max(1) > 0.95).mean()
    want = frac * (p - np.eye(3)[logits.argmax(1)]) / len(logits)
    np.testing.assert_allclose(lg.grad.numpy(), want, rtol=1e-5, atol=1e-7)
