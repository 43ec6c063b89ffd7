"""The optimisers as the official code computes them, the learning-rate schedules, and how
weight decay enters: `tf.train.AdamOptimizer(lr)` (TF 1.x defaults beta1 0.9, beta2 0.999,
epsilon 1e-8), i.e. TF's ApplyAdam kernel, and `tf.train.MomentumOptimizer(lr, momentum,
use_nesterov)` (FixMatch), i.e. TF's ApplyMomentum kernel.

Owns: each optimiser's state, update and checkpoint form; `build_optimizer(cfg, params)`;
`lr_at(cfg, step)` (the host-side schedule: constant, or FixMatch's cosine or linear decay);
`UpdateRule` (the run's lr and where its weight decay enters: decoupled, kernels *= 1 - wd * lr
after the step as MixMatch and ReMixMatch do, or coupled, wd * sum(l2_loss(kernels)) added to
the loss as FixMatch does). A method that owns no optimiser knobs (MixMatch, the baselines)
trains with Adam, a constant lr and decoupled decay, as every file of google-research/mixmatch.
What a step does with these (backward, the step, the decay, the EMA) is
train.optimizer_update's.

Where TF's Adam differs from torch.optim.Adam (which the common PyTorch ports use):
- epsilon is added to sqrt(v) of the *uncorrected* second moment, and both bias corrections
  are folded into the step size ("epsilon hat" of Kingma & Ba, as TF's docs say):
      alpha_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
      m <- m + (g - m) * (1 - beta1)
      v <- v + (g^2 - v) * (1 - beta2)
      var <- var - (m * alpha_t) / (sqrt(v) + epsilon)
  torch.optim.Adam adds its eps to sqrt(v / (1 - beta2^t)). In those terms TF's epsilon is
  epsilon / sqrt(1 - beta2^t): 31.6x torch's at step 1, 1.26x at step 1,000. The two agree
  wherever sqrt(v) >> epsilon; where a parameter's gradients are around 1e-8 or smaller
  they move it by very different amounts (tests/test_optim.py plants that case).
- beta1^t and beta2^t are float32 variables that TF multiplies by beta after each update,
  and alpha_t is computed in float32: here too, as numpy float32 scalars on the host (the
  update reads nothing back from the device).
- a variable without a gradient is left alone, moments included (TF applies Adam only to the
  variables that have a gradient); the step count and powers advance once per step.

Not importing torch.optim is also cheaper to start: its methods are wrapped in
torch._disable_dynamo, whose first call imports all of torch._dynamo (measured 1.8 s of CPU on
a 2-core AMD EPYC VM), which a run that does not compile never uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

__all__ = ["Adam", "Momentum", "UpdateRule", "build_optimizer", "lr_at", "update_rule"]

_F32 = np.float32


class _Params:
    """What both optimisers share: their parameter list, gradient reset and settable lr."""
    params: list[torch.Tensor]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def set_lr(self, lr: float) -> None:
        """The lr of the next step (float32, as TF feeds it to the kernel)."""
        self.lr = _F32(lr)


class Adam(_Params):
    """TF 1.x Adam over a fixed list of parameters, updated with multi-tensor (foreach) ops."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, self.beta1, self.beta2, self.epsilon = _F32(lr), _F32(beta1), _F32(beta2), _F32(epsilon)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.steps = 0
        # TF's non-slot variables beta1_power and beta2_power: beta at step 1, times beta after each step.
        self.beta1_power, self.beta2_power = self.beta1, self.beta2

    @torch.no_grad()
    def step(self) -> None:
        have = [i for i, p in enumerate(self.params) if p.grad is not None]
        if have:
            one = _F32(1)
            alpha = float(self.lr * np.sqrt(one - self.beta2_power) / (one - self.beta1_power))
            params = [self.params[i] for i in have]
            grads = [self.params[i].grad for i in have]
            m, v = [self.m[i] for i in have], [self.v[i] for i in have]
            torch._foreach_lerp_(m, grads, float(one - self.beta1))            # m + (g - m) * (1 - beta1)
            torch._foreach_lerp_(v, torch._foreach_mul(grads, grads), float(one - self.beta2))
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, float(self.epsilon))
            update = torch._foreach_mul(m, alpha)                              # (m * alpha) / (sqrt(v) + eps)
            torch._foreach_div_(update, denom)
            torch._foreach_sub_(params, update)
        self.steps += 1
        self.beta1_power, self.beta2_power = self.beta1_power * self.beta1, self.beta2_power * self.beta2

    def state_dict(self) -> dict:
        return {"format": "tf_adam", "steps": self.steps, "m": list(self.m), "v": list(self.v),
                "beta1_power": float(self.beta1_power), "beta2_power": float(self.beta2_power)}

    def load_state_dict(self, state: dict) -> None:
        """Our own form, or torch.optim.Adam's (checkpoints written before this file existed:
        its exp_avg and exp_avg_sq are the same two moments, its step the same count)."""
        if state.get("format") == "tf_adam":
            steps, m, v = state["steps"], state["m"], state["v"]
            powers = _F32(state["beta1_power"]), _F32(state["beta2_power"])
        else:
            slots = [state["state"].get(i, {}) for i in range(len(self.params))]
            steps = int(max((float(s["step"]) for s in slots if "step" in s), default=0))
            m = [s.get("exp_avg", torch.zeros_like(p)) for s, p in zip(slots, self.params)]
            v = [s.get("exp_avg_sq", torch.zeros_like(p)) for s, p in zip(slots, self.params)]
            powers = self._powers_after(steps)
        if len(m) != len(self.params):
            raise ValueError(f"optimiser state holds {len(m)} parameters, the model {len(self.params)}")
        for dst, src in zip(self.m + self.v, list(m) + list(v)):
            dst.copy_(src)
        self.steps = steps
        self.beta1_power, self.beta2_power = powers

    def _powers_after(self, steps: int) -> tuple[np.float32, np.float32]:
        b1, b2 = self.beta1, self.beta2
        for _ in range(steps):
            b1, b2 = b1 * self.beta1, b2 * self.beta2
        return b1, b2


class Momentum(_Params):
    """TF 1.x MomentumOptimizer (ApplyMomentum) over a fixed list of parameters:
        accum <- accum * momentum + grad
        var   <- var - (grad * lr + accum * momentum * lr)     (use_nesterov)
        var   <- var - accum * lr                              (otherwise)
    torch.optim.SGD(nesterov=True) computes the same quantities in another order (lr applied
    to grad + momentum * buf); here TF's order, as the official FixMatch ran. `lr` is set by the
    trainer before each step (a host float: the schedule needs no device read)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.9,
                 nesterov: bool = True) -> None:
        self.params = list(params)
        self.lr, self.momentum, self.nesterov = _F32(lr), _F32(momentum), nesterov
        self.accum = [torch.zeros_like(p) for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        have = [i for i, p in enumerate(self.params) if p.grad is not None]
        if have:
            params = [self.params[i] for i in have]
            grads = [self.params[i].grad for i in have]
            accum = [self.accum[i] for i in have]
            torch._foreach_mul_(accum, float(self.momentum))
            torch._foreach_add_(accum, grads)
            if self.nesterov:
                update = torch._foreach_mul(grads, float(self.lr))
                torch._foreach_add_(update, torch._foreach_mul(torch._foreach_mul(accum, float(self.momentum)),
                                                               float(self.lr)))
            else:
                update = torch._foreach_mul(accum, float(self.lr))
            torch._foreach_sub_(params, update)
        self.steps += 1

    def state_dict(self) -> dict:
        return {"format": "tf_momentum", "steps": self.steps, "accum": list(self.accum)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != "tf_momentum" or len(state["accum"]) != len(self.params):
            raise ValueError("optimiser state is not a Momentum state of this model")
        for dst, src in zip(self.accum, state["accum"]):
            dst.copy_(src)
        self.steps = state["steps"]


@dataclass(frozen=True)
class UpdateRule:
    """How a run's weights move, from its config (host values, fixed for the run):
    `wd_factor` multiplies the kernels after each step (decoupled decay; 1.0 = none) and
    `l2` is the coefficient of wd * sum(l2_loss(kernels)) in the loss (coupled decay; its
    gradient wd * kernel is added to each kernel's gradient)."""
    optimizer: str
    schedule: str
    wd_factor: float
    l2: float


def update_rule(cfg) -> UpdateRule:
    """The run's update rule: the method's optimiser knobs where it owns them (None: Adam, a
    constant lr, decoupled decay). Decoupled decay uses the base lr, as the official files do
    (mixmatch.py, remixmatch_no_cta.py: `wd *= lr` before any schedule; 0.02 * 0.002 = 4e-5 per
    step, where the MixMatch paper's text says 0.0004, ten times the code's value)."""
    optimizer = getattr(cfg, "optimizer", None) or "adam"
    schedule = getattr(cfg, "lr_schedule", None) or "constant"
    coupled = (getattr(cfg, "wd_mode", None) or "decoupled") == "l2"
    return UpdateRule(optimizer, schedule, 1.0 if coupled else 1.0 - cfg.wd * cfg.lr, cfg.wd if coupled else 0.0)


def build_optimizer(cfg, params: Iterable[torch.Tensor]) -> "Adam | Momentum":
    """The run's optimiser at its base lr."""
    if update_rule(cfg).optimizer == "momentum":
        return Momentum(params, cfg.lr, cfg.momentum, cfg.nesterov)
    beta1, beta2 = getattr(cfg, "adam_beta1", None), getattr(cfg, "adam_beta2", None)
    if beta1 is None:
        return Adam(params, lr=cfg.lr)
    # ablation/ab_fixmatch_adam.py: AdamOptimizer(lr, beta1, beta2), and epsilon 1e-4 when beta2 == 0
    return Adam(params, lr=cfg.lr, beta1=beta1, beta2=beta2, epsilon=1e-4 if beta2 == 0 else 1e-8)


def lr_at(cfg, step: int) -> float:
    """The lr of step `step` (0-based, the step being taken), a host float.
    constant: cfg.lr. cosine (fixmatch.py): lr * cos(7 pi t / 16), t = clip(step / steps, 0, 1),
    so the last step runs at lr * cos(7 pi / 16) = 0.195 lr. linear (ab_fixmatch_linearlr.py):
    lr + (lr_end - lr) * t. The official t counts the global step before the update (the graph
    reads `self.step`, which the same session.run increments), as here."""
    schedule = update_rule(cfg).schedule
    if schedule == "constant":
        return cfg.lr
    # float32 throughout, as the TF graph computes it (tf.to_float(step) / (train_kimg << 10))
    t = np.clip(_F32(step) / _F32(cfg.steps), _F32(0), _F32(1))
    if schedule == "cosine":
        return float(_F32(cfg.lr) * np.cos(t * _F32(7 * math.pi) / _F32(2 * 8)))
    return float(_F32(cfg.lr) + (_F32(cfg.lr_end) - _F32(cfg.lr)) * t)
