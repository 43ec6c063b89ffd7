"""Packed models: N independent cells of one architecture trained as one set of larger kernels.

Owns: packing N of the trainer's models into one module (HFTA-style, Wang et al., MLSys 2021:
the N models' channels side by side, every convolution a grouped convolution with groups=N,
every batch norm one per-channel batch norm over N x C channels, the classifier one batched
matmul), unpacking it back into N state dicts, the packed MixMatch step (Algorithm 1 with
per-model MixUp draws and per-model losses, then the trainer's Adam, decoupled weight decay and
EMA), the same step for one unpacked model as the reference, device-side draws of N models'
data and randomness for timing, and the equality check (a packed step against N separate
steps). It does not change the trainer: the packed step is built from mixmatch_core's public
functions (label guessing, the interleaved forward, `make_optimizer`, `optimizer_update`).

Why packing keeps N models exactly independent: a grouped convolution's group n reads only
model n's channels; batch norm, leaky ReLU, the residual sum and the average pool act per
channel; MixUp and the losses are per model here; Adam, the weight decay and the EMA act per
element. The summed loss gives model n's parameters model n's gradient only.

Layout: a packed model takes [B, N, C, H, W] (row-major over the batch, then the model) and
returns logits [B, N, classes], so the trainer's functions that work along the batch dimension
(interleave, label guessing, sharpening) apply unchanged; MixUp and the losses act per model
along dimension 1.

The one numerical caveat: in the official WRN every convolution bias feeds a batch norm (directly
or through the residual stream), so its true gradient is zero; in fp32 it is rounding noise of
about 1e-9, and Adam turns noise of that size (against eps = 1e-8) into steps of up to lr. Those
biases therefore agree between a packed and a separate step only to 2 * lr per step (they change
no output: the next batch norm subtracts them); the equality check reports them apart.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixmatch_core.methods import common
from mixmatch_core.methods import mixmatch as mixmatch_method
from mixmatch_core.augment import AugmentSpec, augment_batch, pad_reflect
from mixmatch_core.models import BatchNorm2d, Conv2dSame
from mixmatch_core.optim import update_rule


# ---- the packed model -------------------------------------------------------------------------
class PackedConv2d(Conv2dSame):
    """N Conv2dSame side by side: one convolution with groups = N, weight rows model-major
    (rows n * out .. (n + 1) * out - 1 are model n's kernels), TF 'same' padding as the models'."""

    def __init__(self, convs: list[Conv2dSame]):
        c, n = convs[0], len(convs)
        nn.Conv2d.__init__(self, n * c.in_channels, n * c.out_channels, c.kernel_size, stride=c.stride,
                           padding=c.padding, groups=n * c.groups, bias=c.bias is not None)
        self._explicit_pad = c._explicit_pad
        with torch.no_grad():
            self.weight.copy_(torch.cat([m.weight for m in convs]))
            if c.bias is not None:
                self.bias.copy_(torch.cat([m.bias for m in convs]))


def packed_batch_norm(bns: list[nn.BatchNorm2d]) -> BatchNorm2d:
    """N batch norms as one over N x C channels (the models' fp32 BatchNorm2d): per-channel
    statistics are per-model statistics, since model n's channels hold model n's images only."""
    b = bns[0]
    out = BatchNorm2d(len(bns) * b.num_features, eps=b.eps, momentum=b.momentum)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out, name).copy_(torch.cat([getattr(m, name) for m in bns]))
        out.num_batches_tracked.copy_(b.num_batches_tracked)
    return out


class PackedLinear(nn.Module):
    """N nn.Linear heads as one batched matmul: [B, N * in] -> [B, N, out]."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in linears]).clone())   # [N, out, in]
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in linears]).clone())       # [N, out]

    def forward(self, x: Tensor) -> Tensor:
        n, _, d_in = self.weight.shape
        return torch.einsum("bni,noi->bno", x.reshape(x.shape[0], n, d_in), self.weight) + self.bias


class PackedModel(nn.Module):
    """N models of one architecture as one module: [B, N, C, H, W] -> [B, N, classes]. Works for
    any model whose forward mixes channels only in Conv2dSame and nn.Linear layers (the WRN and
    small_cnn of mixmatch_core.models); other layers with parameters are refused."""

    def __init__(self, models: list[nn.Module], channels_last: bool = False):
        super().__init__()
        self.n_models, self.channels_last = len(models), channels_last
        with torch.random.fork_rng(devices=[]):          # the layers' own init must not move the RNG
            self.net = _pack_modules(models)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C, H, W = x.shape
        if self.channels_last:       # one copy into [B, H, W, N * C], a channels_last [B, N * C, H, W]
            x = x.permute(0, 3, 4, 1, 2).contiguous().view(B, H, W, N * C).permute(0, 3, 1, 2)
        else:
            x = x.reshape(B, N * C, H, W)
        return self.net(x)


def _pack_modules(models: list[nn.Module]) -> nn.Module:
    """A copy of models[0] whose Conv2dSame, batch norm and Linear layers hold all N models."""
    packed = copy.deepcopy(models[0]).cpu()
    for name, module in models[0].named_modules():
        layers = [m.get_submodule(name) for m in models]
        if isinstance(module, Conv2dSame):
            new = PackedConv2d(_cpu_copies(layers))
        elif isinstance(module, nn.BatchNorm2d):
            new = packed_batch_norm(_cpu_copies(layers))
        elif isinstance(module, nn.Linear):
            new = PackedLinear(_cpu_copies(layers))
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f"cannot pack layer '{name}' ({type(module).__name__}): only Conv2dSame, "
                            "BatchNorm2d and Linear carry parameters in a packable model")
        else:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(packed.get_submodule(parent), attr, new)
    return packed.to(next(models[0].parameters()).device)


def _cpu_copies(layers: list[nn.Module]) -> list[nn.Module]:
    return [copy.deepcopy(m).cpu() for m in layers]


def unpack(packed: PackedModel) -> list[dict[str, Tensor]]:
    """The N models' state dicts (keys as the unpacked model's state_dict), sliced from `packed`."""
    n = packed.n_models
    out: list[dict[str, Tensor]] = [{} for _ in range(n)]
    for key, value in packed.net.state_dict().items():
        layer = packed.net.get_submodule(key.rpartition(".")[0])
        if key.endswith("num_batches_tracked"):
            parts = [value] * n
        elif isinstance(layer, PackedLinear):
            parts = list(value.unbind(0))
        else:
            parts = list(value.chunk(n, dim=0))
        for sd, part in zip(out, parts):
            sd[key] = part
    return out


def decay_params(packed: PackedModel) -> list[Tensor]:
    """Kernels only, as mixmatch_core.train.decay_params: conv and head weights, no biases, no BN."""
    return [m.weight for m in packed.modules() if isinstance(m, (nn.Conv2d, PackedLinear))]


# ---- one step's data and randomness -----------------------------------------------------------
@dataclass
class Draws:
    """One MixMatch step's inputs for N models (packed) or one model (`one(n)`): labeled images
    x [B, N, C, H, W] with labels y [B, N]; K unlabeled views, each [B, N, C, H, W] (the same
    images, augmented K times); MixUp weights lam [(K + 1) B, N] (>= 0.5) and partners perm
    [(K + 1) B, N] (row i of model n is mixed with row perm[i, n] of model n)."""

    x: Tensor
    y: Tensor
    u: list[Tensor]
    lam: Tensor
    perm: Tensor

    def one(self, n: int, channels_last: bool = False) -> "Draws":
        """Model n's inputs, shaped as the trainer gives them to one model ([B, C, H, W], [B])."""
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return Draws(self.x[:, n].contiguous(memory_format=fmt), self.y[:, n],
                     [u[:, n].contiguous(memory_format=fmt) for u in self.u], self.lam[:, n], self.perm[:, n])


class PackedData:
    """A device-resident uint8 image pool (reflect-padded once, as the trainer's DeviceData) from
    which each model draws its own images, augmentations and MixUp randomness every step."""

    def __init__(self, x_uint8_nhwc, y, n_labeled: int, spec: AugmentSpec, device: torch.device):
        x = torch.as_tensor(x_uint8_nhwc).to(device)
        self.spec, self.device = spec, device
        self.x_pad = pad_reflect(x, spec.pad)
        self.y = torch.as_tensor(y).to(device)
        self.n_labeled = n_labeled

    def _images(self, index: Tensor, shape: tuple[int, int]) -> Tensor:
        x = augment_batch(self.x_pad, self.spec, index)                 # uint8 [B * N, H, W, C]
        x = x.view(*shape, *x.shape[1:]).permute(0, 1, 4, 2, 3)         # [B, N, C, H, W]
        return x.float().div_(127.5).sub_(1.0)                           # the trainer's [-1, 1]

    def draw(self, n_models: int, batch: int, K: int, alpha: float) -> Draws:
        """Independent per model: image indices (labeled from the first n_labeled images, unlabeled
        from all), crops and flips, MixUp weights and partner permutations. No host sync."""
        shape = (batch, n_models)
        lab = torch.randint(0, self.n_labeled, shape, device=self.device).flatten()
        unl = torch.randint(0, self.x_pad.shape[0], shape, device=self.device).flatten()
        rows = (K + 1) * batch
        return Draws(self._images(lab, shape), self.y[lab].view(shape), [self._images(unl, shape) for _ in range(K)],
                     common.sample_lambda(rows * n_models, alpha, self.device).view(rows, n_models),
                     torch.rand(rows, n_models, device=self.device).argsort(dim=0))


# ---- the step ---------------------------------------------------------------------------------
def mixup_per_model(x: Tensor, targets: Tensor, perm: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """common.mixup_pairs for each model along dimension 1: x'[i, n] = lam[i, n] x[i, n] +
    (1 - lam[i, n]) x[perm[i, n], n], the same for the targets (Eq. 10-11)."""
    cols = torch.arange(x.shape[1], device=x.device)
    lam = lam.float()

    def mix(t: Tensor) -> Tensor:
        lam_t = lam.to(t.dtype).view(*lam.shape, *([1] * (t.dim() - 2)))
        return lam_t * t + (1 - lam_t) * t[perm, cols]
    return mix(x), mix(targets.float())


def loss_x_per_model(logits: Tensor, targets: Tensor) -> Tensor:
    """common.soft_xent (MixMatch Eq. 3, L_X) of each model: [B, N, classes] -> [N]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(targets.float() * logp).sum(dim=-1).mean(dim=0)


def loss_u_per_model(logits: Tensor, targets: Tensor) -> Tensor:
    """common.squared_prob_error (MixMatch Eq. 4, L_U) of each model, the mean over rows and
    classes: [B, N, classes] -> [N]."""
    return (targets.float() - torch.softmax(logits.float(), dim=-1)).square().mean(dim=(0, 2))


PACKED_OPS = (mixup_per_model, loss_x_per_model, loss_u_per_model)
ONE_MODEL_OPS = (common.mixup_pairs, common.soft_xent, common.squared_prob_error)       # the trainer's own


def mixmatch_losses(cfg, model, d: Draws, w: float, packed: bool):
    """mixmatch_core.methods.mixmatch `losses` with the MixUp draws given (d.lam, d.perm) instead of drawn
    inside: guess (K passes, BN stats discarded), sharpen, MixUp, the interleaved forward and
    L = L_X + w L_U. Returns (summed loss, L_X, L_U); L_X and L_U are [N] when packed."""
    mix, loss_x, loss_u = PACKED_OPS if packed else ONE_MODEL_OPS
    B, K = d.x.shape[0], len(d.u)
    q = mixmatch_method.guess_labels(model, d.u, cfg.T)
    targets = torch.cat([F.one_hot(d.y, q.shape[-1]).float()] + [q] * K)
    mixed, mixed_t = mix(torch.cat([d.x] + d.u), targets, d.perm, d.lam)
    logits = mixmatch_method.forward_interleaved(model, list(mixed.split(B)), B, cfg.bn_mode)
    lx = loss_x(logits[0].float(), mixed_t[:B])
    lu = loss_u(torch.cat(logits[1:]).float(), mixed_t[B:])
    return (lx + w * lu).sum(), lx, lu


class Step:
    """One optimiser step of a packed model (packed=True) or of one plain model: the losses,
    then the trainer's optimizer_update (backward, Adam, decoupled weight decay, EMA)."""

    def __init__(self, cfg, model: nn.Module, ema_model: nn.Module, packed: bool, amp_ctx, compile_mode=None):
        from mixmatch_core import train
        self.cfg, self.model, self.ema_model, self.packed, self.amp_ctx = cfg, model, ema_model, packed, amp_ctx
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ema_params = list(ema_model.parameters())
        self.wd_params = decay_params(model) if packed else train.decay_params(model)
        self.opt = train.make_optimizer(self.params, cfg.lr)
        self.wd_factor = update_rule(cfg).wd_factor      # the trainer's rule (optim.py)
        self.fwd = train.compiled(model, compile_mode) if compile_mode else model

    def __call__(self, d: Draws, w: float) -> tuple[Tensor, Tensor]:
        from mixmatch_core.train import optimizer_update
        with self.amp_ctx():
            loss, lx, lu = mixmatch_losses(self.cfg, self.fwd, d, w, self.packed)
        optimizer_update(self.opt, loss, self.params, self.ema_params, self.wd_params, self.wd_factor,
                         self.cfg.ema_decay)
        return lx.detach(), lu.detach()


def packed_step(cfg, models: list[nn.Module], ema_models: list[nn.Module], amp_ctx, channels_last: bool,
                compile_mode: str | None = None) -> Step:
    """A Step over N (live, EMA) model pairs packed into one (live, EMA) pair."""
    model = PackedModel(models, channels_last).train()
    ema = PackedModel(ema_models, channels_last).train()
    for p in ema.parameters():
        p.requires_grad_(False)
    return Step(cfg, model, ema, True, amp_ctx, compile_mode)


# ---- the model-compute floor of the two packing forms ------------------------------------------
class Floor:
    """Model compute only for N models (benchmarks/step_time.py's floor (b), packed): K guess
    forwards without grad, then K + 1 forwards and one backward of their summed logits, training
    mode, fixed random inputs; no optimiser, data or losses. `form` "grouped" is PackedModel;
    "vmap" is torch.func: stack_module_state + functional_call under vmap over the model axis
    (BN running statistics as stacked buffers, updated in place under vmap). `compile_mode`
    compiles the grouped form's forward (the trainer's `compiled`); the vmap form stays eager and
    NCHW (stack_module_state stacks contiguous weights; vmap's convolution rule regroups them
    into one grouped convolution itself)."""

    def __init__(self, models: list[nn.Module], form: str, batch: int, K: int, amp_ctx, channels_last: bool,
                 compile_mode: str | None = None):
        n, device = len(models), next(models[0].parameters()).device
        self.amp_ctx, self.form = amp_ctx, form
        if form == "grouped":
            self.model = PackedModel(models, channels_last).train()
            fwd = self.model
            self.inputs = [torch.randn(batch, n, 3, 32, 32, device=device) for _ in range(2 * K + 1)]
        elif form == "vmap":
            from torch.func import functional_call, stack_module_state, vmap
            params, buffers = stack_module_state([copy.deepcopy(m) for m in models])
            self.params = list(params.values())
            base = copy.deepcopy(models[0]).to("meta")

            def one(p, b, x):
                return functional_call(base, (p, b), (x,))
            fwd = lambda x: vmap(one)(params, buffers, x)      # noqa: E731 - [N, B, ...] -> [N, B, classes]
            self.inputs = [torch.randn(n, batch, 3, 32, 32, device=device) for _ in range(2 * K + 1)]
        else:
            raise ValueError(f"form: grouped or vmap, not {form!r}")
        if compile_mode and form == "grouped":
            from mixmatch_core.train import compiled
            fwd = compiled(self.model, compile_mode)
        self.fwd, self.K = fwd, K

    def __call__(self) -> None:
        with torch.no_grad(), self.amp_ctx():
            for x in self.inputs[:self.K]:
                self.fwd(x)
        with self.amp_ctx():
            logits = torch.cat([self.fwd(x) for x in self.inputs[self.K:]])
        grads = self.params if self.form == "vmap" else list(self.model.parameters())
        torch.autograd.grad(logits.float().sum(), grads)


# ---- equality: a packed step against N separate steps -------------------------------------------
# Tolerances of a packed step against N separate steps in fp32. Losses: relative difference
# (measured on CPU: <= 1e-6). Tensors: |packed - separate| / |separate - initial| in L2 norm per
# tensor and model, i.e. the difference as a share of what training changed (measured on CPU, WRN-10-1:
# <= 0.06% after one step and <= 0.4% after two; Adam's per-element normalisation amplifies rounding
# noise where gradients nearly cancel, so it grows with steps; a real coupling is tens of %).
LOSS_RTOL = 1e-5
TENSOR_RTOL = 0.02
RUNNING_MEAN_ATOL_STD = 1e-4      # BN running means, in running standard deviations
CHECK_OVERRIDES = {"wd": 5.0, "ema_decay": 0.5}   # weight decay (1% a step) and EMA large enough to see


def conv_bias_keys(model: nn.Module) -> set[str]:
    """State-dict keys of convolution biases (zero true gradient in these models: see above)."""
    return {f"{name}.bias" for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.bias is not None}


def _rel_diffs(packed_sds: list[dict], separate: list[nn.Module], initial: list[dict],
               biases: set[str]) -> dict[str, float]:
    """Largest differences over the N models, by kind: `weights` (trainable tensors but the
    convolution biases) and `bn_running_var`: |packed - separate| / |separate - initial| per
    tensor (L2); `bn_running_mean`: |packed - separate| / sqrt(running_var), in standard
    deviations (a running mean also averages the upstream convolution bias, noise in fp32);
    `conv_biases_abs`: the largest absolute difference of the convolution biases."""
    out = {"weights": 0.0, "bn_running_var": 0.0, "bn_running_mean": 0.0, "conv_biases_abs": 0.0}
    for p_sd, model, init in zip(packed_sds, separate, initial):
        for key, ref in model.state_dict().items():
            diff = (p_sd[key].float() - ref.float()).abs()
            if key.endswith("num_batches_tracked"):
                kind, value = "bn_running_var", float("inf") if diff.item() else 0.0
            elif key in biases:
                kind, value = "conv_biases_abs", diff.max().item()
            elif key.endswith("running_mean"):
                var = model.state_dict()[key.replace("running_mean", "running_var")]
                kind, value = "bn_running_mean", (diff / var.sqrt()).max().item()
            else:
                kind = "bn_running_var" if key.endswith("running_var") else "weights"
                value = diff.norm().item() / max((ref.float() - init[key].float()).norm().item(), 1e-30)
            out[kind] = max(out[kind], value)
    return out


def equality_check(model_name: str, n_models: int, steps: int, batch: int, device: torch.device,
                   seed: int = 0) -> dict:
    """Train N models for `steps` MixMatch steps twice, packed and one by one (the trainer's
    functions), from the same initial weights and the same per-model draws (each model its own
    initial weights, images, augmentations, MixUp weights and partners), in fp32 (the caller
    disables TF32). Returns, per step, the largest differences (see `_rel_diffs`) of the live
    models, their BN running statistics and the EMA models, and whether all are within tolerance."""
    import contextlib

    from mixmatch_core.config import resolve
    from mixmatch_core.train import build_models
    cfg = resolve({"model": model_name, "batch_size": batch, "device": str(device), "channels_last": False,
                   "progress": False, **CHECK_OVERRIDES})
    torch.manual_seed(seed)
    pairs = [build_models(cfg, 10, 3, device) for _ in range(n_models)]
    initial = [(copy.deepcopy(m.state_dict()), copy.deepcopy(e.state_dict())) for m, e in pairs]
    amp = contextlib.nullcontext
    packed = packed_step(cfg, [m for m, _ in pairs], [e for _, e in pairs], amp, channels_last=False)
    separate = [Step(cfg, m, e, False, amp) for m, e in pairs]
    gen = torch.Generator().manual_seed(seed + 1)
    data = PackedData(torch.randint(0, 256, (4 * batch, 32, 32, 3), generator=gen, dtype=torch.uint8),
                      torch.randint(0, 10, (4 * batch,), generator=gen), batch, AugmentSpec(flip=True, pad=4), device)
    biases, per_step = conv_bias_keys(pairs[0][0]), []
    for _ in range(steps):
        d = data.draw(n_models, batch, cfg.K, cfg.alpha)
        lx, lu = packed(d, cfg.lambda_u)            # full unlabeled weight: L_U counts from step 0
        ref = torch.stack([torch.stack(step(d.one(n), cfg.lambda_u)) for n, step in enumerate(separate)], 1)
        row = {"loss_rel": ((torch.stack([lx, lu]) - ref).abs() / ref.abs().clamp_min(1e-12)).max().item()}
        row.update(_rel_diffs(unpack(packed.model), [m for m, _ in pairs], [i for i, _ in initial], biases))
        ema = _rel_diffs(unpack(packed.ema_model), [e for _, e in pairs], [i for _, i in initial], biases)
        row.update(ema_weights=ema["weights"], ema_conv_biases_abs=ema["conv_biases_abs"])
        row["ok"] = row["loss_rel"] <= LOSS_RTOL and row["bn_running_mean"] <= RUNNING_MEAN_ATOL_STD and \
            max(row["weights"], row["bn_running_var"], row["ema_weights"]) <= TENSOR_RTOL
        per_step.append(row)
    return {"model": model_name, "n_models": n_models, "batch": batch, "dtype": "float32", "steps": per_step,
            "within_tolerance": all(r["ok"] for r in per_step),
            "tolerance": {"loss_rel": LOSS_RTOL, "tensor_rel": TENSOR_RTOL,
                          "bn_running_mean_std": RUNNING_MEAN_ATOL_STD, "conv_biases": "reported, not compared"}}
