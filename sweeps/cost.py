"""What a sweep will cost: `mixmatch sweep --dry-run`'s list of cells with their estimated time.

Owns: the expected seconds per training step by model family and device (measured on CPU,
estimated on GPU), their scaling by model width, dataset and method, and the dry run's table
(cells the sweep's storage already holds as done cost nothing). Estimates only: nothing here
runs or schedules anything.
"""

from __future__ import annotations

from mixmatch_core.datasets import dataset_info
from mixmatch_core.methods import relative_step_cost

from .spec import Spec

# Expected seconds per MixMatch (K = 2) step, by (model family, device type), for --dry-run
# cost estimates and nothing else. CPU rows: measured on this project's 2-core AVX2 machines
# (benchmarks/step_time.py: WRN-28-2 MixMatch 3.1-3.6 s/step eager; small CNN on digits about
# 20 steps/s on one thread). GPU rows: estimates (about 0.43 GFLOP per 32x32 forward for
# WRN-28-2, x3 for forward+backward, 192 + 128 images per step, at a realistic ~25% of a
# modern GPU's peak), not measurements.
STEP_SECONDS = {
    ("small_cnn", "cpu"): 0.6, ("wrn", "cpu"): 3.3, ("small_cnn", "cuda"): 0.004, ("wrn", "cuda"): 0.025,
}


def step_seconds(cfg, device_type: str) -> float:
    """Estimated seconds per step of `cfg`: MixMatch's (K = 2) measured or estimated step,
    scaled by the dataset's cost factor (mixmatch_core.datasets) and the method's cost relative
    to MixMatch's at K = 2 (mixmatch_core.methods)."""
    fam = "small_cnn" if cfg.model.startswith("small_cnn") else "wrn"
    base = STEP_SECONDS[(fam, device_type)]
    width = cfg.model[len("small_cnn"):] if fam == "small_cnn" else ""
    if width:
        # FLOPs scale with W^2, but narrow nets use the cores worse: on CPU small_cnn16 takes
        # 0.34x (not 0.25x) of small_cnn's (W = 32) step, so narrow widths scale linearly.
        w = int(width) / 32
        base *= max(w ** 2, 0.68 * w)
    if cfg.model == "wrn28_large":
        base *= 17          # ~26 M vs 1.5 M parameters; FLOPs scale about the same
    base *= dataset_info(cfg.dataset).cost_factor    # image size: the dataset's record
    return base * cfg.batch_size / 64 * relative_step_cost(cfg)


def fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f}min"
    return f"{s / 3600:.1f}h"


def dry_run(spec: Spec, cells, device_type: str, workers: int, states: dict | None = None) -> None:
    """List the cells with their estimated cost; cells the sweep's storage already has done
    cost nothing, so the total is what a (re)launch would still spend."""
    states = states or {}
    total, n_done = 0.0, 0
    # GPU specs: cost in GPU-hours (the unit GPU budgets are counted in); CPU: readable durations
    cost_text = (lambda s: f"{s / 3600:,.1f} GPU-h") if device_type == "cuda" else fmt_seconds
    print(f"sweep '{spec.name}' ({spec.path}): {len(cells)} cells, experiment '{spec.experiment}'")
    print(f"{'run name':<36} {'cell_key':<13} {'steps':>9} {'state':>8} {'est. cost':>10}")
    for c in cells:
        state = states[c.cell_key].state if c.cell_key in states else "new"
        cost = 0.0 if state == "done" else c.steps * step_seconds(c, device_type)
        n_done += state == "done"
        total += cost
        print(f"{c.run_name:<36} {c.cell_key:<13} {c.steps:>9,} {state:>8} {cost_text(cost):>10}")
    busy = max(1, min(workers, len(cells) - n_done))      # one cell cannot use two workers
    print(f"total: {len(cells)} cells ({n_done} done), ~{cost_text(total)} of {device_type.upper()} time to go "
          f"(~{fmt_seconds(total / busy)} wall with {busy} worker(s)); nothing was run")


def device_type(device: str) -> str:
    if device.startswith("cuda"):
        return "cuda"
    if device == "auto":
        import torch    # lazy: importing torch takes seconds; only device auto needs it
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"
