"""Adam as the official code computes it: `tf.train.AdamOptimizer(lr)` (TF 1.x defaults beta1
0.9, beta2 0.999, epsilon 1e-8), i.e. TF's ApplyAdam kernel.

Owns: the optimiser's state (the two moments, the step count, the beta powers), its update
and its checkpoint form. What a step does after it (the decoupled weight decay, the EMA) is
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

from typing import Iterable

import numpy as np
import torch

__all__ = ["Adam"]

_F32 = np.float32


class Adam:
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

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

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
