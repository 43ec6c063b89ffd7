"""Benchmark: does bf16 autocast or channels_last change what a run learns? (test error, same seed)

Owns: short real-data runs of the project's trainer (`mixmatch_core.train.train`, untracked)
that differ only in `amp` and `channels_last`, all from the same seed (same split, same
initial weights, same RNG stream), plus one fp32 run with another seed as the yardstick: a
setting whose error differs from fp32's by less than two seeds' errors differ has not
changed what the run learns. It answers whether bf16 / channels_last may be made defaults;
speed is benchmarks/step_time.py's subject (the s/step here is a by-product).

Default run: CIFAR-10 (../shared/datasets/cifar10.npz, relative to the repository root) with
250 labels and the CPU schedule that `mixmatch search` chose for experiments/cpu_cifar10.yaml
(small_cnn16, lambda_u 28 from step 0, lr 0.01, EMA decay 0.99), cut to 800 steps of batch
64, one evaluation (EMA and live model) at the end. Short runs with the paper's lambda_u
collapse to chance (90% error) on CIFAR-10, which would make every setting look "equal";
a reference run at chance is reported as a void comparison (exit 1). Without the npz the
embedded digits data set is used instead.

    python -m benchmarks.amp_accuracy [--settings all | fp32,channels_last,bf16,bf16_channels_last]
        [--method mixmatch|supervised] [--steps 800] [--n-labeled 250] [--model small_cnn16]
        [--lambda-u 28] [--rampup-steps 0] [--lr 0.01]
        [--seed 1] [--noise-seed 2 | --noise-seed 0 (none)] [--device cpu] [--out FILE.json]

Cost: a bf16 run costs what an fp32 run does only on hardware with native bf16 (GPUs, CPUs
with AVX-512 BF16 / AMX); on an AVX2-only CPU bf16 convolutions take a reference path that
is about 10x slower than fp32 (see the printed `bf16 native`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import torch

from .results import write_result
from .step_time import CIFAR_NPZ, SETTINGS, bf16_native

BF16_ERROR_TOLERANCE_PCT = 1.0   # allowed |error - fp32 error| beyond the seed-to-seed spread


def run_config(args, setting: str, seed: int, out_dir: str):
    from mixmatch_core.config import resolve
    amp, cl = SETTINGS[setting]
    if CIFAR_NPZ.exists() and args.data == "auto":
        data = {"dataset": f"npz:{CIFAR_NPZ.resolve()}", "n_labeled": args.n_labeled}
    else:
        data = {"dataset": "digits", "n_labeled": min(args.n_labeled, 100)}
    return resolve({**data, "model": args.model, "method": args.method, "steps": args.steps,
                    "eval_every": args.steps, "log_every": args.steps, "median_of": 1,
                    "rampup_steps": args.rampup_steps, "lambda_u": args.lambda_u, "lr": args.lr,
                    "ema_decay": args.ema_decay, "seed": seed,
                    "amp": amp, "channels_last": cl, "device": args.device, "num_threads": args.threads,
                    "progress": False, "out_dir": out_dir})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.amp_accuracy", description=__doc__.splitlines()[0])
    p.add_argument("--settings", default="all", help="all, or a comma list of " + ", ".join(SETTINGS))
    p.add_argument("--method", default="mixmatch", choices=("mixmatch", "supervised"))
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--n-labeled", type=int, default=250)
    p.add_argument("--model", default="small_cnn16")
    p.add_argument("--lambda-u", type=float, default=28.0, help="cpu_cifar10's searched value")
    p.add_argument("--rampup-steps", type=int, default=0, help="cpu_cifar10's searched value")
    p.add_argument("--lr", type=float, default=0.01, help="cpu_cifar10's searched value")
    p.add_argument("--ema-decay", type=float, default=0.99)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--noise-seed", type=int, default=2, help="seed of the extra fp32 run (0 = skip it)")
    p.add_argument("--data", default="auto", choices=("auto", "digits"), help="auto: CIFAR-10 npz if present")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p


def chosen_settings(p: argparse.ArgumentParser, settings: str) -> list[str]:
    """The settings to train, fp32 (the reference) first when not asked for."""
    names = list(SETTINGS) if settings == "all" else [s.strip() for s in settings.split(",") if s.strip()]
    bad = [n for n in names if n not in SETTINGS]
    if bad:
        p.error(f"unknown setting(s) {', '.join(bad)}; allowed: {', '.join(SETTINGS)}")
    if "fp32" not in names:
        names.insert(0, "fp32")   # the reference every other setting is compared with
    return names


def train_runs(args, runs: list[tuple[str, int]]) -> list[dict]:
    """One untracked training run per (setting, seed); its final EMA and live test errors."""
    from mixmatch_core.train import train
    results = []
    with tempfile.TemporaryDirectory(prefix="mm-amp-") as tmp:
        for setting, seed in runs:
            cfg = run_config(args, setting, seed, f"{tmp}/{setting}-s{seed}")
            print(f"{setting} seed {seed}: {cfg.method} {cfg.model} on {cfg.dataset} ({cfg.n_labeled} labels), "
                  f"{cfg.steps} steps ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            r = train(cfg)
            wall = time.perf_counter() - t0
            h = r.history[-1]
            results.append({"setting": setting, "seed": seed, "amp": cfg.amp, "channels_last": cfg.channels_last,
                            "error_ema": h["test_error_ema"], "error_raw": h["test_error_raw"],
                            "wall_s": wall, "train_s_per_step": 1.0 / r.steps_per_s if r.steps_per_s else None})
            print(f"  error {h['test_error_ema']:.2f}% (EMA), {h['test_error_raw']:.2f}% (live); {wall:.0f} s",
                  file=sys.stderr, flush=True)
    return results


def compare_with_fp32(args, results: list[dict]) -> tuple[float | None, float]:
    """Each run's delta to the fp32 run of --seed and whether it is within the seed-to-seed
    spread + tolerance (set on the rows); returns (spread, allowed delta)."""
    ref = next(x for x in results if x["setting"] == "fp32" and x["seed"] == args.seed)
    noise = next((x for x in results if x["seed"] == args.noise_seed and args.noise_seed), None)
    spread = abs(noise["error_ema"] - ref["error_ema"]) if noise else None
    allowed = (spread or 0.0) + BF16_ERROR_TOLERANCE_PCT
    for x in results:
        x["delta_vs_fp32_pct"] = x["error_ema"] - ref["error_ema"]
        x["within_noise"] = abs(x["delta_vs_fp32_pct"]) <= allowed
    return spread, allowed


def print_report(args, device, out: dict) -> None:
    results, spread, allowed = out["runs"], out["seed_spread_pct"], out["allowed_delta_pct"]
    print(f"amp_accuracy: {args.method} {args.model}, {args.steps} steps, {out['dataset']}, seed {args.seed}; "
          f"{device} ({out['threads']} threads, bf16 native: {out['bf16_native']})")
    print(f"{'setting':<20} {'seed':>4} {'error EMA %':>11} {'error live %':>12} {'vs fp32':>8} {'s/step':>7} "
          f"{'wall s':>7}")
    for x in results:
        sps = f"{x['train_s_per_step']:.3f}" if x["train_s_per_step"] else "-"
        print(f"{x['setting']:<20} {x['seed']:>4} {x['error_ema']:>11.2f} {x['error_raw']:>12.2f} "
              f"{x['delta_vs_fp32_pct']:>+8.2f} {sps:>7} {x['wall_s']:>7.0f}")
    if spread is not None:
        print(f"seed-to-seed spread (fp32, seeds {args.seed} vs {args.noise_seed}): {spread:.2f} points; a setting "
              f"within {allowed:.2f} points of fp32 (spread + {BF16_ERROR_TOLERANCE_PCT}) learns the same")
    for x in results:
        if x["setting"] != "fp32":
            print(f"  {x['setting']}: {'same as fp32 within noise' if x['within_noise'] else 'DIFFERS from fp32'}")


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    names = chosen_settings(p, args.settings)

    from mixmatch_core.train import resolve_device
    device = resolve_device(args.device)
    runs = [(n, args.seed) for n in names] + ([("fp32", args.noise_seed)] if args.noise_seed else [])
    load0 = os.getloadavg()
    results = train_runs(args, runs)
    spread, allowed = compare_with_fp32(args, results)
    out = {"benchmark": "amp_accuracy", "dataset": run_config(args, "fp32", args.seed, "x").dataset,
           "method": args.method, "model": args.model, "steps": args.steps, "n_labeled": args.n_labeled,
           "ema_decay": args.ema_decay, "device": str(device), "threads": torch.get_num_threads(),
           "bf16_native": bf16_native(device), "seed": args.seed, "noise_seed": args.noise_seed or None,
           "seed_spread_pct": spread, "allowed_delta_pct": allowed, "runs": results,
           "load_avg_before": load0, "load_avg_after": os.getloadavg()}
    print_report(args, device, out)
    write_result(out, args.out)
    ref_error = next(x["error_ema"] for x in results if x["setting"] == "fp32" and x["seed"] == args.seed)
    chance = 100.0 * (1 - 1 / 10) - 2.0   # 10 classes in both CIFAR-10 and digits; 2 points of slack
    if ref_error >= chance:
        print(f"VOID: the fp32 reference run ended at {ref_error:.1f}% error (chance level): it did not "
              "learn, so equal errors say nothing; use a schedule that trains (--lambda-u, --lr, --steps)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
