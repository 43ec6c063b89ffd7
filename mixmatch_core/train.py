"""The training loop: one run of any registered method from a resolved Config.

Owns: device and RNG setup, the optimiser (optim.py's Adam + the official decoupled weight decay), the
parameter EMA, the step (sampling and augmenting the batches on the device, then the method's
losses from mixmatch_core/methods/<method>.py, backward and updates), evaluation of the EMA
and live models, what a checkpoint holds and exact resume (checkpoint.py writes and reads
it), non-finite-loss detection, the progress bar, and handing metrics and artifacts to the
tracker. `train` is a short loop of named steps: open_session (setup and restore),
start_tracking, train_step + optimizer_update, log_interval (StepMeter), evaluate_and_
checkpoint, and the end of tracking (end_tracking, or the final metrics); `check_runs` makes
open_session's data and device checks for many runs before any starts. It knows nothing of
sweeps or Optuna: a caller may pass `on_eval` (e.g. to report to a pruner), `still_owner` (a lease: a queue
that can hand a run to another process) and a `tracker`.

GPU discipline (airbench): images live on the device as uint8, batches are sampled and
augmented there, and losses are accumulated on the device; the host reads them once per
`log_every` steps (the only sync points are logging, evaluation and checkpoints).
"""

from __future__ import annotations

import contextlib
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import methods
from .checkpoint import CKPT_NAME, CheckpointError, load_checkpoint, prepare_run_dir, save_checkpoint
from .config import Config, ConfigError
from .data import DatasetNotLocal, DeviceData, draw_split, load_dataset
from . import strong as strong_aug
from .models import build_model
from .optim import Adam, Momentum, UpdateRule, build_optimizer, lr_at, update_rule
from .precision import set_fp32_precision
from .run_report import final_metrics, write_run_artifacts

__all__ = ["train", "RunResult", "RunStopped", "TrainingFailed", "RunTakenOver", "CheckpointError", "Session",
           "open_session", "train_step", "evaluate_all", "build_models", "optimizer_update", "resolve_device"]


class TrainingFailed(RuntimeError):
    """The run failed for a reason that is the run's, not the user's (e.g. a NaN loss)."""


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
    n = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {n} thread{'' if n == 1 else 's'})"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def decay_params(model: nn.Module) -> list[torch.Tensor]:
    """Conv and linear kernels only: the official code decays variables named 'kernel' (no
    biases, no batch-norm parameters)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def build_models(cfg: Config, n_classes: int, in_channels: int, device: torch.device,
                 image_width: int = 32, data: DeviceData | None = None) -> tuple[nn.Module, nn.Module]:
    """The live model and its EMA copy (same initial weights, no gradients), both in training
    mode: the EMA model is switched to eval() for evaluation and, with ema_guess, guesses
    labels in training mode like the live model. A method with parameters or state of its own
    (ReMixMatch's rotation head, its label-distribution averages) adds them to both models with
    `extend_model(cfg, model, data)`: they are then trained, averaged, checkpointed and resumed
    with the model's own."""
    shape = dict(scales=cfg.scales, image_width=image_width)   # WRN stages: cfg.scales, 0 = official auto
    extend = getattr(methods.load(cfg.method), "extend_model", None)
    model = build_model(cfg.model, n_classes, in_channels, **shape)
    ema_model = build_model(cfg.model, n_classes, in_channels, **shape)
    if extend is not None:
        extend(cfg, model, data)
        extend(cfg, ema_model, data)
    model, ema_model = model.to(device), ema_model.to(device)
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


def make_optimizer(params: list[torch.Tensor], lr: float) -> Adam:
    """Adam with a constant lr (official: 0.002, no L2 term in the loss), as TF 1.x computes it
    (optim.py: epsilon outside the bias correction, float32 beta powers), with multi-tensor ops:
    MixMatch's and the baselines' optimiser (`build_optimizer(cfg, ...)` gives any method's)."""
    return Adam(params, lr=lr)


def optimizer_update(opt: Adam | Momentum, loss: torch.Tensor, params: list[torch.Tensor],
                     ema_params: list[torch.Tensor], wd_params: list[torch.Tensor], wd_factor: float,
                     ema_decay: float, l2: float = 0.0) -> None:
    """Everything a step does after its losses: backward, the coupled weight decay where the
    method has it (`l2`: the gradient of l2 * sum(l2_loss(kernels)) = l2 * kernel, added to each
    kernel's gradient; FixMatch's wd * loss_wd in the loss), the optimiser step, the decoupled
    weight decay (kernels *= wd_factor; MixMatch: no L2 term) and the parameter EMA. No host sync."""
    opt.zero_grad()
    loss.backward()
    if l2:
        torch._foreach_add_([p.grad for p in wd_params], wd_params, alpha=l2)
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
    """100 x wrong / n from the confusion matrix's integer counts: one rounding, so 44 wrong of
    1000 is 4.4 exactly as a float prints it (100 x (1 - correct / n) gave 4.400000000000004)."""
    n = int(conf.sum().item())
    return 100.0 * (n - int(conf.diag().sum().item())) / max(n, 1)


# ---- the run -----------------------------------------------------------------------------------
class RunStopped(Exception):
    """Raised by a caller's `on_eval` to stop the run and end its tracked run with `status`
    (e.g. an Optuna prune ends it KILLED); the caller owns what happens next."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class RunResult:
    status: str                      # FINISHED | FAILED
    metrics: dict[str, float]        # error, error_last, error_best, val_error, ... (in %)
    history: list[dict]              # one dict per evaluation
    run_id: str | None = None
    run_dir: str = ""
    reason: str = ""
    steps_per_s: float = 0.0


@dataclass
class Session:
    """What one run trains with: built once by `open_session`, restored from its checkpoint,
    then advanced by the loop (`step`, `history`)."""
    cfg: Config
    device: torch.device
    data: DeviceData
    method: ModuleType
    model: nn.Module
    ema_model: nn.Module
    opt: Adam | Momentum
    fwd: nn.Module                   # the model's forward as the step calls it (compiled or not)
    fwd_ema: nn.Module
    amp_ctx: Callable[[], contextlib.AbstractContextManager]
    ckpt_path: Path
    strong: strong_aug.StrongAugment | None = None   # the run's strong augmentation (its state: CTAugment's rates)
    step: int = 0
    history: list[dict] = field(default_factory=list)
    pending: list = field(default_factory=list)   # tracker points not yet flushed at the checkpoint
    run_id: str | None = None

    def __post_init__(self) -> None:
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema_params = list(self.ema_model.parameters())
        self.wd_params = decay_params(self.model)
        self.rule: UpdateRule = update_rule(self.cfg)     # decoupled factor or coupled l2 (optim.py)


def _amp_context(cfg: Config, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if cfg.amp == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def open_data(cfg: Config, device: torch.device, method: ModuleType) -> DeviceData:
    """The run's data on the device. Data first: data-dependent config errors (n_labeled too
    large, a bad npz) surface before anything is written."""
    seed_everything(cfg.seed)
    data = DeviceData.build(load_dataset(cfg.dataset, cfg.data_dir), cfg.n_labeled, cfg.seed, cfg.val_size,
                            device, cfg.channels_last, cfg.labeled_pool)
    _check_unlabeled(cfg, method, data.n_unlabeled)
    return data


def _check_unlabeled(cfg: Config, method: ModuleType, n_unlabeled: int) -> None:
    if method.views(cfg).n_unlabeled and n_unlabeled == 0:
        raise ConfigError(f"n_labeled: {cfg.n_labeled} + val_size {cfg.val_size} use every training image of "
                          f"'{cfg.dataset}', leaving no unlabeled images for method '{cfg.method}'; lower them "
                          "or use a supervised method (supervised, fs_mixup)")


def check_runs(cfgs: list[Config], download: bool = True) -> list[str]:
    """`open_session`'s checks for many runs at once, before any of them starts, on the host:
    each distinct device exists, each distinct dataset can be read (downloaded where its loader
    downloads; loaded once), and each run's labeled split can be drawn and leaves its method
    unlabeled images. The first failure is raised as the one-line ConfigError the run itself
    would fail with. `download=False` (a dry run): a dataset that would need a download is not
    checked further; the returned lines say which."""
    for device in sorted({c.device for c in cfgs}):
        resolve_device(device)
    notes, by_data = [], {}
    for c in cfgs:
        by_data.setdefault((c.dataset, c.data_dir), []).append(c)
    for (dataset, data_dir), runs in by_data.items():
        try:
            ds = load_dataset(dataset, data_dir, download=download)
        except DatasetNotLocal as e:
            notes.append(str(e))
            continue
        for c in {(c.n_labeled, c.seed, c.val_size, c.labeled_pool, c.method): c for c in runs}.values():
            split = draw_split(ds, c.n_labeled, c.seed, c.val_size, c.labeled_pool)
            _check_unlabeled(c, methods.load(c.method), split.n_unlabeled)
        del ds
    return notes


def open_session(cfg: Config, restart: bool = False) -> Session:
    """Device, data, models and optimiser of `cfg`'s run, restored from its checkpoint if any
    (`restart` sets an existing checkpoint aside first)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    set_fp32_precision(cfg.tf32, device)
    ckpt_path = Path(cfg.run_dir) / CKPT_NAME
    if restart and ckpt_path.exists():
        ckpt_path.replace(ckpt_path.with_name(f"{CKPT_NAME}.discarded"))
    state = load_checkpoint(ckpt_path, cfg) if ckpt_path.exists() else None
    method = methods.load(cfg.method)
    data = open_data(cfg, device, method)
    prepare_run_dir(ckpt_path.parent)   # an unwritable out_dir fails here, before MLflow hears of the run
    model, ema_model = build_models(cfg, data.n_classes, data.in_channels, device, data.image_size[1], data)
    opt = build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    # The EMA model runs forward in the step only as a teacher (mean_teacher, ict, ema_guess);
    # torch.compile is lazy, so an unused compiled wrapper costs nothing. Evaluation uses the
    # plain modules: its batches have another shape, which would only add graphs.
    fwd, fwd_ema = (compiled(model, cfg.compile_mode), compiled(ema_model, cfg.compile_mode)) if cfg.compile \
        else (model, ema_model)
    s = Session(cfg, device, data, method, model, ema_model, opt, fwd, fwd_ema, _amp_context(cfg, device), ckpt_path,
                strong_aug.build(cfg, method.views(cfg), device))
    if state is not None:
        restore(s, state)
    return s


def restore(s: Session, state: dict) -> None:
    """Weights, optimiser, samplers, RNG and history from a checkpoint: the run continues
    exactly as if it had never stopped."""
    s.model.load_state_dict(state["model"])
    s.ema_model.load_state_dict(state["ema"])
    s.opt.load_state_dict(state["opt"])
    s.data.load_state_dict(state["data"])
    if s.strong is not None:
        s.strong.load_state_dict(state["augment"])
    torch.set_rng_state(state["rng_cpu"])
    if s.device.type == "cuda" and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(state["rng_cuda"], s.device)
    s.step, s.history, s.pending = state["step"], list(state["history"]), list(state["pending"])
    s.run_id = state.get("run_id")


def checkpoint(s: Session, tracker) -> None:
    """Everything `restore` needs, written atomically (checkpoint.save_checkpoint)."""
    copy_buffers(s.ema_model, s.model)
    cuda = s.device.type == "cuda"
    save_checkpoint(s.ckpt_path, {
        "cell_key": s.cfg.cell_key, "config": s.cfg.to_dict(), "step": s.step, "finished": s.step >= s.cfg.steps,
        "model": s.model.state_dict(), "ema": s.ema_model.state_dict(), "opt": s.opt.state_dict(),
        "data": s.data.state_dict(), "rng_cpu": torch.get_rng_state(),
        **({"augment": s.strong.state_dict()} if s.strong is not None else {}),
        "rng_cuda": torch.cuda.get_rng_state(s.device) if cuda else None,
        "history": s.history, "run_id": s.run_id, "pending": list(tracker.pending) if tracker is not None else [],
    })


class StepMeter:
    """The losses of the steps since the last log point, summed on the device with a
    non-finite flag; the host reads them once per log interval, never per step."""

    def __init__(self, device: torch.device, step: int):
        self.sums = torch.zeros(3, device=device)            # loss, loss_x, loss_u
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.n, self.step_last, self.t_last = 0, step, time.perf_counter()
        self.means = [float("nan")] * 3

    def add(self, loss: torch.Tensor, lx: torch.Tensor, lu: torch.Tensor) -> None:
        with torch.no_grad():
            self.sums += torch.stack([loss.detach(), lx.detach(), lu.detach()])
            self.bad |= ~torch.isfinite(loss.detach())
        self.n += 1

    def read(self, step: int) -> float:
        """Host sync point: the interval's mean losses (`means`) and its steps per second; a
        non-finite loss anywhere in the interval fails the run."""
        sums = self.sums.tolist()
        if bool(self.bad.item()):
            raise TrainingFailed(f"non-finite loss (NaN or inf) within steps {step - self.n + 1}..{step}; "
                                 "lower lr or lambda_u, or use amp=none")
        now = time.perf_counter()
        sps = (step - self.step_last) / max(now - self.t_last, 1e-9)
        self.means = [v / self.n for v in sums]
        self.sums.zero_()
        self.n, self.step_last, self.t_last = 0, step, now
        return sps

    def restart_clock(self) -> None:
        """Throughput counts training steps, not evaluation."""
        self.t_last = time.perf_counter()


def start_tracking(s: Session, tracker):
    """The tracked run, started or resumed (None without a tracker, or when a finished, fully
    logged run is only being reported again: nothing is logged twice)."""
    if tracker is not None and s.step >= s.cfg.steps and s.run_id and tracker.is_finished(s.run_id):
        return None
    if tracker is not None:
        s.run_id = tracker.start(s.run_id, device_name(s.device))
        tracker.pending = [tuple(p) for p in s.pending]
        tracker.drop_logged()
    return tracker


def log_interval(s: Session, meter: StepMeter, tracker, bar, w: float, result: RunResult) -> None:
    """A log point: read the meter (the interval's one host sync), send its metrics, move the bar."""
    sps = result.steps_per_s = meter.read(s.step)
    loss, lx, lu = meter.means
    if tracker is not None:
        tracker.log_metrics({"loss": loss, "loss_x": lx, "loss_u": lu, "lambda_u": w, "lr": float(s.opt.lr),
                             "steps_per_s": sps, "images_per_s": sps * s.cfg.batch_size}, s.step)
    if bar is not None:
        bar.update(s.step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}", err=f"{s.history[-1]['test_error'] if s.history else float('nan'):.2f}")


def evaluate_and_checkpoint(s: Session, tracker, bar, still_owner, on_eval, meter: StepMeter) -> None:
    """An evaluation point: check the lease, evaluate, log, checkpoint, then flush (a kill in
    between re-sends, never duplicates), then tell the caller (which may stop the run)."""
    if still_owner is not None and not still_owner():
        raise RunTakenOver(f"another process took this run over; stopped at step {s.step}")
    h = evaluate_all(s.cfg, s.model, s.ema_model, s.data, s.amp_ctx, s.data.n_classes)
    h["step"] = s.step
    s.history.append(h)
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in h.items() if k != "step"}, s.step)
        log_augment_stats(s, tracker)
    checkpoint(s, tracker)
    if tracker is not None:
        tracker.flush()
    if bar is not None:
        bar.set_postfix(loss=f"{meter.means[0]:.3f}", err=f"{h['test_error']:.2f}")
    if on_eval is not None:
        on_eval(s.step, h)
    meter.restart_clock()


def log_augment_stats(s: Session, tracker) -> None:
    """What CTAugment has learned, at each evaluation: the official stats() text (per op and
    level, the normalised thresholded probability of being drawn) as the run's artifact
    `ctaugment/step-NNNNNNNN.txt`. A host read of the rates: evaluation only."""
    text = s.strong.stats() if s.strong is not None else None
    if not text:
        return
    path = s.ckpt_path.parent / "artifacts" / "ctaugment" / f"step-{s.step:08d}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    tracker.log_artifact(path, "ctaugment")


def end_tracking(tracker, e: BaseException, result: RunResult) -> None:
    """The tracked run's status when the loop stops early: FAILED for the run's own failure or
    any error, KILLED when interrupted, the caller's status for a RunStopped, and untouched
    when another process took the run over (it resumes it)."""
    if isinstance(e, TrainingFailed):
        result.status, result.reason = "FAILED", str(e)
    if tracker is None:
        return
    if isinstance(e, RunTakenOver):
        tracker.detach()
    elif isinstance(e, KeyboardInterrupt):
        tracker.end("KILLED", "interrupted")
    elif isinstance(e, RunStopped):
        tracker.end(e.status, e.reason)
    else:
        tracker.end("FAILED", str(e) if isinstance(e, TrainingFailed) else f"{type(e).__name__}: {e}")


def progress_bar(cfg: Config, step: int):
    if not cfg.progress or step >= cfg.steps:
        return None
    return tqdm(total=cfg.steps, initial=step, desc=cfg.run_name, unit="step", dynamic_ncols=True)


def train(cfg: Config, tracker=None, on_eval: Callable[[int, dict], None] | None = None,
          restart: bool = False, still_owner: Callable[[], bool] | None = None) -> RunResult:
    """Train (or resume, or just report a finished) run of `cfg`. `tracker` is a RunTracker or
    None; `on_eval(step, metrics)` is called after each evaluation (and its checkpoint) and may
    raise (RunStopped to choose the tracked run's status); `still_owner()` is asked before each
    evaluation writes anything, and False raises RunTakenOver."""
    s = open_session(cfg, restart)
    tracker = start_tracking(s, tracker)
    result = RunResult(status="RUNNING", metrics={}, history=s.history, run_id=s.run_id, run_dir=cfg.run_dir)
    bar = progress_bar(cfg, s.step)
    try:
        meter = StepMeter(s.device, s.step)
        while s.step < cfg.steps:
            w = s.method.unlabeled_weight(cfg, s.step)   # host floats: no sync
            s.opt.set_lr(lr_at(cfg, s.step))
            loss, lx, lu = train_step(cfg, s.method, s.fwd, s.fwd_ema, s.data, s.amp_ctx, w, s.strong)
            optimizer_update(s.opt, loss, s.params, s.ema_params, s.wd_params, s.rule.wd_factor, cfg.ema_decay,
                             s.rule.l2)
            meter.add(loss, lx, lu)
            s.step += 1
            is_eval = s.step % cfg.eval_every == 0 or s.step == cfg.steps
            if s.step % cfg.log_every == 0 or is_eval:
                log_interval(s, meter, tracker, bar, w, result)
            if is_eval:
                evaluate_and_checkpoint(s, tracker, bar, still_owner, on_eval, meter)
        if bar is not None:
            bar.close()
            bar = None
        result.metrics, result.status = final_metrics(s.history, cfg.median_of), "FINISHED"
        if tracker is not None:
            _log_final(s, tracker, result)
            tracker.end("FINISHED")
        return result
    except BaseException as e:
        end_tracking(tracker, e, result)
        raise
    finally:
        if bar is not None:
            bar.close()


def train_step(cfg: Config, method, fwd, fwd_ema, data: DeviceData, amp_ctx, w: float,
               strong: strong_aug.StrongAugment | None = None):
    """One step's losses: the labeled batch and the method's named views (views.py), sampled
    and augmented on the device, CTAugment's probe scored and learned from, then
    `method.losses` (mixmatch_core/methods). Returns (loss, loss_x, loss_u) as device tensors;
    `w` is the unlabeled weight at this step."""
    x, y, u, probe = data.draw(method.views(cfg), cfg.batch_size, strong)
    if probe is not None:
        learn_from_probe(strong, probe, fwd, fwd_ema, amp_ctx)
    with amp_ctx():
        return method.losses(cfg, fwd, fwd_ema, x, y, u, w)


@torch.no_grad()
def learn_from_probe(strong: strong_aug.StrongAugment, probe, model: nn.Module, ema_model: nn.Module, amp_ctx) -> None:
    """CTAugment's update from this step's probe (cta/lib/train.py train_step): the EMA model in
    inference mode (the official classify_op: EMA weights, the live model's BN statistics)
    scores the probe images, and each image's proximity 1 - 0.5 |p - onehot(y)|_1 updates the
    bins of the policy it was drawn with. The official session.run fetches classify_op beside
    train_op with no dependency between them, so the probe reads the EMA weights of before the
    step, as here. No host sync: the rates are device tensors."""
    copy_buffers(ema_model, model)
    ema_model.eval()
    with amp_ctx():
        probs = torch.softmax(ema_model(probe.x).float(), dim=-1)
    ema_model.train()
    strong.learn(probe.policy, probs, probe.y)


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


def _log_final(s: Session, tracker, result: RunResult) -> None:
    """Final metrics and artifacts of a finished run (also re-sent when a finished run is re-run)."""
    tracker.log_metrics(result.metrics, s.cfg.steps)
    tracker.drop_logged()  # re-running a finished run: its final points are already logged
    tracker.flush()
    copy_buffers(s.ema_model, s.model)
    reported = s.ema_model if s.cfg.ema else s.model
    conf = evaluate(reported, s.data, "test", s.amp_ctx, s.data.n_classes).cpu().numpy()
    art_dir = s.ckpt_path.parent / "artifacts"
    for path in write_run_artifacts(art_dir, s.cfg, result.history, conf, getattr(s.data, "class_names", None)):
        tracker.log_artifact(path)
    tracker.log_artifact(s.ckpt_path, "checkpoint")
