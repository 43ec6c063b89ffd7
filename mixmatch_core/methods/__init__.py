"""The registry of training methods: MixMatch, the paper's baselines and the supervised ones.

Owns: one `Method` record per method (its paper label, the config fields it owns with the
official code's defaults, the official runs/table5.sh flags as its preset, and its rough cost
per step), and `load(name)`, which imports the method's module. Everything that lists
methods derives from `METHODS`: config choices and `--help`, the variants named after
methods, the dry-run step costs, the table's row order and the full method that Welch tests
compare against (`FULL_METHOD`).

This file imports no torch, so configs and sweeps resolve without it (a relaunch that trains
nothing stays fast). Each method's losses live in `methods/<name>.py`, one short file read
beside its official file in google-research/mixmatch, with these module-level functions:

    unlabeled_views(cfg) -> int       augmented views of the unlabeled batch per step
    unlabeled_weight(cfg, step) -> float
                                      weight of the unlabeled loss at this step (a host float:
                                      the ramp-up is computed on the host, no device sync)
    losses(cfg, model, ema_model, x, y, u_views, w) -> (loss, loss_x, loss_u)
                                      one step's losses as device tensors; `model` and
                                      `ema_model` are in training mode, `x`/`y` the augmented
                                      labeled batch, `u_views` the list of unlabeled views.

Adding a method: one file in this folder, one line in METHODS, its tests.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Method:
    title: str                     # the paper's row label (Table 5, Table 4)
    official: str                  # the official file it follows
    hparams: dict[str, Any]        # config fields the method owns -> official flag default
    preset: dict[str, Any] = field(default_factory=dict)  # runs/table5.sh flags (CIFAR-10)
    # Approximate cost of one step in forwards of one batch of B images (a backward counts
    # as two): for --dry-run estimates only.
    forwards_per_step: float = 3.0
    legacy: bool = False           # predates the registry: identity hashes MixMatch's fields too


# The fields MixMatch owns; `supervised` is legacy, so its identity keeps them too.
MIXMATCH_FIELDS = ("K", "T", "alpha", "lambda_u", "rampup_steps", "mixup", "ema_guess", "bn_mode")

# Order = table row order: the full method first, then the baselines in the paper's Table 5
# order (Pi-Model, PseudoLabel, MixUp, VAT, Mean Teacher), ICT (Table 4), then supervised.
METHODS: dict[str, Method] = {
    "mixmatch": Method("MixMatch", "mixmatch.py", {k: None for k in MIXMATCH_FIELDS},
                       forwards_per_step=11.0, legacy=True),   # K=2: 2 guesses + 3 x (fwd + bwd)
    "pi_model": Method("Pi-Model", "pi_model.py", {"consistency_weight": 10.0, "warmup_pos": 0.4},
                       {"wd": 0.02, "consistency_weight": 20.0}, forwards_per_step=7.0),
    "pseudo_label": Method("PseudoLabel", "pseudo_label.py",
                           {"consistency_weight": 1.0, "threshold": 0.95, "warmup_pos": 0.4,
                            "pl_mask": "official"},
                           {"wd": 0.02, "consistency_weight": 1.0}, forwards_per_step=6.0),
    "mixup": Method("MixUp", "mixup.py", {"alpha": 0.5}, {"wd": 0.02, "alpha": 0.75}, forwards_per_step=7.0),
    "vat": Method("VAT", "vat.py", {"vat_weight": 0.3, "vat_eps": 6.0, "vat_xi": 1e-6, "entmin_weight": 0.06,
                                    "warmup_pos": 0.4},
                  {"wd": 0.02}, forwards_per_step=12.0),
    "mean_teacher": Method("MeanTeacher", "mean_teacher.py", {"consistency_weight": 50.0, "warmup_pos": 0.4},
                           {"wd": 0.2, "consistency_weight": 50.0}, forwards_per_step=7.0),
    "ict": Method("Interpolation Consistency Training", "ict.py",
                  {"consistency_weight": 50.0, "warmup_pos": 0.4, "alpha": 0.5},
                  {"wd": 0.02, "alpha": 0.75, "consistency_weight": 1000.0}, forwards_per_step=7.0),
    "supervised": Method("Supervised", "(ours: cross-entropy on the labeled batch)", {},
                         forwards_per_step=3.0, legacy=True),
    "fs_mixup": Method("Fully supervised (MixUp)", "fully_supervised/fs_mixup.py", {"alpha": 0.5},
                       {"wd": 0.002, "alpha": 0.5}, forwards_per_step=3.0),
}
FULL_METHOD = "mixmatch"   # the row the Welch tests compare every other row against


def owned_fields(method: str) -> set[str]:
    """Config fields that belong to `method` (its hyperparameters)."""
    return set(METHODS[method].hparams)


def method_fields() -> set[str]:
    """Every field some method owns: a method's identity hashes only its own."""
    return {f for m in METHODS.values() for f in m.hparams}


def load(name: str) -> ModuleType:
    """The module with the method's losses (imports torch)."""
    if name not in METHODS:
        raise KeyError(f"method: unknown '{name}'; allowed: {', '.join(METHODS)}")
    return importlib.import_module(f"{__name__}.{name}")
