"""VAT's probe survives reduced precision: the adversarial direction under bf16 autocast is the
strict-fp32 one (methods/vat.py's docstring: xi = 1e-6 is about 2e-8 per pixel, below bf16's
and TF32's resolution, so a probe in reduced precision reads u + d as u).

Toy conv model on CPU; the same seeded probe with and without autocast.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixmatch_core.config import resolve
from mixmatch_core.methods import vat
from mixmatch_core.precision import strict_fp32
from mixmatch_core.views import Unlabeled


class TinyConv(nn.Module):
    """conv -> batch norm -> leaky ReLU -> pool -> linear: autocast runs conv and linear in bf16."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 10)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().float().clone())
        return self.fc(F.leaky_relu(self.bn(self.conv(x)), 0.1).mean(dim=(2, 3)))


def _batch():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1, torch.randint(0, 10, (6,), generator=g)
    return x, y, torch.rand(6, 3, 16, 16, generator=g) * 2 - 1


def _r_adv(bf16: bool) -> torch.Tensor:
    """vat.losses' adversarial perturbation: the last pass sees u + r_adv."""
    x, y, u = _batch()
    model = TinyConv()
    torch.manual_seed(3)                                     # the same probe in both runs
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        vat.losses(resolve({"variant": "vat"}), model, None, x, y, Unlabeled([u]), 0.3)
    return model.seen[-1] - u


def test_the_adversarial_direction_under_bf16_autocast_is_the_fp32_one():
    r_bf16, r_fp32 = _r_adv(bf16=True), _r_adv(bf16=False)
    cos = F.cosine_similarity(r_bf16.flatten(1), r_fp32.flatten(1), dim=1)
    assert cos.min() > 0.99, cos
    assert r_fp32.flatten(1).norm(dim=1).sub(6.0).abs().max() < 0.05    # vat_eps, not a vanished probe


def test_in_bf16_the_probe_pass_equals_the_clean_pass_and_in_strict_fp32_it_does_not():
    """Why strict_fp32 exists: under autocast, u + d (d ~ 3e-8 per pixel) is read as u."""
    _, _, u = _batch()
    model = TinyConv()
    torch.manual_seed(3)
    d = 1e-6 * vat.normalize(torch.randn_like(u))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(u), model(u + d))
        with strict_fp32():
            assert not torch.equal(model(u), model(u + d))


def test_strict_fp32_turns_autocast_and_tf32_off_inside_and_restores_them():
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.conv.fp32_precision)
    torch.set_float32_matmul_precision("high")
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with strict_fp32():
                assert not torch.is_autocast_enabled("cpu")
                assert torch.get_float32_matmul_precision() == "highest"
                assert torch.backends.cudnn.conv.fp32_precision == "ieee"
                assert torch.backends.cudnn.rnn.fp32_precision == "ieee"
                assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
            assert torch.is_autocast_enabled("cpu")
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.conv.fp32_precision == before[1]
    finally:
        torch.set_float32_matmul_precision(before[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adversarial_perturbation_keeps_fp32_or_wider(dtype):
    w = torch.randn(3, 2, dtype=dtype)
    u = torch.randn(4, 3, dtype=dtype)
    r = vat.adversarial_perturbation(lambda t: t @ w, u, u @ w, eps=6.0, xi=1e-6)
    assert r.dtype == dtype


def test_the_probe_runs_on_a_torch_before_2_9_and_restores_its_legacy_tf32_switch(monkeypatch):
    """torch < 2.9 has no per-operator fp32_precision, only cudnn.allow_tf32 (pyproject's lower
    bound once admitted it): the strict-fp32 region turns the legacy switch off and back on."""
    saved = [k.fp32_precision for k in (torch.backends.cudnn.conv, torch.backends.cudnn.rnn)]
    monkeypatch.setattr(torch.backends.cudnn, "conv", None, raising=False)     # as on torch < 2.9
    torch.backends.cudnn.allow_tf32 = True                                    # the legacy default
    seen = []
    w = torch.randn(3, 2)

    def forward(t):
        seen.append(torch.backends.cudnn.allow_tf32)
        return t @ w
    try:
        u = torch.randn(4, 3)
        r = vat.adversarial_perturbation(forward, u, u @ w, eps=6.0, xi=1e-6)
        assert seen == [False] and torch.backends.cudnn.allow_tf32 is True
        assert r.norm(dim=1).sub(6.0).abs().max() < 1e-4
    finally:
        monkeypatch.undo()
        for knob, value in zip((torch.backends.cudnn.conv, torch.backends.cudnn.rnn), saved):
            knob.fp32_precision = value
