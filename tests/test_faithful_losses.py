"""Each method's loss against an independent computation of what its official file computes.

The references here are written from the official files' shapes, in numpy (float64) with
numpy's broadcasting where the official code broadcasts, so a change of meaning in our code
(a mask applied per row instead of the [B] x [B, 1] broadcast, a partner changed, a term
dropped) fails, whatever our own helpers compute.
"""
import numpy as np
import pytest
import torch

from mixmatch_core.config import ConfigError, resolve
from mixmatch_core.methods import pseudo_label


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
