"""The registry of training methods: MixMatch, the paper's baselines and the supervised ones.

Owns: one `Method` record per method: its paper label, the official file it follows, the
hyperparameters it owns (each a `Knob`: the official default, help and check, read by the
config's validation and `--help`), the official runs/table5.sh flags as its preset, its named
variants (MixMatch's Table 4 ablations live with MixMatch) and its rough cost per step; and
`load(name)`, which imports the method's module. Everything that lists methods derives from
`METHODS`: config choices and `--help`, the variants, the dry-run step costs, the table's row
order (`row_order`) and the full method that Welch tests compare against (`FULL_METHOD`).

This file imports no torch, so configs and sweeps resolve without it (a relaunch that trains
nothing stays fast). Each method's losses live in `methods/<name>.py`, one short file read
beside its official file in google-research/mixmatch, with these module-level functions:

    views(cfg) -> views.Views         what the step draws (mixmatch_core/views.py): the labeled
                                      view, K weak and/or strong unlabeled views, the unlabeled
                                      ratio and CTAugment's probe
    unlabeled_weight(cfg, step) -> float
                                      weight of the unlabeled loss at this step (a host float:
                                      the ramp-up is computed on the host, no device sync)
    losses(cfg, model, ema_model, x, y, u, w) -> (loss, loss_x, loss_u)
                                      one step's losses as device tensors; `model` and
                                      `ema_model` are in training mode, `x`/`y` the augmented
                                      labeled batch, `u` the unlabeled views by name
                                      (`u.weak`, `u.strong`: lists of [uratio * B, C, H, W]).

Adding a method: one file in this folder, one line in METHODS (with its knobs), its tests. A
new knob is also a field of mixmatch_core/config.py's Config (`knob_field(NAME)`): the
dataclass is the one flat config dumped with every run.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace
from typing import Any, Callable


@dataclass(frozen=True)
class Knob:
    """One hyperparameter a method owns: its official default (None: no default here, the
    Config dataclass holds it), what it means, and what values are allowed."""
    default: Any
    help: str
    check: Callable[[Any], bool] | None = None   # True when the value is allowed
    rule: str = ""                               # the allowed values, for the one-line error
    choices: tuple[str, ...] | None = None

    def allows(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return self.check is None or bool(self.check(value))

    def allowed(self) -> str:
        return f"one of {', '.join(self.choices)}" if self.choices is not None else self.rule


def _nonneg(help: str, default: Any = None) -> Knob:
    return Knob(default, help, lambda v: v >= 0, ">= 0")


def _fraction(help: str, default: Any = None) -> Knob:
    return Knob(default, help, lambda v: 0 <= v <= 1, "in [0, 1]")


@dataclass(frozen=True)
class Method:
    title: str                     # the paper's row label (Table 5, Table 4)
    official: str                  # the official file it follows
    hparams: dict[str, Knob]       # config fields the method owns, with official defaults
    preset: dict[str, Any] = field(default_factory=dict)     # runs/table5.sh flags (CIFAR-10)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)   # named one-line diffs
    # Approximate cost of one step in forwards of one batch of B images (a backward counts as
    # two), from the resolved config: for --dry-run estimates only.
    forwards_per_step: Callable[[Any], float] = lambda cfg: 3.0
    legacy: bool = False           # predates the registry: identity hashes MixMatch's fields too


# Shared knobs: the baselines' warm-up and weight have the official flag names and meanings.
_WARMUP = _fraction("the consistency weight ramps linearly from 0 over this fraction of the run "
                    "(official warmup_pos: 0.4 = the first 40% of steps)", 0.4)


def _consistency(default: float) -> Knob:
    return _nonneg("weight of the consistency loss after warm-up (pseudo_label: of the pseudo-label loss)",
                   default)


def _alpha(default: float | None) -> Knob:
    return _nonneg("Beta(alpha, alpha) parameter of MixUp (official flag `beta`)", default)


def optimizer_knobs(optimizer: str, lr_schedule: str, wd_mode: str) -> dict[str, Knob]:
    """The knobs of a method that declares its own optimiser, lr schedule and weight-decay rule
    (optim.py), with its official file's defaults. A method without them trains as every file of
    google-research/mixmatch does: TF Adam, a constant lr, decoupled decay. The flags of
    fixmatch.py and its ablation/ files: momentum, nesterov (ab_fixmatch_momentum.py), beta1,
    beta2 (ab_fixmatch_adam.py), lr_end (ab_fixmatch_linearlr.py)."""
    return {
        "optimizer": Knob(optimizer, "adam (TF AdamOptimizer) | momentum (TF MomentumOptimizer)",
                          choices=("adam", "momentum")),
        "momentum": Knob(0.9, "optimizer=momentum: momentum coefficient", lambda v: 0 <= v < 1, "in [0, 1)"),
        "nesterov": Knob(True, "optimizer=momentum: Nesterov momentum (official use_nesterov)"),
        "adam_beta1": Knob(0.9, "optimizer=adam: beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
        "adam_beta2": Knob(0.999, "optimizer=adam: beta2 (0: epsilon 1e-4, as ab_fixmatch_adam.py)",
                           lambda v: 0 <= v < 1, "in [0, 1)"),
        "lr_schedule": Knob(lr_schedule, "constant | cosine (lr * cos(7 pi t / 16), t = step / steps) | "
                            "linear (lr to lr_end)", choices=("constant", "cosine", "linear")),
        "lr_end": _nonneg("lr_schedule=linear: the lr at the last step", 0.02),
        "wd_mode": Knob(wd_mode, "decoupled (kernels *= 1 - wd * lr after each step) | l2 (wd * sum of "
                        "l2_loss(kernels) added to the loss)", choices=("decoupled", "l2")),
    }


def augment_knobs(augment: str, cutout: bool) -> dict[str, Knob]:
    """The knobs of a method with a strong view (strong.py): which strong augmentation, whether
    Cutout follows it, and CTAugment's flags with cta/lib/train.py's defaults (depth 2, threshold
    0.80, decay 0.99; the CTAugment class's own default threshold is 0.85)."""
    return {
        "augment": Knob(augment, "strong augmentation: ctaugment (learned from a labeled probe) | randaugment "
                        "(fixmatch's RA variant) | none (the strong view is only Cutout, or weak)",
                        choices=("ctaugment", "randaugment", "none")),
        "cutout": Knob(cutout, "Cutout after the strong augmentation (fixmatch.py appends OP('cutout', (1,)))"),
        "cta_depth": Knob(2, "augment=ctaugment: ops per policy (official adepth)", lambda v: v >= 1, ">= 1"),
        "cta_threshold": Knob(0.80, "augment=ctaugment: bins below this share of the best are never drawn "
                              "(official ath)", lambda v: 0 <= v < 1, "in [0, 1)"),
        "cta_decay": Knob(0.99, "augment=ctaugment: decay of the bins' rates per update (official adecay)",
                          lambda v: 0 < v < 1, "in (0, 1)"),
    }


# MixMatch's knobs (paper notation). Their defaults are the Config dataclass's (the paper's
# CIFAR-10 setting; the dataset presets adjust lambda_u and alpha).
MIXMATCH_KNOBS = {
    "K": Knob(None, "augmentations per unlabeled image for label guessing", lambda v: v >= 1, ">= 1"),
    "T": Knob(None, "sharpening temperature (T = 1: no sharpening)", lambda v: v > 0, "> 0"),
    "alpha": _alpha(None),
    "lambda_u": _nonneg("weight of the unlabeled L2 loss (after ramp-up)"),
    "rampup_steps": _nonneg("steps over which lambda_u ramps linearly from 0 (code: 1024 kimg)"),
    "mixup": Knob(None, "all | none | labeled | unlabeled | separate (Table 4 MixUp ablations)",
                  choices=("all", "none", "labeled", "unlabeled", "separate")),
    "ema_guess": Knob(None, "the EMA model guesses labels (Table 4 'with parameter EMA')"),
    "bn_mode": Knob(None, "interleave (official: only the first pass updates BN stats) | fused",
                    choices=("interleave", "fused")),
}
# The Table 4 ablations as one-line diffs, in the paper's row order (the table's order too).
# `no_ema` (evaluate the live model) is not a row of the paper's Table 4.
MIXMATCH_VARIANTS = {
    "k1": dict(K=1), "k3": dict(K=3), "k4": dict(K=4), "no_sharpen": dict(T=1.0),
    "ema_guess": dict(ema_guess=True), "no_ema": dict(ema=False), "no_mixup": dict(mixup="none"),
    "mixup_labeled_only": dict(mixup="labeled"), "mixup_unlabeled_only": dict(mixup="unlabeled"),
    "mixup_separate": dict(mixup="separate"),
}

# FixMatch's own knobs (fixmatch.py flags and its ablation/ab_fixmatch_*.py files' diffs).
FIXMATCH_KNOBS = {
    "confidence": _fraction("fixmatch: a pseudo-label counts where the anchor view's max softmax is >= this "
                            "(official flag confidence; pseudo_label's threshold is a strict >)", 0.95),
    "wu": _nonneg("fixmatch: weight of the pseudo-label loss, constant (official flag wu; no warm-up)", 1.0),
    "uratio": Knob(7, "fixmatch: unlabeled images per labeled image in a step (official flag uratio)",
                   lambda v: v >= 1, ">= 1"),
    "T": Knob(1.0, "fixmatch: temperature of the anchor view's softmax(logits / T) (ab_fixmatch_sharpen*.py "
              "flag T; 1 = fixmatch.py)", lambda v: v > 0, "> 0"),
    "pseudo_target": Knob("hard", "fixmatch: hard (argmax of softmax(logits / T), fixmatch.py) | soft (the "
                          "distribution softmax(logits / T), the mask from softmax(logits): "
                          "ab_fixmatch_sharpen_conditional_consistency.py)", choices=("hard", "soft")),
    "anchoring": Knob("weak.strong", "fixmatch: which view makes the pseudo-label . which view learns it "
                      "(ab_fixmatch_anchoring.py flag anchoring)",
                      choices=("weak.strong", "weak.weak", "strong.strong", "strong.weak")),
    "teacher": Knob("live", "fixmatch: the model that makes the pseudo-labels: live (fixmatch.py: the live "
                    "model's one training pass) | ema (ab_fixmatch_meanteacher.py: the EMA model, inference "
                    "mode) | ema_train (ab_fixmatch_meanteacher_train.py: the EMA model, batch statistics)",
                    choices=("live", "ema", "ema_train")),
    **optimizer_knobs("momentum", "cosine", "l2"),
    **augment_knobs("ctaugment", True),
}
# One per ablation/ab_fixmatch_*.py file, its diff at that file's default flags, plus the RA
# variant of Table 2 (ab_fixmatch_ra.py, augment d.d.rac: RandAugment, then Cutout always).
# ab_fixmatch_sharpen.py has no variant: at its default T = 1 it computes fixmatch.py (its
# knob is `T`). ab_fixmatch_momentum.py's base class is CTAReMixMatch, not FixMatch: see
# docs/methods.md for what that file runs; its variant is its declared flag (nesterov false).
FIXMATCH_VARIANTS = {
    "fixmatch_ra": dict(augment="randaugment", cutout=True),
    "fixmatch_nocutout": dict(cutout=False),
    "fixmatch_onlycutout": dict(augment="none", cutout=True),
    "fixmatch_conditional_consistency": dict(pseudo_target="soft"),
    "fixmatch_adam": dict(optimizer="adam", lr=0.002),
    "fixmatch_momentum": dict(nesterov=False),
    "fixmatch_linearlr": dict(lr_schedule="linear", lr_end=0.02),
    "fixmatch_meanteacher": dict(teacher="ema"),
    "fixmatch_meanteacher_train": dict(teacher="ema_train"),
    "fixmatch_anchoring_weak_weak": dict(anchoring="weak.weak"),
    "fixmatch_anchoring_strong_strong": dict(anchoring="strong.strong"),
    "fixmatch_anchoring_strong_weak": dict(anchoring="strong.weak"),
}


def _fixmatch_forwards(cfg) -> float:
    """One training pass of B + 2 * uratio * B images, forward and backward (3 units each B),
    CTAugment's probe (one forward of B by the EMA model) and, for a mean-teacher variant, the
    teacher's forward of the uratio * B anchor images: 46 at the defaults (4.2x MixMatch's 11)."""
    teacher = cfg.uratio if cfg.teacher != "live" else 0
    return 3.0 * (1 + 2 * cfg.uratio) + (cfg.augment == "ctaugment") + teacher


# ReMixMatch's knobs: the flags of cta/cta_remixmatch.py (lines 63-74) and libml/augment.py's K,
# with their official defaults; `anchor_view` stands for ablation/ab_cta_remixmatch_noweak.py.
REMIXMATCH_KNOBS = {
    "K": Knob(1, "strong views per unlabeled image (official flag K, libml/augment.py:45; "
              "runs/ssl/cifar10.sh: 8)", lambda v: v >= 1, ">= 1"),
    "T": Knob(0.5, "sharpening temperature of the aligned guess", lambda v: v > 0, "> 0"),
    "alpha": _alpha(0.75),
    "rampup_steps": _nonneg("steps over which w_match and w_kl ramp linearly from 0 (official warmup_kimg: "
                            "1024 kimg = 16384 steps at batch 64)"),
    "w_match": _nonneg("remixmatch: weight of the mixed unlabeled loss after warm-up", 1.5),
    "w_kl": _nonneg("remixmatch: weight of the pre-mixup loss (the anchor's target on the first strong "
                    "view) after warm-up; 0 = off", 0.5),
    "w_rot": _nonneg("remixmatch: weight of the rotation loss (not warmed up); 0 = no rotation head", 0.5),
    "redux": Knob("1st", "remixmatch: which views' softmax the guess comes from: 1st (the anchor's; "
                  "cta_remixmatch.py) | swap (view i gets view i+1's; remixmatch_no_cta.py) | mean",
                  choices=("1st", "swap", "mean")),
    "use_dm": Knob(True, "remixmatch: distribution alignment, p * p_data / p_model (official use_dm)"),
    "use_xe": Knob(True, "remixmatch: cross-entropy for the mixed unlabeled loss; false = L2 of probabilities"),
    "dbuf": Knob(128, "remixmatch: batches in p_model's moving average (official dbuf)", lambda v: v >= 1, ">= 1"),
    "anchor_view": Knob("weak", "remixmatch: augmentation of the view whose guess is every view's target: weak "
                        "| strong (ab_cta_remixmatch_noweak.py: every unlabeled view strong)",
                        choices=("weak", "strong")),
    **augment_knobs("ctaugment", False),   # AugmentPoolCTA: CTAugment, no Cutout appended
}
# runs/ssl/ablation.sh's rows in its order (dataset cifar10.3@250-1: seed 3, 250 labels), each
# one flag off the full method; the "only weak" rows run ab_remixmatch.py: no CTA, 'd.d.d' (every
# view weak), redux 'swap' (its default). The standard settings runs/ssl/*.sh pass beside K=8:
# 40 labels (cifar10.sh: K=1, w_rot=2, warmup_kimg=8192 = 131072 steps; svhn.sh: K=1, w_rot=3)
# and STL-10 (stl10.sh: K=4; its scales=4 is the dataset preset).
_ONLY_WEAK = dict(augment="none", redux="swap")
REMIXMATCH_VARIANTS = {
    **{f"remixmatch_k{k}": dict(K=k) for k in (1, 2, 4, 8, 16)},
    "remixmatch_no_kl": dict(K=8, w_kl=0.0), "remixmatch_no_rot": dict(K=8, w_rot=0.0),
    "remixmatch_no_dm": dict(K=8, use_dm=False), "remixmatch_l2": dict(w_match=75.0, K=8, use_xe=False),
    "remixmatch_only_strong": dict(K=8, anchor_view="strong"),
    "remixmatch_only_weak_k1": dict(_ONLY_WEAK, K=1), "remixmatch_only_weak_k8": dict(_ONLY_WEAK, K=8),
    "remixmatch_only_weak_mean_k1": dict(_ONLY_WEAK, redux="mean", K=1),
    "remixmatch_only_weak_mean_k8": dict(_ONLY_WEAK, redux="mean", K=8),
    "remixmatch_40": dict(K=1, w_rot=2.0, rampup_steps=131072), "remixmatch_svhn_40": dict(K=1, w_rot=3.0),
    "remixmatch_stl10": dict(K=4),
}


def _remixmatch_forwards(cfg) -> float:
    """Forwards of B images per ReMixMatch step (a backward counts 2): the no-gradient guessing
    passes (1st: the anchor; swap, mean: every view but u_1 when the KL loss has it), u_1 with
    its backward for the KL loss, the rotation pass and backward, the K + 2 mixed passes and
    backwards, and CTAugment's probe (one EMA forward)."""
    kl = cfg.w_kl > 0
    guess = 1 if cfg.redux == "1st" else cfg.K + 1 - kl
    return guess + 3 * kl + 3 * (cfg.w_rot > 0) + 3 * (cfg.K + 2) + (cfg.augment == "ctaugment")


# Order = table row order: the full method first, FixMatch, then the baselines in the paper's Table 5
# order (Pi-Model, PseudoLabel, MixUp, VAT, Mean Teacher), ICT (Table 4), then supervised.
METHODS: dict[str, Method] = {
    "mixmatch": Method("MixMatch", "mixmatch.py", MIXMATCH_KNOBS, variants=MIXMATCH_VARIANTS,
                       # 2 guesses + 3 x (forward + backward) = 11 at K = 2, scaling with the K + 1
                       # mixed chunks (the dry-run estimates since release 0.1)
                       forwards_per_step=lambda cfg: 11.0 * (1 + cfg.K) / 3, legacy=True),
    "fixmatch": Method("FixMatch", "fixmatch.py", FIXMATCH_KNOBS, {"lr": 0.03, "wd": 0.0005},
                       FIXMATCH_VARIANTS, forwards_per_step=_fixmatch_forwards),
    "pi_model": Method("Pi-Model", "pi_model.py", {"consistency_weight": _consistency(10.0), "warmup_pos": _WARMUP},
                       {"wd": 0.02, "consistency_weight": 20.0}, forwards_per_step=lambda cfg: 7.0),
    "pseudo_label": Method(
        "PseudoLabel", "pseudo_label.py",
        {"consistency_weight": _consistency(1.0), "warmup_pos": _WARMUP,
         "threshold": _fraction("pseudo_label: minimum max-probability for a pseudo-label to count", 0.95),
         "pl_mask": Knob("official", "pseudo_label: official (the official code's [B] x [B, 1] broadcast: fraction "
                         "of confident rows x mean cross-entropy over all rows) | per_row (only confident rows "
                         "count, as its comment intends)", choices=("official", "per_row"))},
        {"wd": 0.02, "consistency_weight": 1.0}, forwards_per_step=lambda cfg: 6.0),
    "mixup": Method("MixUp", "mixup.py", {"alpha": _alpha(0.5)}, {"wd": 0.02, "alpha": 0.75},
                    forwards_per_step=lambda cfg: 7.0),
    "vat": Method(
        "VAT", "vat.py",
        {"vat_weight": _nonneg("vat: weight of the VAT loss after warm-up (official flag `vat`)", 0.3),
         "vat_eps": Knob(6.0, "vat: L2 norm of the adversarial perturbation (pixels in [-1, 1])",
                         lambda v: v > 0, "> 0"),
         "vat_xi": Knob(1e-6, "vat: norm of the probe perturbation of the power iteration", lambda v: v > 0, "> 0"),
         "entmin_weight": _nonneg("vat: weight of the entropy-minimisation loss (not warmed up)", 0.06),
         "warmup_pos": _WARMUP},
        {"wd": 0.02}, forwards_per_step=lambda cfg: 12.0),
    "mean_teacher": Method("MeanTeacher", "mean_teacher.py",
                           {"consistency_weight": _consistency(50.0), "warmup_pos": _WARMUP},
                           {"wd": 0.2, "consistency_weight": 50.0}, forwards_per_step=lambda cfg: 7.0),
    "ict": Method("Interpolation Consistency Training", "ict.py",
                  {"consistency_weight": _consistency(50.0), "warmup_pos": _WARMUP, "alpha": _alpha(0.5)},
                  {"wd": 0.02, "alpha": 0.75, "consistency_weight": 1000.0}, forwards_per_step=lambda cfg: 7.0),
    "remixmatch": Method("ReMixMatch", "cta/cta_remixmatch.py", REMIXMATCH_KNOBS,
                         # runs/ssl/cifar10.sh passes --K=8 (the flag's default is 1); wd 0.02 and lr
                         # 0.002 are cta_remixmatch.py's own defaults
                         {"K": 8, "wd": 0.02, "lr": 0.002}, variants=REMIXMATCH_VARIANTS,
                         forwards_per_step=lambda cfg: _remixmatch_forwards(cfg)),
    "supervised": Method("Supervised", "(ours: cross-entropy on the labeled batch)", {}, legacy=True),
    # fully_supervised/fs_mixup.py with every label (the paper's "fully supervised" rows):
    # MixUp Beta(0.5), wd 0.002 are fs_mixup's preset; set n_labeled to the training set size.
    "fs_mixup": Method("Fully supervised (MixUp)", "fully_supervised/fs_mixup.py", {"alpha": _alpha(0.5)},
                       {"wd": 0.002, "alpha": 0.5}, variants={"fully_supervised": {}}),
}
FULL_METHOD = "mixmatch"   # the row the Welch tests compare every other row against
MIXMATCH_FIELDS = tuple(MIXMATCH_KNOBS)   # legacy methods' identity keeps these


def owned_fields(method: str) -> set[str]:
    """Config fields that belong to `method` (its hyperparameters)."""
    return set(METHODS[method].hparams)


def method_fields() -> set[str]:
    """Every field some method owns: a method's identity hashes only its own."""
    return {f for m in METHODS.values() for f in m.hparams}


def knobs(name: str) -> list[tuple[str, Knob]]:
    """(method, Knob) for every method that owns the config field `name`."""
    return [(m, rec.hparams[name]) for m, rec in METHODS.items() if name in rec.hparams]


def variants() -> dict[str, dict[str, Any]]:
    """Every named variant: one per method (so a sweep's `variant` axis gives one table row per
    method) followed by that method's own variants. A variant's diff includes its method."""
    out: dict[str, dict[str, Any]] = {}
    for name, rec in METHODS.items():
        out[name] = {} if name == FULL_METHOD else {"method": name}
        for vname, diff in rec.variants.items():
            out[vname] = diff if name == FULL_METHOD else {"method": name, **diff}
    return out


def variant_method(diff: dict[str, Any]) -> str:
    """The method a variant's diff trains (the full method unless it names one)."""
    return diff.get("method", FULL_METHOD)


def row_order() -> list[str]:
    """Table rows: each method followed by its variants, in registry order."""
    return list(variants())


def relative_step_cost(cfg) -> float:
    """Cost of one step of `cfg`'s method relative to MixMatch's at K = 2 (dry-run estimates)."""
    return METHODS[cfg.method].forwards_per_step(cfg) / METHODS[FULL_METHOD].forwards_per_step(SimpleNamespace(K=2))


def load(name: str) -> ModuleType:
    """The module with the method's losses (imports torch)."""
    if name not in METHODS:
        raise KeyError(f"method: unknown '{name}'; allowed: {', '.join(METHODS)}")
    return importlib.import_module(f"{__name__}.{name}")
