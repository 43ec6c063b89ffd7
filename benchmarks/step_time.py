"""Benchmark: seconds per MixMatch training step against the model-compute floor and a naive port.

Owns: three step functions on one device, timed in ONE process so their ratios are meaningful:

(a) project  the trainer's full step, built from the same functions `mixmatch_core.train.train`
             calls (`train_step`, `make_optimizer`, `optimizer_update`): sampling from the
             device-resident uint8 pool, batched crop/flip, label guessing (K passes, BN stats
             discarded), sharpening, per-sample MixUp, the interleaved forward (3 passes of B),
             losses, backward, Adam, decoupled weight decay, EMA, and the on-device loss
             accumulation. `tests/test_speed_paths.py` checks that N of these steps leave the
             model bit-identical to `train()` run for N steps.
(b) floor    model compute only: K forwards of B random images without grad, then three
             forwards of B (the interleave's passes; the same compute the real step must do)
             and one backward of their summed logits. Same model, dtype and memory format,
             training mode, no optimiser, no data, no losses.
(c) naive    the step as common PyTorch ports write it (YU1ut/MixMatch-pytorch style): a
             torch.utils.data.DataLoader (num_workers=0, shuffle, drop_last) over the numpy
             images with per-image torchvision transforms (PIL, RandomCrop(reflect pad),
             RandomHorizontalFlip, ToTensor, Normalize to [-1, 1]), a persistent iterator
             re-created when exhausted, two labeled/unlabeled loaders (TransformTwice for the
             K = 2 views), separate forward passes (guess x2, interleaved x3, BN stats not
             frozen), one lambda per batch from numpy, `.item()` of the three losses every step
             for logging (a host sync on GPU), default `Adam(lr)` and a per-tensor Python loop
             for the EMA and weight decay. Plain fp32 NCHW unless `--naive-setting` says
             otherwise.

Timing: every configuration is warmed up, then the configurations are timed round-robin
(repeat 1 of all, repeat 2 of all, ...) so that a change of machine load hits them alike;
each repeat times `--steps` consecutive steps (wall clock; torch.cuda.synchronize around
them on GPU) and the reported value is the median over repeats of seconds per step.

    python -m benchmarks.step_time [--model wrn28_2] [--device cpu|cuda] [--steps 2] [--warmup 1]
        [--repeats 5] [--settings auto | all | fp32,channels_last,bf16,bf16_channels_last]
        [--amp none|bf16] [--channels-last] [--naive-setting fp32] [--threads N] [--out FILE.json]

`--amp` / `--channels-last` select that one setting for (a) and (b); without them `--settings`
decides: `auto` measures the four settings (fp32, channels_last, bf16, bf16_channels_last) where
bf16 is native, and only fp32 and channels_last where it is not (an AVX2-only CPU runs bf16
convolutions 10-25x slower than fp32; `--settings all` measures them anyway). Data: CIFAR-10
from ../shared/datasets/cifar10.npz (relative to the repository root) when present, else
synthetic uint8 32x32x3 images of the same shape; the output says which.
Targets (the issue): (a)/(b) <= 1.10 and (c)/(a) >= 2.0 (>= 1.3 in fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .results import write_result

REPO = Path(__file__).resolve().parents[1]
CIFAR_NPZ = REPO / ".." / "shared" / "datasets" / "cifar10.npz"

# name -> (amp, channels_last)
SETTINGS = {
    "fp32": ("none", False),
    "channels_last": ("none", True),
    "bf16": ("bf16", False),
    "bf16_channels_last": ("bf16", True),
}
TARGET_A_OVER_B = 1.10
TARGET_C_OVER_A = 2.0
TARGET_C_OVER_A_FP32 = 1.3


def setting_name(amp: str, channels_last: bool) -> str:
    return {v: k for k, v in SETTINGS.items()}[(amp, channels_last)]


def amp_context(amp: str, device: torch.device):
    if amp == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_native(device: torch.device) -> bool | None:
    """Whether bf16 convolutions have hardware support (CPU: oneDNN bf16, i.e. AVX-512 BF16 or
    AMX; without it autocast runs bf16 convs through a slow reference path)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - private API; unknown on other builds
        return None


# ---- data ---------------------------------------------------------------------------------------
def synthetic_dataset(n_train: int = 50000, n_test: int = 10000, seed: int = 0):
    """Random uint8 32x32x3 images with CIFAR-10's shapes and augmentation (timing only)."""
    from mixmatch_core.data import Dataset, augment_spec
    from mixmatch_core.datasets import dataset_info
    rs = np.random.RandomState(seed)
    y_train = np.arange(n_train, dtype=np.int64) % 10
    y_test = np.arange(n_test, dtype=np.int64) % 10
    return Dataset("synthetic", rs.randint(0, 256, (n_train, 32, 32, 3), dtype=np.uint8), y_train,
                   rs.randint(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), y_test, 10,
                   augment_spec(dataset_info("cifar10"), 32, 32))


def load_data(data: str):
    """(Dataset, config dataset string, description). `data` is 'auto', 'synthetic' or npz:PATH."""
    from mixmatch_core.data import load_dataset
    if data == "auto":
        data = f"npz:{CIFAR_NPZ.resolve()}" if CIFAR_NPZ.exists() else "synthetic"
    if data == "synthetic":
        why = "" if CIFAR_NPZ.exists() else "; no CIFAR-10 npz found"
        return synthetic_dataset(), "cifar10", f"synthetic uint8 32x32x3 (CIFAR-10 shapes{why})"
    path = data[4:] if data.startswith("npz:") else data
    ds = load_dataset(f"npz:{path}", "data")
    return ds, f"npz:{path}", f"real: {path} ({len(ds.x_train)} train images)"


def make_config(dataset: str, model: str, batch: int, K: int, n_labeled: int, amp: str, channels_last: bool,
                device: str, compile_: bool = False):
    from mixmatch_core.config import resolve
    return resolve({"dataset": dataset, "model": model, "batch_size": batch, "K": K, "n_labeled": n_labeled,
                    "amp": amp, "channels_last": channels_last, "device": device, "compile": compile_,
                    "progress": False})


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def compile_model(model, mode: str | None):
    """The trainer's torch.compile (`mixmatch_core.train.compiled`, config compile=true with
    compile_mode=MODE) in `mode`; None: the model itself."""
    if mode is None:
        return model
    from mixmatch_core.train import compiled
    return compiled(model, mode)


def with_layout(data, channels_last: bool):
    """The same device-resident images with another output memory format (no copy of the pool)."""
    d = copy.copy(data)
    d.channels_last = channels_last
    return d


# ---- (a) the project's step ----------------------------------------------------------------------
class ProjectStep:
    """The step of `mixmatch_core.train.train`: the same setup order (two models, EMA copy,
    channels_last, Adam) and the same loop body, one call = one optimiser step."""

    def __init__(self, cfg, data, compile_mode: str | None = None):
        from mixmatch_core.optim import build_optimizer, update_rule
        from mixmatch_core.train import _amp_context, build_models, decay_params
        self.cfg, self.data = cfg, data
        device = data.device
        n_classes = data.n_classes
        model, ema_model = build_models(cfg, n_classes, data.in_channels, device, data.image_size[1])
        self.model, self.ema_model = model, ema_model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ema_params = list(ema_model.parameters())
        self.wd_params = decay_params(model)
        self.opt = build_optimizer(cfg, self.params)
        self.rule = update_rule(cfg)                   # the trainer's wd rule (optim.py)
        mode = compile_mode or (cfg.compile_mode if cfg.compile else None)
        self.fwd, self.fwd_ema = compile_model(model, mode), compile_model(ema_model, mode)
        from mixmatch_core import methods, strong
        self.method = methods.load(cfg.method)
        self.strong = strong.build(cfg, self.method.views(cfg), device)   # the run's strong view, if any
        self.amp_ctx = _amp_context(cfg, device)
        self.n_classes = n_classes
        self.acc = torch.zeros(3, device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.step = 0

    def __call__(self) -> None:
        from mixmatch_core.optim import lr_at
        from mixmatch_core.train import optimizer_update, train_step
        cfg = self.cfg
        w = self.method.unlabeled_weight(cfg, self.step)
        self.opt.set_lr(lr_at(cfg, self.step))
        loss, lx, lu = train_step(cfg, self.method, self.fwd, self.fwd_ema, self.data, self.amp_ctx, w, self.strong)
        optimizer_update(self.opt, loss, self.params, self.ema_params, self.wd_params, self.rule.wd_factor,
                         cfg.ema_decay, self.rule.l2)
        with torch.no_grad():
            self.acc += torch.stack([loss.detach(), lx.detach(), lu.detach()])
            self.bad |= ~torch.isfinite(loss.detach())
        self.step += 1


# ---- (b) the model-compute floor -----------------------------------------------------------------
class FloorStep:
    """K no-grad forwards of B images + three forwards of B and one backward: model compute only."""

    def __init__(self, model_name: str, n_classes: int, in_channels: int, hw: tuple[int, int], batch: int, K: int,
                 amp: str, channels_last: bool, device: torch.device, compile_: bool = False,
                 compile_mode: str | None = None):
        from mixmatch_core.models import build_model
        model = build_model(model_name, n_classes, in_channels).to(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt).train()
        self.model = model
        self.fwd = compile_model(model, compile_mode or ("default" if compile_ else None))
        self.amp_ctx = amp_context(amp, device)

        def images():
            return torch.randn(batch, in_channels, *hw, device=device).contiguous(memory_format=fmt)
        self.guess_inputs = [images() for _ in range(K)]
        self.train_inputs = [images() for _ in range(K + 1)]  # the interleave: K + 1 passes of B

    def __call__(self) -> None:
        with torch.no_grad(), self.amp_ctx():
            for u in self.guess_inputs:
                self.fwd(u)
        with self.amp_ctx():
            logits = [self.fwd(x) for x in self.train_inputs]
        self.model.zero_grad(set_to_none=True)
        torch.cat(logits).float().sum().backward()


# ---- (c) the naive port ---------------------------------------------------------------------------
class _ImageSet(torch.utils.data.Dataset):
    """numpy uint8 HWC images -> PIL -> torchvision transforms, one image per __getitem__."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform, views: int):
        self.x, self.y, self.transform, self.views = x, y, transform, views

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        from PIL import Image
        a = self.x[i]
        img = Image.fromarray(a if a.shape[2] == 3 else a[..., 0])
        if self.views == 1:
            return self.transform(img), int(self.y[i])
        return tuple(self.transform(img) for _ in range(self.views)), int(self.y[i])  # TransformTwice


class NaiveStep:
    """A MixMatch step as common PyTorch ports write it (see the module docstring)."""

    def __init__(self, cfg, ds, lab_idx: np.ndarray, unl_idx: np.ndarray, device: torch.device,
                 amp: str = "none", channels_last: bool = False, compile_mode: str | None = None):
        from torchvision import transforms as T
        from mixmatch_core.models import build_model
        self.cfg, self.device = cfg, device
        h, c = ds.x_train.shape[1], ds.x_train.shape[3]
        aug = [T.RandomCrop(h, padding=ds.augment.pad, padding_mode="reflect")]
        aug += [T.RandomHorizontalFlip()] if ds.augment.flip else []
        tf = T.Compose(aug + [T.ToTensor(), T.Normalize((0.5,) * c, (0.5,) * c)])  # [0, 1] -> [-1, 1]
        B = cfg.batch_size
        kw = dict(batch_size=B, shuffle=True, num_workers=0, drop_last=True)
        self.lab_loader = torch.utils.data.DataLoader(_ImageSet(ds.x_train[lab_idx], ds.y_train[lab_idx], tf, 1), **kw)
        self.unl_loader = torch.utils.data.DataLoader(_ImageSet(ds.x_train[unl_idx], ds.y_train[unl_idx], tf, cfg.K),
                                                      **kw)
        self.lab_it, self.unl_it = iter(self.lab_loader), iter(self.unl_loader)
        self.n_classes = ds.n_classes
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = build_model(cfg.model, ds.n_classes, c).to(device).to(memory_format=self.fmt).train()
        self.ema_model = copy.deepcopy(self.model)
        for p in self.ema_model.parameters():
            p.detach_()
        self.fwd = compile_model(self.model, compile_mode)     # ports that compile wrap the model
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.amp_ctx = amp_context(amp, device)
        self.log: list[tuple[float, float, float]] = []
        self.load_s: list[float] = []
        self.step = 0

    def _next(self, which: str):
        try:
            return next(getattr(self, which))
        except StopIteration:
            setattr(self, which, iter(self.lab_loader if which == "lab_it" else self.unl_loader))
            return next(getattr(self, which))

    def __call__(self) -> None:
        from mixmatch_core.methods.mixmatch import interleave
        cfg, dev, B = self.cfg, self.device, self.cfg.batch_size
        t0 = time.perf_counter()
        x, y = self._next("lab_it")
        us, _ = self._next("unl_it")
        self.load_s.append(time.perf_counter() - t0)   # the host-side input pipeline alone
        x = x.to(dev).contiguous(memory_format=self.fmt)
        us = [u.to(dev).contiguous(memory_format=self.fmt) for u in us]
        targets_x = torch.zeros(B, self.n_classes, device=dev).scatter_(1, y.to(dev).view(-1, 1), 1)
        with torch.no_grad(), self.amp_ctx():
            p = sum(torch.softmax(self.fwd(u).float(), dim=1) for u in us) / len(us)
            pt = p ** (1 / cfg.T)
            targets_u = (pt / pt.sum(dim=1, keepdim=True)).detach()
        all_inputs = torch.cat([x] + us)
        all_targets = torch.cat([targets_x] + [targets_u] * len(us))
        lam = float(np.random.beta(cfg.alpha, cfg.alpha))   # one lambda per batch
        lam = max(lam, 1 - lam)
        idx = torch.randperm(all_inputs.size(0), device=dev)
        mixed_input = lam * all_inputs + (1 - lam) * all_inputs[idx]
        mixed_target = lam * all_targets + (1 - lam) * all_targets[idx]
        mixed = interleave(list(torch.split(mixed_input, B)), B)
        with self.amp_ctx():
            logits = [self.fwd(mixed[0])] + [self.fwd(m) for m in mixed[1:]]
        logits = interleave(logits, B)
        logits_x, logits_u = logits[0].float(), torch.cat(logits[1:]).float()
        lx = -torch.mean(torch.sum(F.log_softmax(logits_x, dim=1) * mixed_target[:B], dim=1))
        lu = torch.mean((torch.softmax(logits_u, dim=1) - mixed_target[B:]) ** 2)
        w = cfg.lambda_u * min(self.step / cfg.rampup_steps, 1.0)
        loss = lx + w * lu
        self.log.append((loss.item(), lx.item(), lu.item()))   # AverageMeter updates: host syncs
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        with torch.no_grad():    # WeightEMA.step(): a Python loop over tensors
            one_minus = 1.0 - cfg.ema_decay
            for prm, ema in zip(self.model.parameters(), self.ema_model.parameters()):
                ema.mul_(cfg.ema_decay)
                ema.add_(prm * one_minus)
                if prm.dim() > 1:
                    prm.mul_(1 - cfg.wd * cfg.lr)
        self.step += 1


# ---- timing ---------------------------------------------------------------------------------------
def time_round_robin(fns: dict[str, callable], steps: int, warmup: int, repeats: int, device: torch.device,
                     log=print) -> dict[str, list[float]]:
    """Seconds per step of each function, one value per repeat (see the module docstring)."""
    for name, fn in fns.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        sync(device)
        log(f"  warm-up {name}: {warmup} step(s) in {time.perf_counter() - t0:.1f} s")
    out: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            out[name].append((time.perf_counter() - t0) / steps)
        log(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {v[-1]:.3f}" for n, v in out.items()))
    return out


def chosen_settings(args, device) -> tuple[list[str], list[str]]:
    """The settings to measure and those skipped (bf16 where it is not native, unless asked)."""
    skipped: list[str] = []
    if args.amp is not None or args.channels_last:
        names = [setting_name(args.amp or "none", args.channels_last)]
    elif args.settings == "all" or (args.settings == "auto" and bf16_native(device) is not False):
        names = list(SETTINGS)
    elif args.settings == "auto":
        # Without native bf16 a bf16 step takes 10-25x an fp32 one: measure it only on request.
        names, skipped = ["fp32", "channels_last"], ["bf16", "bf16_channels_last"]
    else:
        names = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [n for n in names + [args.naive_setting] if n not in SETTINGS]
    if bad:
        raise SystemExit(f"step_time: unknown setting(s) {', '.join(bad)}; allowed: {', '.join(SETTINGS)}")
    return names, skipped


def build_steps(args, names: list[str], ds, ds_name: str, data, base_cfg, device) -> dict[str, callable]:
    """(a) the project's step and (b) the floor per setting, then (c) the naive port: name -> step."""
    from mixmatch_core.data import split_labeled
    hw, cin, ncls = data.image_size, data.in_channels, data.n_classes
    fns: dict[str, callable] = {}
    for n in names:
        amp, cl = SETTINGS[n]
        cfg = make_config(ds_name, args.model, args.batch, args.K, args.n_labeled, amp, cl, str(device), args.compile)
        fns[f"a:{n}"] = ProjectStep(cfg, with_layout(data, cl))
        fns[f"b:{n}"] = FloorStep(args.model, ncls, cin, hw, args.batch, args.K, amp, cl, device, args.compile)
    if not args.no_naive:
        lab, unl, _ = split_labeled(ds.y_train, args.n_labeled, ds.n_classes, 1, 0)
        amp, cl = SETTINGS[args.naive_setting]
        fns[f"c:{args.naive_setting}"] = NaiveStep(base_cfg, ds, lab, unl, device, amp, cl)
    return fns


def setting_rows(names: list[str], med: dict[str, float], images: int, c_key: str) -> list[dict]:
    """One row per setting: (a), (b), their ratio and difference, images/s, and (c)/(a)."""
    rows = []
    for n in names:
        a, b = med[f"a:{n}"], med[f"b:{n}"]
        row = {"setting": n, "a_project_s": a, "b_floor_s": b, "a_over_b": a / b, "a_minus_b_s": a - b,
               "a_images_per_s": images / a}
        if c_key in med:
            row["c_over_a"] = med[c_key] / a
        rows.append(row)
    return rows


def result_record(args, device, data_desc: str, names: list[str], skipped: list[str], timing: dict,
                  fns: dict) -> dict:
    """The JSON record: the machine, the setup, the timings (`timing`: per_rep, med, wall,
    load0) and one row per setting in `names`."""
    from mixmatch_core.train import device_name
    per_rep, med = timing["per_rep"], timing["med"]
    c_key = f"c:{args.naive_setting}"
    rows = setting_rows(names, med, args.batch * (1 + args.K), c_key)   # images: labeled + K unlabeled views
    result = {
        "benchmark": "step_time",
        "model": args.model, "device": str(device), "device_name": device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else None,
        "bf16_native": bf16_native(device),
        "batch": args.batch, "K": args.K, "n_labeled": args.n_labeled, "compile": args.compile,
        "data": data_desc, "steps_per_repeat": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "floor_definition": f"{args.K} no-grad forwards of {args.batch} + {args.K + 1} forwards of {args.batch} "
                            "and one backward of their summed logits (model compute only)",
        "naive_definition": "DataLoader(num_workers=0) + per-image torchvision transforms (PIL), persistent "
                            "iterator, one lambda per batch, .item() of 3 losses per step, default Adam, "
                            f"per-tensor EMA loop; setting {args.naive_setting}",
        "load_avg_before": timing["load0"], "load_avg_after": os.getloadavg(), "timed_wall_s": timing["wall"],
        "skipped_settings": skipped,
        "seconds_per_step_per_repeat": per_rep, "median_seconds_per_step": med,
        "naive_s": med.get(c_key),
        "naive_input_pipeline_s": statistics.median(fns[c_key].load_s) if c_key in fns else None,
        "rows": rows,
        "targets": {"a_over_b_max": TARGET_A_OVER_B, "c_over_a_min": TARGET_C_OVER_A,
                    "c_over_a_min_fp32": TARGET_C_OVER_A_FP32},
    }
    if c_key in med:
        best = min(rows, key=lambda r: r["a_project_s"])
        result["best_setting"] = best["setting"]
        result["c_over_best_a"] = med[c_key] / best["a_project_s"]
    return result


def run(args) -> dict:
    """Load the data, build every step, time them round-robin; the JSON record."""
    from mixmatch_core.data import DeviceData
    from mixmatch_core.precision import set_fp32_precision
    from mixmatch_core.train import resolve_device, seed_everything
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if not args.quiet else (lambda m: None)
    names, skipped = chosen_settings(args, device)

    load0 = os.getloadavg()
    seed_everything(0)
    t0 = time.perf_counter()
    ds, ds_name, data_desc = load_data(args.data)
    base_cfg = make_config(ds_name, args.model, args.batch, args.K, args.n_labeled, "none", False, str(device),
                           args.compile)
    set_fp32_precision(base_cfg.tf32, device)   # the trainer's arithmetic (strict fp32 on CUDA) for every step
    data = DeviceData.build(ds, args.n_labeled, 1, 0, device, False)
    log(f"data: {data_desc}; on {device} in {time.perf_counter() - t0:.1f} s")
    fns = build_steps(args, names, ds, ds_name, data, base_cfg, device)

    t0 = time.perf_counter()
    per_rep = time_round_robin(fns, args.steps, args.warmup, args.repeats, device, log)
    wall = time.perf_counter() - t0
    med = {k: statistics.median(v) for k, v in per_rep.items()}
    timing = {"per_rep": per_rep, "med": med, "wall": wall, "load0": load0}
    return result_record(args, device, data_desc, names, skipped, timing, fns)


def print_table(r: dict) -> None:
    print(f"step_time: {r['model']} on {r['device_name']} (torch {r['torch']}, {r['threads']} threads, "
          f"bf16 native: {r['bf16_native']}), batch {r['batch']}, K={r['K']}")
    print(f"data: {r['data']}; median of {r['repeats']} repeats x {r['steps_per_repeat']} step(s) after "
          f"{r['warmup']} warm-up; load avg before {r['load_avg_before'][0]:.1f}, after {r['load_avg_after'][0]:.1f}")
    print(f"{'setting':<20} {'(a) project s':>14} {'(b) floor s':>12} {'(a)/(b)':>8} {'(c)/(a)':>8} {'img/s (a)':>10}")
    for row in r["rows"]:
        ca = f"{row['c_over_a']:.2f}" if "c_over_a" in row else "-"
        print(f"{row['setting']:<20} {row['a_project_s']:>14.3f} {row['b_floor_s']:>12.3f} {row['a_over_b']:>8.3f} "
              f"{ca:>8} {row['a_images_per_s']:>10.1f}")
    if r.get("naive_s") is not None:
        naive_setting = r["naive_definition"].rsplit("setting ", 1)[-1]
        print(f"(c) naive port ({naive_setting}): {r['naive_s']:.3f} s/step, of which "
              f"{r['naive_input_pipeline_s']:.3f} s DataLoader + per-image transforms; vs the fastest (a) "
              f"({r['best_setting']}): (c)/(a) = {r['c_over_best_a']:.2f}")
    ok_ab = all(row["a_over_b"] <= TARGET_A_OVER_B for row in r["rows"])
    line = f"targets: (a)/(b) <= {TARGET_A_OVER_B}: {'met' if ok_ab else 'NOT met'} (all settings)"
    if r.get("naive_s") is not None:
        best = r["c_over_best_a"]
        fp32 = next((row["c_over_a"] for row in r["rows"] if row["setting"] == "fp32"), None)
        line += f"; (c)/(a) >= {TARGET_C_OVER_A} (fastest setting): {'met' if best >= TARGET_C_OVER_A else 'NOT met'}"
        if fp32 is not None:
            ok = fp32 >= TARGET_C_OVER_A_FP32
            line += f"; (c)/(a) >= {TARGET_C_OVER_A_FP32} in fp32: {'met' if ok else 'NOT met'}"
    print(line)
    if r["bf16_native"] is False:
        print("note: this device has no native bf16 convolution (oneDNN bf16 unsupported, e.g. AVX2 only): "
              "bf16 autocast runs a slow reference path here"
              + (f"; skipped {', '.join(r['skipped_settings'])} (--settings all measures them)"
                 if r["skipped_settings"] else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_time", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wrn28_2")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--steps", type=int, default=2, help="steps per timed repeat")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration first")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    p.add_argument("--settings", default="auto", help="auto (all four; only fp32 and channels_last where bf16 "
                   "is not native), all, or a comma list of " + ", ".join(SETTINGS))
    p.add_argument("--amp", choices=("none", "bf16"), default=None, help="measure only this amp setting")
    p.add_argument("--channels-last", action="store_true", help="measure only the channels_last setting")
    p.add_argument("--naive-setting", default="fp32", help="setting of the naive port (c) (default fp32)")
    p.add_argument("--no-naive", action="store_true", help="skip (c)")
    p.add_argument("--batch", type=int, default=64, help="labeled images per step (the paper: 64)")
    p.add_argument("--K", type=int, default=2)
    p.add_argument("--n-labeled", type=int, default=250)
    p.add_argument("--data", default="auto", help="auto (CIFAR-10 npz if present, else synthetic) | synthetic | "
                   "npz:PATH")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in (a) and (b)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    for k in ("steps", "repeats", "batch", "K"):
        if getattr(args, k) < 1:
            p.error(f"--{k} must be >= 1")
    r = run(args)
    print_table(r)
    write_result(r, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
