"""Config values reach the computation they name, and the passes that must not touch batch-norm
statistics do not: observed on one training step (`train_step`) of each method, fed images whose
pixels say where they came from, through probe models that record what they see.

- `alpha`: the MixUp weights of the rows the live model is fed follow the folded
  Beta(alpha, alpha) of *that* alpha (Kolmogorov-Smirnov against scipy's Beta), in MixMatch,
  MixUp and ICT.
- `T`: with a model whose prediction p is the same for every image and no MixUp, MixMatch's
  unlabeled loss is mean((Sharpen(p, T) - p)^2), computed here in numpy: 0 at T = 1.
- `bn_mode` and the frozen passes: labeled images are black (-1) and unlabeled ones white (+1),
  and the model starts with a batch norm of momentum 1, whose running mean is then the mean of
  the one pass that updated it: -1 for every baseline (only the labeled pass updates), the mix of
  the official interleave's first chunk for MixMatch, all rows for `bn_mode=fused`.
"""
import contextlib

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from mixmatch_core import methods
from mixmatch_core.augment import AugmentSpec
from mixmatch_core.config import resolve
from mixmatch_core.data import Dataset, DeviceData
from mixmatch_core.train import train_step

SIDE = 16                       # 16 x 16 one-channel images: 256 pixels, one per image id
N_IMAGES = SIDE * SIDE
NO_AUGMENT = AugmentSpec(flip=False, pad=0)


def one_hot_data(n_labeled: int = 100) -> DeviceData:
    """Image i is black with pixel i white: a mix of two images shows both ids and its weight."""
    x = np.zeros((N_IMAGES, SIDE, SIDE, 1), np.uint8)
    x.reshape(N_IMAGES, -1)[np.arange(N_IMAGES), np.arange(N_IMAGES)] = 255
    y = np.arange(N_IMAGES) % 10
    ds = Dataset("one_hot", x, y, x[:10], y[:10], 10, NO_AUGMENT)
    return DeviceData.build(ds, n_labeled, seed=1, val_size=0, device="cpu", channels_last=False)


class Probe(nn.Module):
    """A linear classifier (optionally after a batch norm of momentum 1) that records its inputs."""

    def __init__(self, bn: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm2d(1, momentum=1.0) if bn else nn.Identity()
        self.fc = nn.Linear(N_IMAGES, 10)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(self.bn(x).flatten(1))


def step(cfg, model, ema_model, data, n_steps=1):
    method = methods.load(cfg.method)
    out = None
    for _ in range(n_steps):
        out = train_step(cfg, method, model, ema_model, data, contextlib.nullcontext, 1.0)
    return out


LAM_MAX = 0.999   # a partner weighted below 1e-3 is not told apart from float32 rounding: such rows are left out


def mixup_weights(rows: torch.Tensor) -> torch.Tensor:
    """lambda' of each input row that mixes two one-hot images with lambda' <= LAM_MAX (rows of
    one image, unmixed or mixed with itself, say nothing of lambda and are left out too)."""
    s = ((rows.flatten(1).double() + 1) / 2)            # [-1, 1] -> lam e_i + (1 - lam) e_j
    lam = s.max(1).values
    keep = ((s > 1e-4).sum(1) == 2) & (lam <= LAM_MAX)
    return lam[keep].float()


def folded_beta_cdf(alpha: float):
    """CDF of max(l, 1 - l), l ~ Beta(alpha, alpha), given max(l, 1 - l) <= LAM_MAX: on [0.5, 1]
    the unconditional CDF is 2 F(x) - 1."""
    def folded(x):
        return np.clip(2 * scipy.stats.beta.cdf(x, alpha, alpha) - 1, 0, 1)
    return lambda x: np.minimum(folded(x) / folded(LAM_MAX), 1)


@pytest.mark.parametrize("alpha", [0.25, 4.0])
@pytest.mark.parametrize("method, n_steps", [("mixmatch", 3), ("mixup", 4), ("ict", 8)])
def test_the_mixup_weights_the_model_sees_follow_beta_of_the_configured_alpha(method, n_steps, alpha):
    torch.manual_seed(0)
    cfg = resolve(dict(dataset="digits", method=method, alpha=alpha, batch_size=64, device="cpu"))
    model = Probe()
    step(cfg, model, Probe(), one_hot_data(), n_steps)
    lam = torch.cat([mixup_weights(x) for x in model.seen]).numpy()
    assert len(lam) > 300
    assert scipy.stats.kstest(lam, folded_beta_cdf(alpha)).pvalue > 1e-3
    other = 0.75 if alpha < 0.75 else 0.5            # e.g. the preset's or the method's default
    assert scipy.stats.kstest(lam, folded_beta_cdf(other)).pvalue < 1e-3   # the test can tell


class SamePrediction(nn.Module):
    """logits = b for every image: the guess is Sharpen(softmax(b), T) whatever the views."""

    def __init__(self, logits):
        super().__init__()
        self.b = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.b.expand(x.shape[0], -1)


@pytest.mark.parametrize("T", [1.0, 0.5, 0.25])
def test_mixmatchs_unlabeled_target_is_the_guess_sharpened_at_the_configured_T(T):
    logits = [0.3, -1.0, 0.8, 0.0, 2.0, -0.5, 0.1, 0.4, -2.0, 1.2]
    cfg = resolve(dict(dataset="digits", variant="no_mixup", T=T, batch_size=8, device="cpu"))
    model = SamePrediction(logits)
    _, _, lu = step(cfg, model, SamePrediction(logits), one_hot_data())
    p = np.exp(logits) / np.exp(logits).sum()
    q = p ** (1 / T) / (p ** (1 / T)).sum()             # Eq. 7
    assert lu.item() == pytest.approx(((q - p) ** 2).mean(), rel=1e-5, abs=1e-9)
    if T == 1.0:
        assert lu.item() == pytest.approx(0.0, abs=1e-9)  # no sharpening: the guess is p itself


def black_and_white_data(n_labeled: int = 40) -> DeviceData:
    """Labeled images all -1, unlabeled all +1 (after the [-1, 1] scaling)."""
    data = one_hot_data(n_labeled)
    data.x_labeled.fill_(0)
    data.x_unlabeled.fill_(255)
    return data


def bn_after_one_step(cfg) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    model = Probe(bn=True)
    step(cfg, model, Probe(bn=True), black_and_white_data())
    return model.bn


@pytest.mark.parametrize("method", ["supervised", "fs_mixup", "pi_model", "pseudo_label", "vat", "mean_teacher",
                                    "ict", "mixup"])
def test_only_the_labeled_pass_updates_batch_norm_statistics(method):
    bn = bn_after_one_step(resolve(dict(dataset="digits", method=method, batch_size=8, device="cpu")))
    assert bn.num_batches_tracked.item() == 1
    assert bn.running_mean.item() == pytest.approx(-1.0)     # labeled rows only (mixed among themselves)


@pytest.mark.parametrize("K, batch_size", [(1, 7), (2, 4), (2, 7), (3, 7)])   # where the two modes differ
def test_bn_mode_decides_which_rows_update_mixmatchs_batch_norm_statistics(K, batch_size):
    """Without MixUp each row keeps its colour. interleave (official libml/layers.py): the one
    updating pass is chunk 0 after swapping group p of chunk 0 with group p of chunk p, so it
    keeps B // (K + 1) labeled rows (the extra rows go to the last groups); fused: all rows."""
    common = dict(dataset="digits", variant="no_mixup", K=K, batch_size=batch_size, device="cpu")
    n_lab = batch_size // (K + 1)
    for bn_mode, want in [("interleave", (batch_size - 2 * n_lab) / batch_size),
                          ("fused", (K * batch_size - batch_size) / ((K + 1) * batch_size))]:
        bn = bn_after_one_step(resolve(dict(common, bn_mode=bn_mode)))
        assert bn.num_batches_tracked.item() == 1, bn_mode
        assert bn.running_mean.item() == pytest.approx(want, abs=1e-6), bn_mode
