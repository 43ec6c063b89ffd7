"""Sections 4-6 of benchmarks/gpu_check.py: packed models, the VAT probe, every method on the device.

Owns, for each section, its child processes (what runs on the device), the parent side that
starts them and turns their results into rows, and its table:

4. packed: the packed MixMatch step (benchmarks/packed.py) of N = 1, 2, 4, 8, 16 cells in one
   model, eager and compiled, in the check's precision (bf16 + channels_last on the GPU), timed
   alone on the device; next to it the model-compute floor of both packing forms (grouped
   convolutions; torch.func vmap, eager only). Rows: ms per step, cells-steps per second, and
   that against one cell (section 1's trainer step in the same mode) and against N trainer
   processes on the GPU (section 2). The equality check (a packed step against N separate steps,
   fp32 with TF32 off) runs in its own child while the others compile.
5. vat: r_adv of a model trained for a few VAT steps under TF32 defaults and bf16 autocast against
   strict fp32 (benchmarks/vat_probe.py).
6. methods: every registered method trains a short run through the real trainer
   (mixmatch_core.train.train, no tracker) on the check's digits-32 data; steps per second and the
   test error, or the failure. A child that crashes or hangs loses that one method: the rest
   resume in a new child.
7. strong augmentation: CTAugment (+ FixMatch's cutout) and RandAugment + Cutout of FixMatch's
   unlabeled batch (batch x 7 uint8 images) on the device, against one training step of the
   check's model on FixMatch's whole batch (batch + 2 x 7 batch images), timed alone on the
   device (benchmarks/strong_augment.py); the goal is under 10% of the step.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.gpu_protocol import REPO, env, error_text, log, read_line, serve_timings

DECISION_RATIO = 1.5     # packing is worth building if it beats processes-per-GPU by this factor
FIXMATCH_URATIO = 7      # unlabeled images per labeled one in FixMatch's batch (section 7)


def tiny_threads(args) -> list[str]:
    """--tiny children run one torch thread each: several share the CI's cores at once, and
    OpenMP threads that spin-wait on oversubscribed cores make every step many times slower."""
    return ["--threads", "1"] if args.tiny else []


def child_cmd(args, kind: str, *extra: str, model: str | None = None, batch: int | None = None) -> list[str]:
    """A gpu_check child of `kind` with the check's shared settings (`model`, `batch`: others)."""
    return [sys.executable, "-m", "benchmarks.gpu_check", "--child", kind, "--device", args.device, "--amp", args.amp,
            "--model", model or args.model, "--batch", str(batch or args.batch), "--steps", str(args.packed_steps), "--repeats",
            str(args.packed_repeats), "--warmup", str(args.warmup), "--n-train", str(args.n_train), "--n-test",
            str(args.n_test), *tiny_threads(args), *extra]


# ---- section 4: packed models ------------------------------------------------------------------
def packed_commands(args) -> dict[str, list[str]]:
    """Eager: one child times every N; a compiled mode: one child per N (they compile side by side)."""
    ns = ",".join(map(str, args.packed_list))
    cmds = {}
    for mode in args.packed_modes:
        for part in ([ns] if mode == "eager" else [str(n) for n in args.packed_list]):
            cmds[f"packed {mode} N={part}"] = child_cmd(args, "packed", "--mode", mode, "--packed-list", part)
    cmds["packed equality"] = child_cmd(args, "equal", "--packed-list", str(args.equal_n), model=args.equal_model,
                                        batch=args.equal_batch)
    return cmds


def child_packed(args) -> int:
    """Packed steps of each N in --packed-list in one compile mode, and the floors (grouped, vmap)."""
    import torch

    from benchmarks import packed as pk
    from benchmarks import step_time as st
    from mixmatch_core.train import build_models, resolve_device, seed_everything
    device, mode = resolve_device(args.device), None if args.mode == "eager" else args.mode
    ns = [int(x) for x in args.packed_list.split(",")]
    out = {"mode": args.mode, "n_models": ns}

    def build():
        seed_everything(0)
        ds = st.synthetic_dataset(args.n_train, args.n_test)
        cfg = st.make_config("cifar10", args.model, args.batch, 2, 250, args.amp, True, str(device))
        data, amp, fns = pk.PackedData(ds.x_train, ds.y_train, 250, ds.augment, device), st.amp_context(args.amp, device), {}
        for n in ns:
            pairs = [build_models(cfg, 10, 3, device) for _ in range(n)]
            models = [m for m, _ in pairs]
            step = pk.packed_step(cfg, models, [e for _, e in pairs], amp, True, mode)
            fns[f"step {n}"] = lambda step=step, n=n: step(data.draw(n, cfg.batch_size, cfg.K, cfg.alpha), cfg.lambda_u)
            fns[f"floor grouped {n}"] = pk.Floor(models, "grouped", args.batch, cfg.K, amp, True, mode)
            if mode is None:
                fns[f"floor vmap {n}"] = pk.Floor(models, "vmap", args.batch, cfg.K, amp, True)
        return fns

    def finish(o: dict) -> None:
        s = o["seconds_per_step"]
        o["rows"] = [{"n_models": n, "ms_per_step": s[f"step {n}"] * 1e3, "cells_steps_per_s": n / s[f"step {n}"],
                      "floor_grouped_ms": s[f"floor grouped {n}"] * 1e3,
                      "floor_vmap_ms": s[f"floor vmap {n}"] * 1e3 if f"floor vmap {n}" in s else None} for n in ns]
        if device.type == "cuda":
            o["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return serve_timings(out, build, args.steps, args.repeats, args.warmup, device, finish)


def child_equal(args) -> int:
    """The equality check on the device, fp32 with TF32 off: a packed step against N separate ones."""
    from benchmarks import packed as pk
    from mixmatch_core.precision import strict_fp32
    from mixmatch_core.train import resolve_device
    device = resolve_device(args.device)
    try:
        with strict_fp32():
            out = pk.equality_check(args.model, int(args.packed_list), 2, args.batch, device)
        out["device"] = device.type
    except Exception as e:  # noqa: BLE001 - reported in the JSON
        out = {"error": error_text(e)}
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def packed_rows(results: dict[str, dict], steps: list[dict], workers: list[dict]) -> list[dict]:
    """One row per (mode, N), with cells-steps per second against one cell in the same mode
    (section 1's step (a)) and against N trainer processes and the best process count (section 2)."""
    one_cell = {r["mode"]: 1.0 / r["a_s"] for r in steps if "a_s" in r}
    procs = {w["workers"]: w["total_steps_per_s"] for w in workers if "total_steps_per_s" in w}
    best_procs = max(procs.values(), default=None)
    rows = []
    for name, r in results.items():
        if name == "packed equality":
            continue
        if "rows" not in r:
            rows.append({"mode": name.split()[1], "n_models": name.split("N=")[1], "error": r.get("error", "?"),
                         "compile_and_warmup_s": r.get("compile_and_warmup_s")})
            continue
        for row in r["rows"]:
            n, rate = row["n_models"], row["cells_steps_per_s"]
            rows.append({"mode": r["mode"], **row, "compile_and_warmup_s": r["compile_and_warmup_s"],
                         "peak_memory_gib": r.get("peak_memory_gib"),
                         "vs_one_cell": rate / one_cell[r["mode"]] if r["mode"] in one_cell else None,
                         "vs_n_processes": rate / procs[n] if n in procs else None,
                         "vs_best_processes": rate / best_procs if best_procs else None})
    return rows


def packing_decision(rows: list[dict], workers: list[dict], tiny: bool = False) -> dict:
    """The fastest packing against the fastest processes-per-GPU arrangement, and whether it clears
    DECISION_RATIO (a --tiny run tests the code path only: its verdict decides nothing)."""
    timed = [r for r in rows if "cells_steps_per_s" in r]
    procs = [w for w in workers if "total_steps_per_s" in w]
    if not timed or not procs:
        return {"verdict": "not measured (no packed or no workers figure)"}
    best, best_p = max(timed, key=lambda r: r["cells_steps_per_s"]), max(procs, key=lambda w: w["total_steps_per_s"])
    ratio = best["cells_steps_per_s"] / best_p["total_steps_per_s"]
    return {"best_packed": {"mode": best["mode"], "n_models": best["n_models"],
                            "cells_steps_per_s": best["cells_steps_per_s"]},
            "best_processes": {"workers": best_p["workers"], "steps_per_s": best_p["total_steps_per_s"]},
            "packed_over_processes": ratio, "threshold": DECISION_RATIO,
            "verdict": ("packing wins" if ratio >= DECISION_RATIO else "processes per GPU suffice")
            + (" (--tiny: code path only, not a decision)" if tiny else "")}


# ---- section 5: the VAT probe --------------------------------------------------------------------
def child_vat(args) -> int:
    """Train --model for --vat-steps VAT steps (the trainer's step, the check's precision) on
    digits-32, then probe r_adv on one unlabeled batch in each precision setting."""
    from benchmarks import step_time as st
    from benchmarks import vat_probe as vp
    from benchmarks.digits32 import digits32
    from mixmatch_core.config import resolve
    from mixmatch_core.data import DeviceData
    from mixmatch_core.precision import tf32_state
    from mixmatch_core.train import resolve_device, seed_everything
    device = resolve_device(args.device)
    out = {"model": args.model, "trained_steps": args.vat_steps, "batch": args.batch, "train_amp": args.amp,
           "tf32_defaults": tf32_state()}
    try:
        seed_everything(1)
        cfg = resolve({"dataset": "cifar10", "method": "vat", "model": args.model, "batch_size": args.batch,
                       "amp": args.amp, "channels_last": True, "device": str(device), "progress": False})
        data = DeviceData.build(digits32(args.n_train), 250, 1, 0, device, True)
        step = st.ProjectStep(cfg, data)
        for _ in range(args.vat_steps):
            step()
        out.update(eps=cfg.vat_eps, xi=cfg.vat_xi)
        out["rows"], out["note"] = vp.probe_rows(step.model, data.unlabeled_batch(args.batch, 1)[0], cfg.vat_eps,
                                                 cfg.vat_xi)
        if device.type == "cpu":
            out["cpu_note"] = "no TF32 on CPU: 'TF32 defaults' is the strict fp32 computation; bf16 is the reduced case"
    except Exception as e:  # noqa: BLE001 - reported in the JSON
        out["error"] = error_text(e)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# ---- section 6: every method through the trainer -------------------------------------------------
def child_methods(args) -> int:
    """Each method of --methods in turn: mixmatch_core.train.train (no tracker) for --method-steps
    steps on the digits-32 npz; one RESULT line per method, failures included."""
    from mixmatch_core.config import resolve
    from mixmatch_core.train import train
    for name in args.methods.split(","):
        t0 = time.perf_counter()
        try:
            cfg = resolve({"dataset": f"npz:{args.data}", "model": args.model, "method": name, "n_labeled": 250,
                           "batch_size": args.batch, "steps": args.method_steps, "eval_every": args.method_steps,
                           "log_every": max(1, args.method_steps // 2), "median_of": 1, "amp": args.amp,
                           "channels_last": True, "device": args.device, "progress": False, "seed": 1,
                           "out_dir": f"{args.barrier}/{name}"})
            r = train(cfg, tracker=None)
            full = resolve({"dataset": "cifar10", "method": name}).steps   # the method's official length
            row = {"method": name, "steps": cfg.steps, "steps_per_s": r.steps_per_s,
                   "ms_per_step": 1000 / r.steps_per_s if r.steps_per_s else None,
                   "full_run_steps": full, "full_run_hours": full / r.steps_per_s / 3600 if r.steps_per_s else None,
                   "test_error_pct": r.metrics["error"], "finite": math.isfinite(r.metrics["error"])}
        except Exception as e:  # noqa: BLE001 - reported; the other methods go on
            row = {"method": name, "error": error_text(e)}
            log(f"  method {name} failed: {row['error']}")
        row["seconds"] = time.perf_counter() - t0
        print("RESULT " + json.dumps(row), flush=True)
    return 0


# ---- section 7: strong augmentation --------------------------------------------------------------
def child_strong(args) -> int:
    """Time ours (CTAugment, RandAugment) on --batch x 7 images and one step of --model on the
    FixMatch batch, alone on the device after READY/GO (benchmarks/gpu_protocol.py)."""
    import torch

    from benchmarks import strong_augment as sa
    device = torch.device(args.device)
    n = args.batch * FIXMATCH_URATIO
    out = {"model": args.model, "amp": args.amp, "images": n, "step_images": args.batch + 2 * n}

    def build():
        x8, out["data"] = sa.images(n)
        fns = sa.our_runners(torch.from_numpy(x8).to(device))
        if device.type == "cuda":    # no host sync per step: a warmed-up call under the sync detector
            for name, fn in fns.items():
                fn()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    fn()
                    out[f"{name}_host_sync"] = None
                except RuntimeError as e:
                    out[f"{name}_host_sync"] = error_text(e)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            for name in ("cta", "ra"):  # the same captured in a CUDA graph (launch overhead gone)
                try:
                    fns[f"{name}_graph"] = sa.cuda_graphed(fns[name])
                except Exception as e:  # noqa: BLE001 - reported; the eager timings go on
                    out[f"{name}_graph_error"] = error_text(e)
        fns["step"] = sa.step_runner(device, args.batch + 2 * n, args.amp, True, args.model)
        return fns

    def finish(o: dict) -> None:
        med = o["seconds_per_step"]
        o.update({f"{k}_over_step": v / med["step"] for k, v in med.items() if k != "step"}, goal_max=sa.GPU_GOAL_FRACTION)
    return serve_timings(out, build, args.steps, args.repeats, args.warmup, device, finish)


def print_strong(r: dict) -> None:
    a = r["strong_augment"]
    labels = {"cta": "CTAugment + cutout", "ra": "RandAugment + Cutout", "cta_graph": "CTAugment, CUDA graph",
              "ra_graph": "RandAugment, CUDA graph"}
    rows = None if "seconds_per_step" not in a else [(k, v) for k, v in labels.items() if k in a["seconds_per_step"]]
    med = a.get("seconds_per_step", {})
    print_block(f"\n7. strong augmentation of {a.get('images')} images on the device vs one step of "
                f"{a.get('model')} on {a.get('step_images')} images ({a.get('amp')}): {_num(med.get('step'), '.4f')} s",
                rows, a.get("error"), f"{'augmentation':<22} {'seconds':>9} {'of the step':>12}",
                lambda row: f"{row[1]:<22} {med[row[0]]:>9.4f} {a[row[0] + '_over_step']:>11.1%} "
                            f"(goal < {a['goal_max']:.0%}: {'met' if a[row[0] + '_over_step'] < a['goal_max'] else 'NOT met'})"
                            + (f"; host sync: {a[row[0] + '_host_sync']}" if a.get(row[0] + "_host_sync") else ""))
    for name in ("cta", "ra"):
        if a.get(f"{name}_graph_error"):
            print(f"   {labels[name]} in a CUDA graph: {a[name + '_graph_error']}")


def _exit_code(p: subprocess.Popen) -> int | None:
    """The exit code of a child whose output ended (it may take a moment to exit), or None if it
    still runs (it is out of time)."""
    try:
        return p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def run_methods(args, data: Path, budget_s: float) -> list[dict]:
    """Every registered method, in registry order, in as few children as failures allow."""
    from mixmatch_core.methods import METHODS
    pending, rows, deadline = list(METHODS), {}, time.monotonic() + budget_s
    with tempfile.TemporaryDirectory(dir=args.out) as d:
        while pending and time.monotonic() < deadline:
            cmd = child_cmd(args, "methods", "--methods", ",".join(pending), "--method-steps", str(args.method_steps),
                            "--data", str(data), "--barrier", d)
            p = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, text=True, bufsize=1)
            try:
                while pending:
                    line = read_line(p, deadline)
                    if line is None:       # crashed or out of time: this method fails, the rest go on
                        name, code = pending.pop(0), _exit_code(p)
                        rows[name] = {"method": name, "error": f"the process ended (exit {code}) while training it"
                                      if code is not None else f"not finished within the section's {budget_s:.0f} s"}
                        log(f"  method {name}: {rows[name]['error']}")
                        break
                    row = json.loads(line[7:])
                    rows[row["method"]] = row
                    pending.remove(row["method"])
            finally:
                if p.poll() is None:
                    p.kill()
                p.wait()
    for name in pending:
        rows[name] = {"method": name, "error": "skipped: the section's time budget is spent"}
    return [rows[name] for name in METHODS]


# ---- tables --------------------------------------------------------------------------------------
def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_block(title: str, rows: list | None, failure: str | None, header: str, line) -> None:
    """A section's title, then its header and one `line(row)` per row, or the failure instead."""
    print(title)
    if rows is None:
        print(f"   {failure or 'no result'}")
        return
    print(header)
    for row in rows:
        print(line(row))


def _packed_line(row: dict) -> str:
    if "cells_steps_per_s" not in row:
        return f"{row['mode']:<9} {row['n_models']:>3}  {row['error']}"
    return (f"{row['mode']:<9} {row['n_models']:>3} {row['ms_per_step']:>9.2f} {row['cells_steps_per_s']:>14.1f} "
            f"{_num(row['vs_one_cell'], '.2f'):>10} {_num(row['vs_n_processes'], '.2f'):>11} "
            f"{_num(row['vs_best_processes'], '.2f'):>14} {row['floor_grouped_ms']:>17.2f} "
            f"{_num(row['floor_vmap_ms'], '.2f'):>14} {row['compile_and_warmup_s']:>10.1f}")


def print_packed(r: dict) -> None:
    s, p = r["settings"], r["packed"]
    print_block(f"\n4. packed models: N cells of {s['model']} in one (grouped convolutions), the MixMatch step, "
                f"batch {s['batch']} + 2 x {s['batch']} per cell, {s['amp']} + channels_last", p["rows"], None,
                f"{'mode':<9} {'N':>3} {'step ms':>9} {'cells-steps/s':>14} {'vs 1 cell':>10} {'vs N procs':>11} "
                f"{'vs best procs':>14} {'floor grouped ms':>17} {'floor vmap ms':>14} {'compile s':>10}", _packed_line)
    e = p["equality"]
    if "steps" in e:
        worst = {k: max(step[k] for step in e["steps"]) for k in ("loss_rel", "weights", "bn_running_var",
                                                                    "bn_running_mean", "ema_weights")}
        print(f"   equality on {e['device']} (fp32, TF32 off), {e['n_models']} x {e['model']}, batch {e['batch']}, "
              f"{len(e['steps'])} steps: losses {worst['loss_rel']:.1e} rel, weights {worst['weights']:.1e}, "
              f"BN var {worst['bn_running_var']:.1e}, BN mean {worst['bn_running_mean']:.1e} std, "
              f"EMA {worst['ema_weights']:.1e} (of the change) -> within tolerance: {e['within_tolerance']}")
    else:
        print(f"   equality: {e.get('error', 'no result')}")
    d = p["decision"]
    if "packed_over_processes" in d:
        b, q = d["best_packed"], d["best_processes"]
        print(f"   decision: best packing {b['cells_steps_per_s']:.1f} cells-steps/s ({b['mode']}, N={b['n_models']}) "
              f"vs best processes {q['steps_per_s']:.1f} steps/s ({q['workers']} workers): "
              f"{d['packed_over_processes']:.2f}x -> {d['verdict']} (threshold {d['threshold']}x)")
    else:
        print(f"   decision: {d['verdict']}")


def print_vat(r: dict) -> None:
    v = r["vat"]
    print_block(f"\n5. VAT probe: r_adv of {v.get('model')} after {v.get('trained_steps')} VAT steps, batch "
                f"{v.get('batch')}, eps {v.get('eps')}, xi {v.get('xi')}; against the raw power iteration in strict fp32",
                v.get("rows"), v.get("error"),
                f"{'function':<9} {'setting':<31} {'cos mean':>9} {'cos min':>8} {'|r|/|ref| mean':>15} {'min':>6} {'max':>6}",
                lambda row: f"{row['function']:<9} {row['setting']:<31} {row['cos_mean']:>9.4f} {row['cos_min']:>8.4f} "
                            f"{row['norm_ratio_mean']:>15.4f} {row['norm_ratio_min']:>6.3f} {row['norm_ratio_max']:>6.3f}")
    for key in ("note", "cpu_note"):
        if v.get(key):
            print(f"   note: {v[key]}")


def print_methods(r: dict) -> None:
    s = r["settings"]
    print(f"\n6. every method on {r['machine'].get('gpu', 'CPU')}: the trainer on digits-32, {s['model']}, "
          f"{s['method_steps']} steps each, {s['amp']}")
    print("(ms/step and the hours of a full run of the method's official length, 2^20 steps, at this speed; "
          "FixMatch's goal: under one H100-hour)")
    print(f"{'method':<14} {'steps/s':>8} {'ms/step':>8} {'full run h':>10} {'test error %':>13} {'seconds':>8}  failure")
    for row in r["methods"]:
        print(f"{row['method']:<14} {_num(row.get('steps_per_s'), '.1f'):>8} {_num(row.get('ms_per_step'), '.1f'):>8} "
              f"{_num(row.get('full_run_hours'), '.2f'):>10} {_num(row.get('test_error_pct'), '.2f'):>13} "
              f"{_num(row.get('seconds'), '.1f'):>8}  {row.get('error', '')}")
