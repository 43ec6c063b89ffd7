"""What the trainer's update does to the weights and which model its `error` evaluates, checked
on tiny digits runs against computations written here (REFERENCE.md steps 7-8), not against
the trainer's own helpers:

- the decoupled weight decay scales conv and linear kernels by exactly 1 - wd * lr and leaves
  biases and batch-norm parameters alone (a zero-gradient loss makes Adam's step exactly 0, so
  the decay is all that moves the weights);
- the EMA after the first step is decay * initial + (1 - decay) * weights after the step;
- `error` is the EMA model's for ema=true and the live model's for ema=false, and the EMA model
  is evaluated with the live model's batch-norm running statistics.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from mixmatch_core import methods
from mixmatch_core.config import resolve
from mixmatch_core.data import load_dataset
from mixmatch_core.models import build_model
from mixmatch_core.train import open_session, train

TINY = dict(dataset="digits", method="supervised", n_labeled=50, batch_size=16, progress=False, device="cpu")


def tiny(tmp_path, **kw):
    return resolve({**TINY, "out_dir": str(tmp_path / "runs"), **kw})


def initial_state(cfg) -> dict[str, torch.Tensor]:
    """The weights the run starts from (open_session builds them as train does; it writes no checkpoint)."""
    return {k: v.clone() for k, v in open_session(cfg).model.state_dict().items()}


def final_checkpoint(cfg) -> dict:
    return torch.load(Path(cfg.run_dir) / "ckpt.pt", weights_only=True)


def is_kernel(name: str, value: torch.Tensor) -> bool:
    """Conv and dense kernels: the official 'kernel' variables (batch-norm weights are 1-D)."""
    return name.endswith("weight") and value.ndim > 1


def zero_gradient_losses(cfg, model, *args, **kwargs):
    loss = sum(0.0 * p.sum() for p in model.parameters())
    return loss, loss, loss


@pytest.mark.parametrize("model", ["small_cnn16", "wrn10_1"])      # wrn: conv biases too
def test_weight_decay_scales_kernels_by_one_minus_wd_lr_and_nothing_else(tmp_path, monkeypatch, model):
    monkeypatch.setattr(methods.load("supervised"), "losses", zero_gradient_losses)
    cfg = tiny(tmp_path, model=model, wd=50.0, lr=0.002, steps=1, eval_every=1, log_every=1, median_of=1)
    before = initial_state(cfg)
    train(cfg)
    after = final_checkpoint(cfg)["model"]
    params = {name for name, _ in build_model(model, 10, 1, image_width=8).named_parameters()}
    kernels = [k for k in params if is_kernel(k, before[k])]
    assert len(kernels) >= 2 and len(params) > len(kernels)
    for k in sorted(params):
        want = before[k] * (1 - 50.0 * 0.002) if k in kernels else before[k]     # 0.9 per step
        torch.testing.assert_close(after[k], want, rtol=1e-6, atol=0, msg=k)


def test_the_ema_after_the_first_step_is_decay_times_the_initial_plus_the_rest_times_the_step(tmp_path):
    decay = 0.9
    cfg = tiny(tmp_path, ema_decay=decay, wd=0.0, steps=1, eval_every=1, log_every=1, median_of=1)
    before = initial_state(cfg)
    train(cfg)
    ckpt = final_checkpoint(cfg)
    params = [name for name, _ in build_model(cfg.model, 10, 1, image_width=8).named_parameters()]
    assert any(not torch.equal(ckpt["model"][k], before[k]) for k in params)       # the step moved weights
    for k in params:
        want = decay * before[k] + (1 - decay) * ckpt["model"][k]
        torch.testing.assert_close(ckpt["ema"][k], want, rtol=1e-5, atol=1e-7, msg=k)


def test_error(state: dict, model_name: str, data_dir: str) -> float:
    """Test error in % of a model with these weights and batch-norm statistics, in eval mode."""
    ds = load_dataset("digits", data_dir)
    model = build_model(model_name, 10, 1, image_width=8)
    model.load_state_dict(state)
    x = torch.from_numpy(ds.x_test).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        pred = model.eval()(x).argmax(1).numpy()
    return float(100 * np.mean(pred != ds.y_test))


test_error.__test__ = False     # a helper, not a test


def with_buffers(params_from: dict, buffers_from: dict, model_name: str) -> dict:
    names = {name for name, _ in build_model(model_name, 10, 1, image_width=8).named_parameters()}
    return {k: (params_from[k] if k in names else buffers_from[k]) for k in params_from}


@pytest.fixture(scope="module")
def ema_and_live_runs(tmp_path_factory):
    """A run with each value of `ema`, 20 steps with decay 0.99: the EMA is still near the
    initial weights, far from the live ones. One evaluation, at the end."""
    out = {}
    for ema in (True, False):
        cfg = tiny(tmp_path_factory.mktemp(f"ema_{ema}"), ema=ema, ema_decay=0.99, steps=20, eval_every=20,
                   log_every=20, median_of=1)
        before = initial_state(cfg)
        out[ema] = (cfg, before, train(cfg), final_checkpoint(cfg))
    return out


@pytest.mark.parametrize("ema", [True, False])
def test_the_reported_error_is_the_ema_models_unless_ema_is_false(ema_and_live_runs, ema):
    cfg, _, result, ckpt = ema_and_live_runs[ema]
    ema_error = test_error(with_buffers(ckpt["ema"], ckpt["model"], cfg.model), cfg.model, cfg.data_dir)
    live_error = test_error(ckpt["model"], cfg.model, cfg.data_dir)
    assert ema_error != live_error                      # the two models can be told apart
    want = ema_error if ema else live_error
    assert result.history[-1]["test_error"] == pytest.approx(want, abs=1e-9)
    assert result.metrics["error"] == pytest.approx(want, abs=1e-9)


def test_the_ema_model_is_evaluated_with_the_live_models_batch_norm_statistics(ema_and_live_runs):
    cfg, before, result, ckpt = ema_and_live_runs[True]
    live_stats = test_error(with_buffers(ckpt["ema"], ckpt["model"], cfg.model), cfg.model, cfg.data_dir)
    own_stats = test_error(with_buffers(ckpt["ema"], before, cfg.model), cfg.model, cfg.data_dir)
    assert live_stats != own_stats                      # the statistics matter in this run
    assert result.history[-1]["test_error_ema"] == pytest.approx(live_stats, abs=1e-9)
