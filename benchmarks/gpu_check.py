"""GPU check: what one GPU machine gives this trainer, measured in under 8 minutes by one command.

    python -m benchmarks.gpu_check --out DIR            # on the GPU machine (about 7 minutes)
    python -m benchmarks.gpu_check --out DIR --device cpu --tiny    # the same code path in a minute or two

Needs torch, torchvision, numpy, scikit-learn, PyYAML and tqdm; imports neither MLflow nor Optuna
(directly or through what it imports) and downloads nothing. Its data: synthetic uint8 images for
the step timings, and scikit-learn's embedded 8x8 digits upscaled to 32x32 RGB for the trainer
runs (DIR/digits32.npz while the workers run). Every section runs in subprocesses with a
deadline (benchmarks/gpu_protocol.py), so a hung compile costs its own budget only. Sections:

1. step: seconds per step of benchmarks/step_time.py's (a) full WRN-28-2 MixMatch step (the
   trainer's), (b) model floor and (c) naive port, all in bf16 with channels_last, batch
   64 + 2 x 64, eager and under each torch.compile mode (default, reduce-overhead,
   max-autotune). One process per mode; they compile side by side (compiling is CPU work),
   then each is timed alone on the GPU. Each mode is the trainer's own `compile=true
   compile_mode=MODE` (step_time.compile_model calls mixmatch_core.train.compiled).
2. workers: summed training throughput of 1, 2, 4 and 8 worker processes on the one GPU, each
   the real trainer (`mixmatch_core.train.train`, no tracking) on the digits-32 data, pinned
   and given threads exactly as `--workers-per-gpu` does (sweeps/gpus.py). The workers start
   together once each has warmed up (a file barrier at the first evaluation) and stop at the
   same wall-clock time; a worker's rate is its steps between its evaluations inside the
   common window.
3. train: a ~1-minute MixMatch run (WRN-28-2, 250 labels) of the trainer's step on the digits-32
   images (shift augmentation, no flip), with the loss and the EMA and live test error every
   ~10 s, to see both fall.
4. packed: N = 1, 2, 4, 8, 16 cells packed into one model (benchmarks/packed.py), eager and
   compiled, against one cell (1.) and N processes (2.), with the equality check of a packed step
   against N separate ones on the device; 5. vat: the VAT probe (benchmarks/vat_probe.py);
   6. methods: every registered method through the trainer; 7. strong augmentation: CTAugment
   and RandAugment + Cutout of FixMatch's unlabeled batch against one training step. See
   benchmarks/gpu_sections.py. Sections 1, 4 and 7 and the probe start together (side by
   side), then 2, 6 and 3 run in turn.

Prints a table and writes DIR/gpu_check.json (docs/gpu_check.md explains how to read it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import gpu_sections as sections
from benchmarks.digits32 import digits32, write_digits32
from benchmarks.gpu_protocol import REPO, env, log, run_side_by_side, serve_timings

MODES = ("eager", "default", "reduce-overhead", "max-autotune")
# Budget of each section, seconds (the total must stay under 8 minutes on the GPU machine):
# compiling sections 1 and 4 side by side, then timing each child alone (all timings end by
# `timings_end` s after the start), a round of workers, the methods, the training run.
BUDGET_S = {"step_compile": 150, "step_time": 30, "packed_time": 45, "timings_end": 260, "workers_round": 30,
            "methods": 75, "train": 60}
TOTAL_S = 470
TINY_BUDGET_S = {"step_compile": 300, "step_time": 60, "packed_time": 60, "timings_end": 500, "workers_round": 60,
                 "methods": 120, "train": 1}


# ---- section 1: step timings (child process per mode) ----------------------------------------------
def child_step(args) -> int:
    """Build (a), (b), (c) with one compile mode, warm up (compiles), say READY, wait for GO on
    stdin, time them, print RESULT (benchmarks/gpu_protocol.py)."""
    import statistics

    import torch

    from benchmarks import step_time as st
    from mixmatch_core.data import DeviceData, split_labeled
    from mixmatch_core.precision import set_fp32_precision
    from mixmatch_core.train import device_name, seed_everything
    mode = None if args.mode == "eager" else args.mode
    out, device, naive = {"mode": args.mode, "note": None}, torch.device(args.device), []

    def build():
        seed_everything(0)
        ds = st.synthetic_dataset(args.n_train, args.n_test)
        cfg = st.make_config("cifar10", args.model, args.batch, 2, 250, args.amp, True, str(device))
        set_fp32_precision(cfg.tf32, device)     # the trainer's arithmetic (strict fp32) for all three steps
        data = DeviceData.build(ds, 250, 1, 0, device, True)
        lab, unl, _ = split_labeled(ds.y_train, 250, ds.n_classes, 1, 0)
        naive.append(st.NaiveStep(cfg, ds, lab, unl, device, args.amp, True, compile_mode=mode))
        out["device_name"] = device_name(device)
        return {"a": st.ProjectStep(cfg, data, compile_mode=mode),
                "b": st.FloorStep(args.model, 10, 3, data.image_size, args.batch, 2, args.amp, True, device,
                                  compile_mode=mode), "c": naive[0]}

    def finish(o: dict) -> None:
        med = o["seconds_per_step"]
        o.update(a_s=med["a"], b_s=med["b"], c_s=med["c"], a_over_b=med["a"] / med["b"], c_over_a=med["c"] / med["a"],
                 naive_input_pipeline_s=statistics.median(naive[0].load_s))
    return serve_timings(out, build, args.steps, args.repeats, args.warmup, device, finish)


def step_commands(args) -> dict[str, list[str]]:
    """Section 1: one child per compile mode."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", "step", "--device", args.device, "--amp", args.amp,
           "--model", args.model, "--batch", str(args.batch), "--steps", str(args.steps), "--repeats",
           str(args.repeats), "--warmup", str(args.warmup), "--n-train", str(args.n_train), "--n-test",
           str(args.n_test)]
    return {f"step {m}": cmd + ["--mode", m] + sections.tiny_threads(args) for m in args.modes}


# ---- section 2: several trainer processes on one GPU --------------------------------------------------
class _Stop(Exception):
    """Raised from on_eval at the common end time (train() re-raises it untouched)."""


def child_worker(args) -> int:
    """One pinned worker: the real trainer on digits-32 from the barrier's GO until END."""
    import torch

    from mixmatch_core.config import resolve
    from mixmatch_core.train import train
    barrier = Path(args.barrier)
    cfg = resolve({"dataset": f"npz:{args.data}", "model": args.model, "n_labeled": 250, "batch_size": args.batch,
                   "steps": 10 ** 7, "eval_every": args.eval_every, "log_every": args.eval_every, "median_of": 1,
                   "amp": args.amp, "channels_last": True, "device": args.device, "num_threads": args.threads,
                   "progress": False, "seed": args.rank + 1, "out_dir": str(barrier / f"runs{args.rank}")})
    evals: list[tuple[float, int]] = []
    end = None

    def on_eval(step: int, _h: dict) -> None:
        nonlocal end
        if end is None:
            # The barrier sits at the first evaluation, which ends the warm-up (imports, data,
            # model, CUDA context, compiles): every worker starts its window at GO, however long
            # its warm-up took (before, a worker slow to warm up could miss the others' window).
            (barrier / f"ready{args.rank}").touch()
            while not (barrier / "go").exists():
                time.sleep(0.02)
            end = float((barrier / "go").read_text())
        evals.append((time.time(), step))
        if time.time() >= end and len(evals) >= 3:     # 3: a window of two evaluation intervals
            raise _Stop

    try:
        train(cfg, tracker=None, on_eval=on_eval)
    except _Stop:
        pass
    Path(args.json).write_text(json.dumps({"rank": args.rank, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                           "threads": torch.get_num_threads(), "evals": evals}))
    return 0


def window_rates(workers: list[dict]) -> tuple[float, float, list[float]]:
    """(window start, window end, steps/s of each worker) over the window all workers trained in:
    from the latest first evaluation to the earliest last one (a worker's first evaluation
    ends its warm-up). A worker's step count at the window's ends is interpolated linearly
    between its evaluations (every worker has evaluations on both sides of each end)."""
    import numpy as np
    start = max(w["evals"][0][0] for w in workers)
    end = min(w["evals"][-1][0] for w in workers)
    rates = []
    for w in workers:
        t, s = np.array(w["evals"], dtype=float).T
        rates.append(float((np.interp(end, t, s) - np.interp(start, t, s)) / (end - start)) if end > start
                     else float("nan"))
    return start, end, rates


def run_workers(args, data: Path, budget: dict, step_s: float | None) -> list[dict]:
    """Section 2: for each count, start that many pinned trainer processes on the first GPU."""
    from sweeps import gpus
    gpu = (gpus.visible_gpus() or ["0"])[0]
    rows = []
    for n in args.workers_list:
        # --tiny: one thread each, as every --tiny child (sections.tiny_threads: spin-waiting
        # OpenMP threads on a shared CI core make every step many times slower)
        slots = gpus.plan([gpu], n, cores=n if args.tiny else None)
        if args.deadline is not None and time.monotonic() > args.deadline:
            rows.append({"workers": n, "threads_per_worker": slots[0].threads,
                         "error": "skipped: the check's time budget is spent"})
            continue
        # An evaluation about every 1.5 s per worker, if n workers share the GPU's time evenly.
        # An evaluation about every eval_interval_s per worker if the workers shared the GPU's time
        # evenly (faster when they overlap), so the window holds a few of them.
        eval_every = 2 if args.tiny else max(5, int(args.eval_interval_s / ((step_s or 0.03) * n)))
        with tempfile.TemporaryDirectory(dir=args.out) as d:
            def command(s, d=d, eval_every=eval_every):
                return [sys.executable, "-m", "benchmarks.gpu_check", "--child", "worker", "--device", args.device,
                        "--model", args.model, "--batch", str(args.batch), "--amp", args.amp, "--barrier", d,
                        "--data", str(data), "--rank", str(s.rank), "--threads", str(s.threads),
                        "--eval-every", str(eval_every), "--json", f"{d}/w{s.rank}.json"]
            procs = gpus.start(slots, command, base_env=env(), tied=True, cwd=REPO)
            row = {"workers": n, "threads_per_worker": slots[0].threads, "eval_every_steps": eval_every}
            try:
                deadline = time.monotonic() + budget["workers_round"]
                while len(list(Path(d).glob("ready*"))) < n and time.monotonic() < deadline and \
                        all(p.poll() is None for p in procs):
                    time.sleep(0.1)
                if len(list(Path(d).glob("ready*"))) < n:
                    row["error"] = "workers did not start in time" if all(p.poll() is None for p in procs) \
                        else "a worker exited before the start"
                else:
                    Path(d, "go.tmp").write_text(repr(time.time() + args.window_s))
                    Path(d, "go.tmp").rename(Path(d, "go"))
                    end = time.monotonic() + args.window_s + budget["workers_round"]
                    while any(p.poll() is None for p in procs) and time.monotonic() < end:
                        time.sleep(0.2)
                    done = [json.loads(Path(d, f"w{s.rank}.json").read_text()) for s in slots
                            if Path(d, f"w{s.rank}.json").exists()]
                    if len(done) < n or any(len(w["evals"]) < 2 for w in done):
                        row["error"] = f"{len(done)} of {n} workers reported two evaluations or more"
                    else:
                        t0, t1, rates = window_rates(done)
                        row.update(window_s=t1 - t0, steps_per_s=rates, total_steps_per_s=sum(rates),
                                   images_per_s=sum(rates) * args.batch * 3, pinned=[w["gpu"] for w in done],
                                   torch_threads=[w["threads"] for w in done])
            finally:
                gpus.stop(procs)
        if "total_steps_per_s" in row and rows and "total_steps_per_s" in rows[0]:
            row["speedup_vs_first"] = row["total_steps_per_s"] / rows[0]["total_steps_per_s"]
        log(f"  workers {n}: " + (f"{row['total_steps_per_s']:.1f} steps/s in all" if "total_steps_per_s" in row
                                  else row["error"]))
        rows.append(row)
    return rows


# ---- section 3: a short real training run -------------------------------------------------------------
def child_train(args) -> int:
    """MixMatch on digits-32 with the trainer's step for `--seconds`; evaluations every ~10 s."""
    from benchmarks import step_time as st
    from mixmatch_core.data import DeviceData
    from mixmatch_core.precision import set_fp32_precision
    from mixmatch_core.train import evaluate_all, resolve_device, seed_everything
    device = resolve_device(args.device)
    seed_everything(1)
    ds = digits32(args.n_train if args.tiny else None)
    n_labeled = 50 if args.tiny else 250
    cfg = st.make_config("cifar10", args.model, args.batch, 2, n_labeled, args.amp, True, str(device))
    set_fp32_precision(cfg.tf32, device)
    data = DeviceData.build(ds, n_labeled, 1, 0, device, True)
    step = st.ProjectStep(cfg, data)
    curve, n_acc = [], 0
    t0 = last = time.perf_counter()
    while True:
        step()
        n_acc += 1
        now = time.perf_counter()
        if now - last >= args.eval_every_s or (now - t0 >= args.seconds and curve):
            loss = (step.acc / n_acc).tolist()        # host sync: once per evaluation
            step.acc.zero_()
            n_acc = 0
            h = evaluate_all(cfg, step.model, step.ema_model, data, step.amp_ctx, data.n_classes)
            curve.append({"seconds": time.perf_counter() - t0, "step": step.step, "loss": loss[0],
                          "loss_x": loss[1], "loss_u": loss[2], "test_error_ema": h["test_error_ema"],
                          "test_error_live": h["test_error_raw"]})
            log(f"  train: {curve[-1]['seconds']:.0f} s, step {step.step}, loss {loss[0]:.3f}, "
                f"test error {h['test_error_ema']:.1f}% (EMA) {h['test_error_raw']:.1f}% (live)")
            last = time.perf_counter()
            if now - t0 >= args.seconds and len(curve) >= 2:
                break
    Path(args.json).write_text(json.dumps({
        "model": args.model, "n_labeled": n_labeled, "data": f"digits 8x8 -> 32x32 RGB, {len(ds.x_train)} train / "
        f"{len(ds.x_test)} test images", "lambda_u": cfg.lambda_u, "rampup_steps": cfg.rampup_steps,
        "ema_decay": cfg.ema_decay, "bad_loss": bool(step.bad.item()), "curve": curve}))
    return 0


def run_train(args, budget_s: float) -> dict:
    with tempfile.TemporaryDirectory(dir=args.out) as d:
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", "train", "--device", args.device, "--model",
               args.model, "--batch", str(args.batch), "--amp", args.amp, "--seconds", str(budget_s), "--eval-every-s",
               str(args.eval_every_s), "--n-train", str(args.n_train), "--json", f"{d}/train.json"]
        cmd += ["--tiny"] if args.tiny else []
        try:
            subprocess.run(cmd, cwd=REPO, env=env(), timeout=budget_s + 90, check=True)
            return json.loads(Path(d, "train.json").read_text())
        except (subprocess.SubprocessError, OSError) as e:
            return {"error": f"{type(e).__name__}: {e}"[:300]}


# ---- driver --------------------------------------------------------------------------------------------
def machine() -> dict:
    import platform

    import torch
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), gpus_visible=torch.cuda.device_count())
    return out


def print_table(r: dict) -> None:
    m = r["machine"]
    print(f"gpu_check on {m.get('gpu', 'CPU')} (torch {m['torch']}, CUDA {m['cuda']}, {m['cores']} cores); "
          f"{r['wall_s']:.0f} s in all")
    s = r["settings"]
    print(f"\n1. seconds per step, {s['model']}, batch {s['batch']} + 2 x {s['batch']} unlabeled, "
          f"{s['amp']} + channels_last, median of {s['repeats']} x {s['steps']} steps")
    print(f"{'mode':<16} {'(a) step ms':>12} {'(b) floor ms':>13} {'(c) naive ms':>13} {'(a)/(b)':>8} "
          f"{'(c)/(a)':>8} {'compile s':>10}  note")
    for row in r["step"]:
        if "a_s" not in row:
            print(f"{row['mode']:<16} {'-':>12} {'-':>13} {'-':>13} {'-':>8} {'-':>8} "
                  f"{row.get('compile_and_warmup_s', float('nan')):>10.1f}  {row.get('error', '')}")
            continue
        print(f"{row['mode']:<16} {row['a_s'] * 1e3:>12.2f} {row['b_s'] * 1e3:>13.2f} {row['c_s'] * 1e3:>13.2f} "
              f"{row['a_over_b']:>8.2f} {row['c_over_a']:>8.2f} {row['compile_and_warmup_s']:>10.1f}  "
              f"{row.get('note') or ''}")
    print(f"\n2. workers on one GPU: the trainer on digits-32 ({s['model']}, {s['amp']}), {s['window_s']:.0f} s window")
    print(f"{'workers':>7} {'threads':>8} {'steps/s in all':>15} {'per worker':>11} {'images/s':>9} {'vs 1st':>7}")
    for row in r["workers"]:
        if "total_steps_per_s" not in row:
            print(f"{row['workers']:>7} {row['threads_per_worker']:>8}  {row.get('error', '')}")
            continue
        print(f"{row['workers']:>7} {row['threads_per_worker']:>8} {row['total_steps_per_s']:>15.1f} "
              f"{row['total_steps_per_s'] / row['workers']:>11.1f} {row['images_per_s']:>9.0f} "
              f"{row.get('speedup_vs_first', 1.0):>7.2f}")
    t = r["train"]
    sections.print_block(
        f"\n3. training run: MixMatch {s['model']}, {t.get('n_labeled', '?')} labels, {t.get('data', '')}",
        t.get("curve"), t.get("error"),
        f"{'seconds':>8} {'step':>7} {'loss':>8} {'loss_x':>8} {'loss_u':>8} {'error EMA %':>12} {'error live %':>13}",
        lambda c: f"{c['seconds']:>8.0f} {c['step']:>7} {c['loss']:>8.4f} {c['loss_x']:>8.4f} {c['loss_u']:>8.4f} "
                  f"{c['test_error_ema']:>12.2f} {c['test_error_live']:>13.2f}")


CHILDREN = {"step": child_step, "worker": child_worker, "train": child_train, "packed": sections.child_packed,
            "equal": sections.child_equal, "vat": sections.child_vat, "methods": sections.child_methods,
            "strong": sections.child_strong}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=False, help="directory for gpu_check.json")
    p.add_argument("--device", default="cuda", help="cuda (default) | cpu")
    p.add_argument("--tiny", action="store_true", help="CI-sized settings: small model, a few steps, seconds")
    p.add_argument("--modes", default=None, help=f"comma list of {', '.join(MODES)} (default: all; --tiny: eager)")
    p.add_argument("--workers-list", default=None, help="worker counts (default 1,2,4,8; --tiny: 1,2)")
    p.add_argument("--train-seconds", type=float, default=None, help="length of the training run (default 60)")
    p.add_argument("--packed-modes", default=None, help="packed section's modes (default eager,default; --tiny: eager)")
    p.add_argument("--packed-list", default=None, help="packed model counts (default 1,2,4,8,16; --tiny: 1,2)")
    # children (internal)
    p.add_argument("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    for name, kind in (("--mode", str), ("--model", str), ("--amp", str), ("--batch", int), ("--steps", int), ("--repeats", int),
                       ("--warmup", int), ("--n-train", int), ("--n-test", int), ("--barrier", str), ("--data", str),
                       ("--rank", int), ("--threads", int), ("--eval-every", int), ("--json", str),
                       ("--seconds", float), ("--eval-every-s", float), ("--methods", str), ("--method-steps", int),
                       ("--vat-steps", int)):
        p.add_argument(name, type=kind, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.child and not args.out:
        p.error("--out DIR is required")
    for key, allowed in (("modes", MODES), ("packed_modes", MODES)):
        bad = [m for m in (getattr(args, key) or "").split(",") if m.strip() and m.strip() not in allowed]
        if bad:
            p.error(f"--{key.replace('_', '-')}: unknown {', '.join(bad)}; allowed: {', '.join(allowed)}")
    return args


def apply_defaults(args: argparse.Namespace) -> None:
    """The GPU settings, or the CI-sized ones with --tiny."""
    tiny = args.tiny
    args.model = args.model or ("small_cnn8" if tiny else "wrn28_2")
    args.batch = args.batch or (8 if tiny else 64)
    args.steps, args.repeats, args.warmup = (1, 1, 1) if tiny else (10, 5, 3)
    args.packed_steps, args.packed_repeats = (1, 1) if tiny else (5, 3)
    args.n_train, args.n_test = (512, 64) if tiny else (50000, 10000)
    args.modes = [m.strip() for m in (args.modes or ("eager" if tiny else ",".join(MODES))).split(",") if m.strip()]
    args.packed_modes = [m.strip() for m in (args.packed_modes or ("eager" if tiny else "eager,default")).split(",")
                         if m.strip()]
    args.packed_list = [int(x) for x in (args.packed_list or ("1,2" if tiny else "1,2,4,8,16")).split(",")]
    args.workers_list = [int(x) for x in (args.workers_list or ("1,2" if tiny else "1,2,4,8")).split(",")]
    # The equality check: the paper's model and batch on the GPU; a WRN small enough for CI with --tiny.
    args.equal_model, args.equal_n, args.equal_batch = ("wrn10_1", 2, 8) if tiny else ("wrn28_2", 4, 64)
    args.vat_steps, args.method_steps = (2, 2) if tiny else (50, 100)
    # bf16 + channels_last everywhere; a CPU --tiny run stays fp32 (bf16 is 10-25x slower on CPUs
    # without native bf16, docs/performance.md)
    args.amp = "none" if tiny and args.device == "cpu" else "bf16"
    args.window_s = 1.0 if tiny else 10.0
    args.eval_interval_s = 0.5 if tiny else 3.0
    args.eval_every_s = 1.0 if tiny else 10.0


def run_all(args: argparse.Namespace, t_start: float) -> dict:
    """Every section in turn (see the module docstring), each within its budget."""
    budget = TINY_BUDGET_S if args.tiny else BUDGET_S
    out = Path(args.out)
    log(f"gpu_check: {args.device}, modes {', '.join(args.modes)}, packed {args.packed_modes} x {args.packed_list}, "
        f"workers {args.workers_list}")
    log("1. step timings, 4. packed models, 7. strong augmentation and 5. the VAT probe (compiling side by side)")
    commands = {**step_commands(args), **sections.packed_commands(args),
                "strong augment": sections.child_cmd(args, "strong"),
                "vat probe": sections.child_cmd(args, "vat", "--vat-steps", str(args.vat_steps))}
    time_s = {name: budget["step_time" if name.startswith("step") else "packed_time"] for name in commands}
    res = run_side_by_side(commands, budget["step_compile"], time_s, t_start + budget["timings_end"])
    steps = [{"mode": m, **res.pop(f"step {m}")} for m in args.modes]
    vat, equality, strong = res.pop("vat probe"), res.pop("packed equality"), res.pop("strong augment")
    eager = next((r for r in steps if r["mode"] == "eager" and "a_s" in r), None)
    log("2. workers on one GPU")
    # The methods and the training run keep their budgets (and the check stays within TOTAL_S).
    args.deadline = None if args.tiny else t_start + TOTAL_S - budget["train"] - budget["methods"] - 40
    data = write_digits32(out / "digits32.npz")
    workers = run_workers(args, data, budget, eager["a_s"] if eager else None)
    log("6. every method through the trainer")
    methods_s = budget["methods"] if args.tiny else min(budget["methods"], TOTAL_S - 90 - (time.monotonic() - t_start))
    methods = sections.run_methods(args, data, methods_s)
    data.unlink()       # 5.5 MB that anyone can make again; DIR keeps the results only
    log("3. training run")
    # Whatever the compiles took, the whole check stays within TOTAL_S.
    train_s = args.train_seconds or budget["train"]
    train_s = max(60.0 if not args.tiny else 1.0, min(train_s, TOTAL_S - 30 - (time.monotonic() - t_start)))
    train = run_train(args, train_s)
    packed_rows = sections.packed_rows(res, steps, workers)
    return {"benchmark": "gpu_check", "machine": machine(), "tiny": args.tiny,
            "settings": {"model": args.model, "batch": args.batch, "K": 2, "amp": args.amp, "channels_last": True,
                         "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup, "modes": args.modes,
                         "workers_list": args.workers_list, "window_s": args.window_s, "train_s": train_s,
                         "packed_modes": args.packed_modes, "packed_list": args.packed_list,
                         "packed_steps": args.packed_steps, "packed_repeats": args.packed_repeats,
                         "method_steps": args.method_steps, "budget_s": budget,
                         "step_data": f"synthetic uint8 32x32x3, {args.n_train} train images"},
            "step": steps, "workers": workers, "train": train,
            "packed": {"rows": packed_rows, "equality": equality,
                       "decision": sections.packing_decision(packed_rows, workers, args.tiny)},
            "vat": vat, "methods": methods, "strong_augment": strong, "wall_s": time.monotonic() - t_start}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        if args.threads and args.child != "worker":       # (a worker's threads go into its config)
            import torch
            torch.set_num_threads(args.threads)
        return CHILDREN[args.child](args)
    t_start = time.monotonic()
    apply_defaults(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    result = run_all(args, t_start)
    out = Path(args.out) / "gpu_check.json"
    out.write_text(json.dumps(result, indent=1))
    print_table(result)
    sections.print_packed(result)
    sections.print_vat(result)
    sections.print_methods(result)
    sections.print_strong(result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
