"""The training loop: one run of any registered method from a resolved Config.

Owns: device and RNG setup, the optimiser (Adam + the official decoupled weight decay), the
parameter EMA, the step (sampling and augmenting the batches on the device, then the method's
losses from mixmatch_core/methods/<method>.py, backward and updates), evaluation of the EMA
and live models, the reporting rule (median of the last N
evaluations), atomic checkpoints with exact resume, non-finite-loss detection, the progress
bar, and handing metrics/artifacts to the tracker. It knows nothing of sweeps or Optuna: a
caller may pass `on_eval` (e.g. to report to a pruner), `still_owner` (a lease: a queue
that can hand a run to another process) and a `tracker`.

GPU discipline (airbench): images live on the device as uint8, batches are sampled and
augmented there, and losses are accumulated on the device; the host reads them once per
`log_every` steps (the only sync points are logging, evaluation and checkpoints).
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from . import methods
from .config import Config, ConfigError
from .data import DeviceData, load_dataset
from .models import build_model
from .report import final_metrics, write_run_artifacts

CKPT_NAME = "ckpt.pt"


class TrainingFailed(RuntimeError):
    """The run failed for a reason that is the run's, not the user's (e.g. a NaN loss)."""


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; the message names the file."""


class RunTakenOver(RuntimeError):
    """`still_owner()` said no: another process now trains this run. This one stops before
    writing anything of the current evaluation and leaves the tracked run as it is."""


# ---- setup -------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' requested but CUDA is not available; use device=cpu or auto")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def decay_params(model: nn.Module) -> list[torch.Tensor]:
    """Conv and linear kernels only: the official code decays variables named 'kernel' (no
    biases, no batch-norm parameters)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def build_models(cfg: Config, n_classes: int, in_channels: int, device: torch.device,
                 image_width: int = 32) -> tuple[nn.Module, nn.Module]:
    """The live model and its EMA copy (same initial weights, no gradients), both in training
    mode: the EMA model is switched to eval() for evaluation and, with ema_guess, guesses
    labels in training mode like the live model."""
    shape = dict(scales=cfg.scales, image_width=image_width)   # WRN stages: cfg.scales, 0 = official auto
    model = build_model(cfg.model, n_classes, in_channels, **shape).to(device)
    ema_model = build_model(cfg.model, n_classes, in_channels, **shape).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        ema_model = ema_model.to(memory_format=torch.channels_last)
    ema_model.load_state_dict(model.state_dict())
    for p in ema_model.parameters():
        p.requires_grad_(False)
    return model.train(), ema_model.train()


@torch.no_grad()
def ema_update(ema_params: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * param, on every trainable parameter (TF's
    ExponentialMovingAverage with a fixed decay), fused over tensors."""
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def make_optimizer(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with a constant lr (official: 0.002, no L2 term in the loss). foreach=True is
    PyTorch's default on CUDA; on CPU it replaces a Python loop over the ~100 parameter tensors
    by multi-tensor ops with the same arithmetic, bit for bit (WRN-28-2 on 2 cores: about 1.6x
    faster optimiser step; benchmarks/step_time.py)."""
    return torch.optim.Adam(params, lr=lr, foreach=True)


def optimizer_update(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.Tensor],
                     ema_params: list[torch.Tensor], wd_params: list[torch.Tensor], wd_factor: float,
                     ema_decay: float) -> None:
    """Everything a step does after its losses: backward, the Adam step, the official decoupled
    weight decay (kernels *= wd_factor, no L2 term) and the parameter EMA. No host sync."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        if wd_factor != 1.0:
            torch._foreach_mul_(wd_params, wd_factor)
        ema_update(ema_params, params, ema_decay)


def compiled(model: nn.Module, mode: str) -> nn.Module:
    """torch.compile of the model's forward (AOTAutograd compiles its backward too). The graph
    is capture-safe: static shapes (every chunk of a step has batch_size rows), no host sync,
    and the step's randomness (MixUp's Beta draws and permutations, augmentation offsets) is
    drawn on the device outside it. Models of one architecture share the compiled code: a
    worker compiles once per process, not once per cell (parameters are graph inputs)."""
    return torch.compile(model, mode=None if mode == "default" else mode)


@torch.no_grad()
def copy_buffers(dst: nn.Module, src: nn.Module) -> None:
    """The EMA model reads batch-norm running statistics from the live model (not averaged)."""
    for bd, bs in zip(dst.buffers(), src.buffers()):
        bd.copy_(bs)


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, split: str, amp_ctx, n_classes: int) -> torch.Tensor:
    """Confusion matrix [true, predicted] on the device (inference mode, running BN stats)."""
    was_training = model.training
    model.eval()
    conf = torch.zeros(n_classes, n_classes, dtype=torch.long, device=data.device)
    for x, y in data.eval_batches(split):
        with amp_ctx():
            pred = model(x).argmax(1)
        conf += torch.bincount(y * n_classes + pred, minlength=n_classes ** 2).view(n_classes, n_classes)
    model.train(was_training)
    return conf


def error_pct(conf: torch.Tensor) -> float:
    return float(100.0 * (1.0 - conf.diag().sum().item() / max(conf.sum().item(), 1)))


# ---- checkpoints -------------------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: write a temporary file in the same directory, fsync, rename over the old one.
    A kill at any moment leaves either the previous or the new checkpoint, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_out_dir(out_dir: str) -> None:
    """Fail in one line, creating nothing, when `out_dir` cannot be created or written: its
    nearest existing ancestor must be a writable directory (e.g. not a regular file)."""
    probe = Path(out_dir).absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        why = "is not a directory" if not probe.is_dir() else "is not writable"
        raise ConfigError(f"out_dir: cannot create '{out_dir}' ('{probe}' {why}); choose a writable out_dir")


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory and prove it writable (a probe file), before the run is started
    or logged; then remove temporary files left by a process killed while writing a checkpoint."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".ckpt-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"out_dir: cannot write the run directory '{run_dir}' ({e.strerror or e}); "
                          "choose a writable out_dir") from None
    for stray in run_dir.glob(".ckpt-*.tmp"):
        with contextlib.suppress(OSError):
            stray.unlink()


def load_checkpoint(path: Path, cfg: Config) -> dict:
    """Load with weights_only=True (no arbitrary pickle); reject foreign or corrupt files."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means unusable
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a mixmatch checkpoint "
                              f"({type(e).__name__}); rerun with --restart to start this run over") from None
    if not isinstance(state, dict) or state.get("cell_key") != cfg.cell_key:
        raise CheckpointError(f"checkpoint '{path}' belongs to another config (cell_key "
                              f"{state.get('cell_key') if isinstance(state, dict) else '?'} != {cfg.cell_key}); "
                              "rerun with --restart to start this run over")
    return state


# ---- the run -----------------------------------------------------------------------------------
@dataclass
class RunResult:
    status: str                      # FINISHED | FAILED
    metrics: dict[str, float]        # error, error_last, error_best, val_error, ... (in %)
    history: list[dict]              # one dict per evaluation
    run_id: str | None = None
    run_dir: str = ""
    reason: str = ""
    steps_per_s: float = 0.0


def _amp_context(cfg: Config, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if cfg.amp == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def train(cfg: Config, tracker=None, on_eval: Callable[[int, dict], None] | None = None,
          restart: bool = False, still_owner: Callable[[], bool] | None = None) -> RunResult:
    """Train (or resume, or just report a finished) run of `cfg`. `tracker` is a RunTracker or
    None; `on_eval(step, metrics)` is called after each evaluation (and its checkpoint) and may
    raise to stop; `still_owner()` is asked before each evaluation writes anything, and False
    raises RunTakenOver."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.run_dir)
    ckpt_path = run_dir / CKPT_NAME
    if restart and ckpt_path.exists():
        ckpt_path.replace(run_dir / f"{CKPT_NAME}.discarded")
    state = load_checkpoint(ckpt_path, cfg) if ckpt_path.exists() else None

    # Data first: data-dependent config errors (n_labeled too large, bad npz) surface before
    # anything is written.
    seed_everything(cfg.seed)
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    data = DeviceData.build(ds, cfg.n_labeled, cfg.seed, cfg.val_size, device, cfg.channels_last,
                            cfg.labeled_pool)
    n_classes = data.n_classes
    method = methods.load(cfg.method)
    if method.unlabeled_views(cfg) and data.n_unlabeled == 0:
        raise ConfigError(f"n_labeled: {cfg.n_labeled} + val_size {cfg.val_size} use every training image of "
                          f"'{cfg.dataset}', leaving no unlabeled images for method '{cfg.method}'; lower them "
                          "or use a supervised method (supervised, fs_mixup)")
    prepare_run_dir(run_dir)   # an unwritable out_dir fails here, before MLflow hears of the run

    model, ema_model = build_models(cfg, n_classes, data.in_channels, device, data.image_size[1])
    params = [p for p in model.parameters() if p.requires_grad]
    ema_params = list(ema_model.parameters())
    wd_params = decay_params(model)
    opt = make_optimizer(params, cfg.lr)
    # Official code: kernels *= (1 - wd * lr) after each Adam step, no L2 term in the loss
    # (0.02 * 0.002 = 4e-5 per step; the paper's text says 0.0004, ten times the code's value).
    wd_factor = 1.0 - cfg.wd * cfg.lr
    # The EMA model runs forward in the step only as a teacher (mean_teacher, ict, ema_guess);
    # torch.compile is lazy, so an unused compiled wrapper costs nothing. Evaluation uses the
    # plain modules: its batches have another shape, which would only add graphs.
    fwd, fwd_ema = (compiled(model, cfg.compile_mode), compiled(ema_model, cfg.compile_mode)) if cfg.compile \
        else (model, ema_model)
    amp_ctx = _amp_context(cfg, device)

    step, history, pending = 0, [], []
    if state is not None:
        model.load_state_dict(state["model"])
        ema_model.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        data.load_state_dict(state["data"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        step, history, pending = state["step"], list(state["history"]), list(state["pending"])

    run_id = state.get("run_id") if state else None
    if tracker is not None and step >= cfg.steps and run_id and tracker.is_finished(run_id):
        tracker = None    # a finished, fully logged run: report it again, log nothing twice
    if tracker is not None:
        run_id = tracker.start(run_id, device_name(device))
        tracker.pending = [tuple(p) for p in pending]
        tracker.drop_logged()

    def checkpoint() -> None:
        copy_buffers(ema_model, model)
        save_checkpoint(ckpt_path, {
            "cell_key": cfg.cell_key, "config": cfg.to_dict(), "step": step, "finished": step >= cfg.steps,
            "model": model.state_dict(), "ema": ema_model.state_dict(), "opt": opt.state_dict(),
            "data": data.state_dict(), "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "history": history, "run_id": run_id,
            "pending": list(tracker.pending) if tracker is not None else [],
        })

    result = RunResult(status="RUNNING", metrics={}, history=history, run_id=run_id, run_dir=str(run_dir))
    bar = None
    try:
        B = cfg.batch_size
        # Device-side accumulators: sum of (loss, loss_x, loss_u) and a non-finite flag. The
        # host reads them once per log interval, never per step.
        acc = torch.zeros(3, device=device)
        bad = torch.zeros((), dtype=torch.bool, device=device)
        n_acc, t_last, step_last = 0, time.perf_counter(), step
        last_err = history[-1]["test_error"] if history else float("nan")
        if cfg.progress and step < cfg.steps:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.steps, initial=step, desc=cfg.run_name, unit="step", dynamic_ncols=True)

        while step < cfg.steps:
            w = method.unlabeled_weight(cfg, step)   # host float: no sync
            loss, lx, lu = train_step(cfg, method, fwd, fwd_ema, data, amp_ctx, w)
            optimizer_update(opt, loss, params, ema_params, wd_params, wd_factor, cfg.ema_decay)
            with torch.no_grad():
                acc += torch.stack([loss.detach(), lx.detach(), lu.detach()])
                bad |= ~torch.isfinite(loss.detach())
            n_acc += 1
            step += 1
            is_eval = step % cfg.eval_every == 0 or step == cfg.steps

            if step % cfg.log_every == 0 or is_eval:
                sums = acc.tolist()          # host sync point: once per log interval
                if bool(bad.item()):
                    raise TrainingFailed(f"non-finite loss (NaN or inf) within steps {step - n_acc + 1}..{step}; "
                                         "lower lr or lambda_u, or use amp=none")
                now = time.perf_counter()
                sps = (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last, result.steps_per_s = now, step, sps
                means = [v / n_acc for v in sums]
                if tracker is not None:
                    tracker.log_metrics({"loss": means[0], "loss_x": means[1], "loss_u": means[2],
                                         "lambda_u": w, "lr": cfg.lr, "steps_per_s": sps,
                                         "images_per_s": sps * B}, step)
                acc.zero_()
                n_acc = 0
                if bar is not None:
                    bar.update(step - bar.n)
                    bar.set_postfix(loss=f"{means[0]:.3f}", err=f"{last_err:.2f}")

            if is_eval:
                if still_owner is not None and not still_owner():
                    raise RunTakenOver(f"another process took this run over; stopped at step {step}")
                h = evaluate_all(cfg, model, ema_model, data, amp_ctx, n_classes)
                h["step"] = step
                history.append(h)
                last_err = h["test_error"]
                if tracker is not None:
                    tracker.log_metrics({k: v for k, v in h.items() if k != "step"}, step)
                checkpoint()              # then flush: a kill in between re-sends, never duplicates
                if tracker is not None:
                    tracker.flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{means[0]:.3f}", err=f"{last_err:.2f}")
                if on_eval is not None:
                    on_eval(step, h)
                t_last = time.perf_counter()  # throughput counts training steps, not evaluation
        if bar is not None:
            bar.close()
            bar = None

        result.metrics = final_metrics(history, cfg.median_of)
        result.status = "FINISHED"
        if tracker is not None:
            _log_final(cfg, tracker, result, model, ema_model, data, amp_ctx, n_classes, run_dir, ckpt_path)
            tracker.end("FINISHED")
        return result
    except TrainingFailed as e:
        result.status, result.reason = "FAILED", str(e)
        if tracker is not None:
            tracker.end("FAILED", str(e))
        raise
    except KeyboardInterrupt:
        if tracker is not None:
            tracker.end("KILLED", "interrupted")
        raise
    except RunTakenOver:
        if tracker is not None:
            tracker.detach()        # the new owner resumes this run: leave its status alone
        raise
    except BaseException as e:
        # A caller-raised stop (e.g. an Optuna prune) marks itself with `tracking_status`; the
        # caller then owns the run's final status. Anything else is a failure of this run.
        if tracker is not None:
            status = getattr(e, "tracking_status", None)
            if status:
                tracker.end(status, getattr(e, "tracking_reason", None))
            else:
                tracker.end("FAILED", f"{type(e).__name__}: {e}")
        raise
    finally:
        if bar is not None:
            bar.close()


def train_step(cfg: Config, method, fwd, fwd_ema, data: DeviceData, amp_ctx, w: float):
    """One step's losses: the labeled batch and the method's unlabeled views, sampled and
    augmented on the device, then `method.losses` (mixmatch_core/methods). Returns (loss,
    loss_x, loss_u) as device tensors; `w` is the unlabeled weight at this step."""
    B = cfg.batch_size
    x, y = data.labeled_batch(B)
    n_views = method.unlabeled_views(cfg)
    u_views = data.unlabeled_batch(B, n_views) if n_views else []
    with amp_ctx():
        return method.losses(cfg, fwd, fwd_ema, x, y, u_views, w)


def evaluate_all(cfg: Config, model, ema_model, data: DeviceData, amp_ctx, n_classes: int) -> dict:
    """Test (and validation) error of the EMA and the live model, in %."""
    copy_buffers(ema_model, model)
    h = {}
    for split in ("test", "val") if (data.n_val > 0) else ("test",):
        h[f"{split}_error_ema"] = error_pct(evaluate(ema_model, data, split, amp_ctx, n_classes))
        h[f"{split}_error_raw"] = error_pct(evaluate(model, data, split, amp_ctx, n_classes))
        # The reported model: EMA unless `ema=false` (the "no EMA" ablation).
        h[f"{split}_error"] = h[f"{split}_error_ema"] if cfg.ema else h[f"{split}_error_raw"]
    return h


def _log_final(cfg: Config, tracker, result: RunResult, model, ema_model, data, amp_ctx, n_classes: int,
               run_dir: Path, ckpt_path: Path) -> None:
    """Final metrics and artifacts of a finished run (also re-sent when a finished run is re-run)."""
    tracker.log_metrics(result.metrics, cfg.steps)
    tracker.drop_logged()  # re-running a finished run: its final points are already logged
    tracker.flush()
    copy_buffers(ema_model, model)
    conf = evaluate(ema_model if cfg.ema else model, data, "test", amp_ctx, n_classes).cpu().numpy()
    art_dir = run_dir / "artifacts"
    for path in write_run_artifacts(art_dir, cfg, result.history, conf, getattr(data, "class_names", None)):
        tracker.log_artifact(path)
    tracker.log_artifact(ckpt_path, "checkpoint")
