"""The one config of a training run: the frozen dataclass, its presets, variants and validation.

Owns: every knob of a run (with its meaning and unit), parsing of YAML files and `key=value`
overrides, resolution (dataset preset, method defaults and preset, the named variant) and
validation with one-line errors, and the run's identity (its name and `cell_key`), which are
derived from the resolved config and nothing else. The facts it resolves with live in the two
registries: datasets.py (one record per dataset: classes, preset, split rule) and methods/
(one record per method: its knobs with their defaults, help and checks, its preset and its
named variants).

Resolution order (later wins):
    dataclass defaults (the paper's CIFAR-10 setting)
    < dataset preset (only for fields the user left unset)
    < the user's values (YAML, then key=value)
    < the variant's diff (a user value that contradicts the variant is an error).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from . import datasets, methods
from .methods import METHODS, MIXMATCH_FIELDS, method_fields, owned_fields


class ConfigError(ValueError):
    """A user error in a config, spec or override: its message is one line naming the field."""


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


def knob_field(name: str, default: Any = None, kind: type | None = None):
    """A method hyperparameter's field: its help is the registry's (methods/__init__.py), so the
    dataclass and `--help` cannot disagree. MixMatch's knobs keep the dataclass default (the
    paper's CIFAR-10 setting); the baselines' are None unless the run's method owns them."""
    owners = methods.knobs(name)
    help = (owners[0][1].help + f" [{', '.join(m for m, _ in owners)}]") if owners else "(no method declares it)"
    return _f(default, help, knob=True, **({"kind": kind} if kind else {}))


@dataclass(frozen=True)
class Config:
    # --- data -------------------------------------------------------------------------------
    dataset: str = _f("cifar10", datasets.allowed().replace(", ", " | "))
    data_dir: str = _f("data", "where torchvision datasets are downloaded/read")
    n_labeled: int = _f(250, "labeled training images (a multiple of the class count where the official split is "
                                  "balanced: CIFAR, STL-10, digits; any count on SVHN)")
    labeled_pool: str = _f("train", "stl10 only: where the labeled set is drawn from: train (the 5000 labeled "
                                    "images) | train+unlabeled (official create_split.py: the 100,000 "
                                    "unlabeled images join the pool with label 0; the paper's 5000-label cell)")
    val_size: int = _f(0, "training images carved out as a validation split (0 = none)")
    seed: int = _f(1, "labeled-split seed (the paper uses 1..5) and RNG seed of the run")
    # --- method -----------------------------------------------------------------------------
    method: str = _f("mixmatch", "training method (see --help methods); its own hyperparameters follow below")
    variant: str = _f("mixmatch", "named diff applied on top: an ablation or a method (see --help variants)")
    model: str = _f("wrn28_2", "wrn28_2 (1.47 M params) | wrn28_large (135 filters) | wrnD_K | small_cnn[W] (CPU scale)")
    scales: int = _f(0, "WRN stages (2x downscalings); 0 = auto, the official ilog2(width) - 2 with ilog2 = "
                        "ceil(log2): 3 at 32 px (STL-10's preset sets table2.sh's --scales=4)")
    # --- schedule (units: optimizer steps; one step = batch_size labeled images) ------------
    steps: int = _f(1 << 20, "training length in steps (paper: 2^26 images / 64 = 1,048,576)")
    batch_size: int = _f(64, "labeled images per step; the unlabeled batch has the same size")
    eval_every: int = _f(1024, "steps between evaluations (paper: 64 kimg = 1024 steps)")
    median_of: int = _f(20, "reported error = 100 - median accuracy of the last N evaluations")
    log_every: int = _f(256, "steps between loss/throughput metric points (one host sync each)")
    # --- MixMatch hyperparameters (paper notation) -------------------------------------------
    K: int = knob_field("K", 2)
    T: float = knob_field("T", 0.5)
    alpha: float = knob_field("alpha", 0.75)
    lambda_u: float = knob_field("lambda_u", 75.0)
    rampup_steps: int = knob_field("rampup_steps", 16384)
    mixup: str = knob_field("mixup", "all")
    ema_guess: bool = knob_field("ema_guess", False)
    bn_mode: str = knob_field("bn_mode", "interleave")
    # --- the baselines' hyperparameters (official flag names and meanings; a field is set only
    # for the methods that own it, None otherwise; defaults: methods/__init__.py) ------------
    consistency_weight: float | None = knob_field("consistency_weight", kind=float)
    warmup_pos: float | None = knob_field("warmup_pos", kind=float)
    threshold: float | None = knob_field("threshold", kind=float)
    pl_mask: str | None = knob_field("pl_mask", kind=str)
    vat_weight: float | None = knob_field("vat_weight", kind=float)
    vat_eps: float | None = knob_field("vat_eps", kind=float)
    vat_xi: float | None = knob_field("vat_xi", kind=float)
    entmin_weight: float | None = knob_field("entmin_weight", kind=float)
    confidence: float | None = knob_field("confidence", kind=float)
    wu: float | None = knob_field("wu", kind=float)
    uratio: int | None = knob_field("uratio", kind=int)
    pseudo_target: str | None = knob_field("pseudo_target", kind=str)
    anchoring: str | None = knob_field("anchoring", kind=str)
    teacher: str | None = knob_field("teacher", kind=str)
    # --- a method's own optimiser (methods.optimizer_knobs; None: TF Adam, constant lr, decoupled wd)
    optimizer: str | None = knob_field("optimizer", kind=str)
    momentum: float | None = knob_field("momentum", kind=float)
    nesterov: bool | None = knob_field("nesterov", kind=bool)
    adam_beta1: float | None = knob_field("adam_beta1", kind=float)
    adam_beta2: float | None = knob_field("adam_beta2", kind=float)
    lr_schedule: str | None = knob_field("lr_schedule", kind=str)
    lr_end: float | None = knob_field("lr_end", kind=float)
    wd_mode: str | None = knob_field("wd_mode", kind=str)
    # --- a method's strong view (methods.augment_knobs; strong.py) -------------------------------
    augment: str | None = knob_field("augment", kind=str)
    cutout: bool | None = knob_field("cutout", kind=bool)
    cta_depth: int | None = knob_field("cta_depth", kind=int)
    cta_threshold: float | None = knob_field("cta_threshold", kind=float)
    cta_decay: float | None = knob_field("cta_decay", kind=float)
    # --- ReMixMatch's own (cta/cta_remixmatch.py flags; K, T, alpha, rampup_steps are shared above)
    w_match: float | None = knob_field("w_match", kind=float)
    w_kl: float | None = knob_field("w_kl", kind=float)
    w_rot: float | None = knob_field("w_rot", kind=float)
    redux: str | None = knob_field("redux", kind=str)
    use_dm: bool | None = knob_field("use_dm", kind=bool)
    use_xe: bool | None = knob_field("use_xe", kind=bool)
    dbuf: int | None = knob_field("dbuf", kind=int)
    anchor_view: str | None = knob_field("anchor_view", kind=str)
    # --- optimisation -----------------------------------------------------------------------
    lr: float = _f(0.002, "learning rate (the base of lr_schedule where the method has one; MixMatch: Adam, constant)")
    wd: float = _f(0.02, "weight decay of conv/linear kernels: decoupled, kernels *= 1 - wd * lr each step (MixMatch), "
                         "or as wd_mode says")
    ema_decay: float = _f(0.999, "parameter EMA decay per step")
    ema: bool = _f(True, "evaluate (and report) the EMA model; false: the live model")
    # --- runtime (not part of the run's identity) -------------------------------------------
    device: str = _f("auto", "auto | cpu | cuda | cuda:N | mps", runtime=True)
    amp: str = _f("none", "none | bf16 (autocast; batch norm, losses and weights stay fp32)")
    tf32: bool = _f(False, "CUDA only: TF32 (10-bit mantissa inputs) for fp32 convolutions and matmuls on Ampere or "
                           "later GPUs, faster; false = strict fp32, as the official code computed (TF1 on V100), "
                           "although PyTorch's own default runs cuDNN convolutions in TF32")
    channels_last: bool = _f(True, "channels_last (NHWC) memory format for images and model: same results within 1e-5, "
                                   "1.15-1.35x faster on CPU (docs/performance.md); false = NCHW", runtime=True)
    compile: bool = _f(False, "torch.compile the model's forward and backward (no graph break; see compile_mode)",
                       runtime=True)
    compile_mode: str = _f("default", "torch.compile mode: default | reduce-overhead (CUDA graphs: one launch "
                                      "per step's forward/backward) | max-autotune", runtime=True)
    num_threads: int = _f(0, "torch CPU threads (0 = torch's default)", runtime=True)
    experiment: str = _f("mixmatch", "MLflow experiment name", runtime=True)
    out_dir: str = _f("runs", "checkpoint root; a run lives in OUT_DIR/RUN_NAME-CELLKEY", runtime=True)
    progress: bool = _f(True, "show a progress bar", runtime=True)

    # -- identity ------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment, sorted by name: the common fields, the
        method's own hyperparameters (only those), and any field added since release 0.1 that
        no method owns once it is set away from its default. So every run made before the method
        registry keeps its cell_key (tests/test_identity.py pins them), and a baseline's
        identity never holds another method's knobs."""
        method = METHODS[self.method]
        names = set(LEGACY_IDENTITY)
        if not method.legacy:
            names = (names - set(MIXMATCH_FIELDS)) | set(method.hparams)
        names |= {f.name for f in fields(self) if not f.metadata.get("runtime") and f.name not in LEGACY_IDENTITY
                  and f.name not in method_fields() and getattr(self, f.name) != f.default}
        return {n: getattr(self, n) for n in sorted(names)}

    @property
    def cell_key(self) -> str:
        """Stable 12-hex-digit hash of the identity: equal configs give equal keys on any machine."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def run_name(self) -> str:
        """Readable name from the config, e.g. `cifar10-250-s1-no_sharpen`."""
        ds = self.dataset.split(":", 1)[0] if not self.dataset.startswith("npz:") else \
            "npz_" + re.sub(r"\W+", "_", self.dataset[4:].rsplit("/", 1)[-1].removesuffix(".npz"))
        return f"{ds}-{self.n_labeled}-s{self.seed}-{self.variant}"

    @property
    def run_dir(self) -> str:
        return f"{self.out_dir}/{self.run_name}-{self.cell_key}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


FIELDS = {f.name: f for f in fields(Config)}
DEFAULTS = Config()
# The identity hashed by release 0.1 (every non-runtime field it had). Legacy methods
# (mixmatch, supervised) hash exactly these; do not edit this tuple, it is the past.
LEGACY_IDENTITY = ("K", "T", "alpha", "amp", "batch_size", "bn_mode", "data_dir", "dataset", "ema", "ema_decay",
                   "ema_guess", "eval_every", "lambda_u", "log_every", "lr", "median_of", "method", "mixup",
                   "model", "n_labeled", "rampup_steps", "seed", "steps", "val_size", "variant", "wd")

# Named diffs against the full method: one per method and each method's own (MixMatch's
# Table 4 ablations, fs_mixup's fully_supervised), all declared in methods/__init__.py.
VARIANTS: dict[str, dict[str, Any]] = methods.variants()

CHOICES = {
    "method": tuple(METHODS),
    "labeled_pool": datasets.LABELED_POOLS,
    "amp": ("none", "bf16"),
    "compile_mode": ("default", "reduce-overhead", "max-autotune"),
}


# ---- parsing -----------------------------------------------------------------------------------
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def did_you_mean(word: str, choices) -> str:
    """" (did you mean 'x'?)" for the closest of `choices` to a misspelt `word` (difflib's
    ratio >= 0.6), or "" when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def name_unknown(unknown, allowed) -> str:
    """The unknown names, sorted, each with its "did you mean" (for one-line errors)."""
    return ", ".join(f"{u}{did_you_mean(u, allowed)}" for u in sorted(unknown))


def _coerce(name: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise a one-line error."""
    if name not in FIELDS:
        raise ConfigError(f"unknown config key '{name}'{did_you_mean(name, FIELDS)}; known keys: {', '.join(FIELDS)}")
    typ = FIELDS[name].metadata.get("kind") or type(getattr(DEFAULTS, name))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return str(value)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`['K=3', 'T=0.5']` -> `{'K': 3, 'T': 0.5}` (types checked against the dataclass)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = _coerce(key.strip(), yaml.safe_load(value) if value else "")
    return out


def load_yaml(path: str, what: str = "config file") -> dict[str, Any]:
    """Read a YAML mapping with `yaml.safe_load`; errors name the file as `what` (e.g. "spec")."""
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} '{path}' does not exist") from None
    except IsADirectoryError:
        yamls = sorted(p.name for p in Path(path).glob("*.y*ml"))
        example = f", e.g. {Path(path) / yamls[0]} (it holds {', '.join(yamls)})" if yamls else ""
        raise ConfigError(f"{what} '{path}' is a directory; give one file{example}") from None
    except OSError as e:
        raise ConfigError(f"{what} '{path}' cannot be read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{what} '{path}' is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{path}' must be a mapping of key: value")
    return data


# ---- resolution and validation ----------------------------------------------------------------
def resolve(user: dict[str, Any] | None = None, variants: dict[str, dict[str, Any]] | None = None,
            base: dict[str, Any] | None = None) -> Config:
    """Build the validated Config from the user's values (see the module docstring for order).
    `variants` adds named diffs (e.g. a sweep spec's own) to the built-in VARIANTS. `base` (a
    sweep spec's shared values) is like `user`, except that a method hyperparameter in it
    applies only to cells whose method owns it (one base serves a grid of several methods)."""
    user, base = _without_unset(user), _without_unset(base)
    user = {k: _coerce(k, v) for k, v in user.items()}
    base = {k: _coerce(k, v) for k, v in base.items()}
    known = {**VARIANTS, **(variants or {})}
    given = {**base, **user}
    values = DEFAULTS.to_dict()
    dataset = given.get("dataset", values["dataset"])
    info = datasets.dataset_info(dataset)
    if info is None:
        raise ConfigError(f"dataset: unknown '{dataset}'; allowed: {datasets.allowed()}")
    values.update(info.preset)
    method = _method_of(given, known, variants or {})
    values.update({k: knob.default for k, knob in METHODS[method].hparams.items() if knob.default is not None})
    values.update(METHODS[method].preset)
    foreign = _foreign_fields(method)
    values.update({k: v for k, v in base.items() if k not in foreign})
    diff = {k: _coerce(k, v) for k, v in known[given.get("variant", values["variant"])].items()}
    for key in [*user, *diff]:
        if key in foreign:
            mine = sorted(owned_fields(method)) or ["none"]
            raise ConfigError(f"{key}: not a hyperparameter of method '{method}'; its hyperparameters: "
                              f"{', '.join(mine)}")
    values.update(user)
    if "variant" not in given and "method" in user and not METHODS[method].legacy:
        values["variant"] = method   # `method=vat` alone names its runs after the method
    explicit = {**{k: v for k, v in base.items() if k not in foreign}, **user}
    for key, val in diff.items():
        if key in explicit and explicit[key] != val:
            raise ConfigError(f"variant '{values['variant']}' sets {key}={val}, which contradicts "
                              f"{key}={explicit[key]}")
        values[key] = val
    values.update({k: None for k in foreign})   # another method's knobs: not part of this run
    cfg = Config(**values)
    validate(cfg)
    return cfg


def _without_unset(values: dict[str, Any] | None) -> dict[str, Any]:
    """Drop method hyperparameters given as null: a run's own config.yaml lists the other
    methods' fields as null, and must load back as the same config."""
    optional = method_fields() | {n for n, f in FIELDS.items() if f.metadata.get("knob")}   # MixMatch's included
    return {k: v for k, v in (values or {}).items() if not (v is None and k in optional)}


def _method_of(given: dict[str, Any], known: dict[str, dict[str, Any]], own: dict[str, dict[str, Any]]) -> str:
    """The run's method: the variant's, else the user's, else MixMatch; one-line errors.

    Every built-in variant belongs to one method (`mixmatch` and its Table 4 ablations to
    MixMatch, `vat` to VAT, ...), so a variant and a method given together must agree:
    `variant=mixmatch method=vat` is an error, not VAT trained under a run named after MixMatch.
    A spec's own variant without a `method` applies to the given method."""
    variant = given.get("variant", DEFAULTS.variant)
    if variant not in known:
        raise ConfigError(f"variant: unknown '{variant}'; allowed: {', '.join(known)}")
    asked = given.get("method")
    if "variant" not in given:       # the default variant names no method: the asked one trains
        owner = None
    else:
        owner = known[variant].get("method") or (methods.variant_method(VARIANTS[variant])
                                                 if variant in VARIANTS and variant not in own else None)
    if owner and asked is not None and asked != owner:
        raise ConfigError(f"variant: '{variant}' is a variant of method '{owner}', which contradicts "
                          f"method={asked}; give one of them (variant={asked} names {asked}'s runs)")
    method = owner or asked or DEFAULTS.method
    if method not in METHODS:
        raise ConfigError(f"method: '{method}' is not one of {', '.join(METHODS)}")
    return method


def _foreign_fields(method: str) -> set[str]:
    """Hyperparameters of other methods, which this method's runs leave unset (None).
    Legacy methods keep MixMatch's fields: `supervised` runs have always carried them."""
    mine = owned_fields(method) | (set(MIXMATCH_FIELDS) if METHODS[method].legacy else set())
    return method_fields() - mine


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """YAML file (optional) < key=value overrides, then `resolve`."""
    user: dict[str, Any] = {}
    if path:
        user.update(load_yaml(path))
    user.update(parse_overrides(overrides or []))
    return resolve(user)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def validate(c: Config) -> None:
    """Range checks that need no data. Data-dependent checks (n_labeled vs the train set size)
    happen when the dataset is opened, before anything is started or written."""
    for name, allowed in CHOICES.items():
        _check(getattr(c, name) is None or getattr(c, name) in allowed, f"{name}: '{getattr(c, name)}' is not one of {', '.join(allowed)}")
    _check(bool(re.fullmatch(r"small_cnn(\d*)|wrn28_large|wrn\d+_\d+", c.model))
           and not re.fullmatch(r"small_cnn[0-3]", c.model),
           f"model: '{c.model}' is not one of wrn28_2, wrn28_large, wrnD_K (D = 6n+4), small_cnn, small_cnnW (W >= 4)")
    m = re.fullmatch(r"wrn(\d+)_(\d+)", c.model)
    if m:
        _check(int(m[1]) >= 10 and (int(m[1]) - 4) % 6 == 0 and int(m[2]) >= 1,
               f"model: '{c.model}' needs depth 6n+4 >= 10 and width >= 1 (e.g. wrn28_2)")
    if c.dataset.startswith("npz:"):
        _check(len(c.dataset) > 4, "dataset: npz: needs a path, e.g. npz:data/cifar10.npz")
    info = datasets.dataset_info(c.dataset)
    ncls = info.n_classes if info is not None else None
    _check(c.n_labeled > 0, f"n_labeled: must be positive, got {c.n_labeled}")
    # The official split (create_split.py) is balanced where the classes are (CIFAR, STL-10,
    # digits), so there n_labeled must divide evenly; SVHN's follows the class frequencies.
    if ncls and info.balanced_split:
        _check(c.n_labeled % ncls == 0,
               f"n_labeled: must be a positive multiple of the class count ({ncls}), got {c.n_labeled}")
    if info is not None and info.fold_size and c.n_labeled == info.fold_size:   # predefined fold `seed`
        _check(0 <= c.seed <= 9, f"seed: {c.dataset} at n_labeled={c.n_labeled} uses the predefined fold "
                                 f"`seed`; allowed: 0..9, got {c.seed}")
    _check(c.labeled_pool == "train" or (info is not None and info.labeled_pool_extra),
           f"labeled_pool: '{c.labeled_pool}' needs dataset "
           f"{' or '.join(n for n, d in datasets.DATASETS.items() if d.labeled_pool_extra)} (its unlabeled split); "
           f"allowed for '{c.dataset}': train")
    _check(c.scales >= 0, f"scales: must be >= 0 (0 = auto), got {c.scales}")
    _check(c.val_size >= 0, f"val_size: must be >= 0, got {c.val_size}")
    _check(c.steps >= 1, f"steps: must be >= 1, got {c.steps}")
    _check(c.batch_size >= 2, f"batch_size: must be >= 2, got {c.batch_size}")
    _check(1 <= c.eval_every <= c.steps, f"eval_every: must be in 1..steps ({c.steps}), got {c.eval_every}")
    _check(c.median_of >= 1, f"median_of: must be >= 1, got {c.median_of}")
    _check(c.log_every >= 1, f"log_every: must be >= 1, got {c.log_every}")
    _validate_knobs(c)
    _check(c.lr > 0, f"lr: must be > 0, got {c.lr}")
    _check(0 <= c.wd * c.lr < 1, f"wd: wd * lr must be in [0, 1), got wd={c.wd}")
    _check(0 <= c.ema_decay < 1, f"ema_decay: must be in [0, 1), got {c.ema_decay}")
    _check(c.num_threads >= 0, f"num_threads: must be >= 0, got {c.num_threads}")
    _check(bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", c.device)),
           f"device: '{c.device}' is not one of auto, cpu, cuda, cuda:N, mps")
    _check(bool(c.experiment.strip()), "experiment: must not be empty")


def _validate_knobs(c: Config) -> None:
    """Each method hyperparameter against its owner's declared check (methods/__init__.py);
    None means the run's method does not own the field."""
    for name, knob in METHODS[c.method].hparams.items():
        value = getattr(c, name)
        _check(value is None or knob.allows(value), f"{name}: must be {knob.allowed()}, got {value!r}"
               if knob.choices is None else f"{name}: '{value}' is not one of {', '.join(knob.choices)}")


def help_text() -> str:
    """Every field with its default and meaning, for `mixmatch train --help`."""
    lines = ["config fields (key=value; defaults are the paper's CIFAR-10 setting):"]
    width = max(len(f.name) for f in fields(Config))
    for f in fields(Config):
        lines.append(f"  {f.name:<{width}} {str(f.default):<12} {f.metadata['help']}")
    lines.append("\ndataset presets (applied to fields you leave unset):")
    for info in (*datasets.DATASETS.values(), datasets.NPZ):
        lines.append(f"  {info.name:<10} " + ", ".join(f"{k}={v}" for k, v in info.preset.items()))
    lines.append("\nmethods (the fields each owns, official defaults; then its runs/table5.sh preset):")
    for name, m in METHODS.items():
        own = ", ".join(f"{k}={k_.default}" for k, k_ in m.hparams.items() if k_.default is not None) or \
            (", ".join(m.hparams) + " (the fields above)" if m.hparams else "none")
        preset = ", ".join(f"{k}={v}" for k, v in m.preset.items())
        where = m.official if m.official.startswith("(") else f"({m.official})"
        lines.append(f"  {name:<14} {m.title} {where}: {own}" + (f"; preset {preset}" if preset else ""))
    lines.append("\nvariants (one-line diffs against the full method; each belongs to its method):")
    for name, diff in VARIANTS.items():
        lines.append(f"  {name:<22} " + (", ".join(f"{k}={v}" for k, v in diff.items()) or "(full method)"))
    return "\n".join(lines)
