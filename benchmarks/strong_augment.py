"""Benchmark: seconds to draw FixMatch's strong views of one step's unlabeled batch on the device,
against the official PIL pipeline and against one WRN-28-2 training step.

Owns: five timed functions in ONE process, timed round-robin (repeat 1 of all, repeat 2 of
all, ...) so that a change of machine load hits them alike; each value is the median over
repeats of the seconds for one batch of `--batch` x `--uratio` images (FixMatch: 64 x 7 = 448).

cta        ours: CTAugment.policy(448, probe=False) + apply(..., cutout=True), uint8 NHWC on
           the device (mixmatch_core/ctaugment.py), rates at their start (all bins drawable).
ra         ours: randaugment() = RandAugment(2 ops, magnitude 1..9, p 1/2) + Cutout 16
           (mixmatch_core/randaugment.py).
pil_cta    the naive anchor: libml's per-image pipeline (benchmarks/pil_augment.py): the
           float image -> PIL, CTAugment.policy(probe=False) + OP('cutout', (1,)), the PIL ops,
           back to float; with --threads N > 1 over a multiprocessing.Pool(N) with imap, as
           libml's AugmentPool does, else in this process. Same images, same cores.
pil_ra     the same for AugmentPoolRAMC (apply_policy + cutout_numpy).
step       one WRN-28-2 (mixmatch_core.models.build_model) training step of FixMatch's batch:
           forward of 64 labeled + 448 weak + 448 strong images in one pass, cross-entropy,
           backward, SGD step. `--amp bf16` / `--channels-last` as the trainer would run it.

    python -m benchmarks.strong_augment [--device cpu|cuda|auto] [--threads N] [--repeats 5]
        [--batch 64] [--uratio 7] [--amp none|bf16] [--channels-last] [--no-step] [--no-pil]
        [--out results/benchmarks/FILE.json]

Goals (issue #31): on a CPU, cta and ra not slower than pil_cta and pil_ra on the same cores;
on a GPU, cta and ra under 10% of the step. Data: CIFAR-10's first training images from
../shared/datasets/cifar10.npz when present, else random uint8 images (the output says which).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import pil_augment as official
from mixmatch_core.ctaugment import CTAugment
from mixmatch_core.models import build_model
from mixmatch_core.randaugment import randaugment

REPO = Path(__file__).resolve().parents[1]
CIFAR_NPZ = REPO / ".." / "shared" / "datasets" / "cifar10.npz"
GPU_GOAL_FRACTION = 0.10   # ours / step on a GPU
CPU_GOAL_RATIO = 1.0       # ours / PIL on a CPU


def images(n: int) -> tuple[np.ndarray, str]:
    """uint8 [n, 32, 32, 3] and what they are."""
    if CIFAR_NPZ.exists():
        with np.load(CIFAR_NPZ, allow_pickle=False) as d:
            return np.ascontiguousarray(d["x_train"][:n]), f"CIFAR-10 train[:{n}] ({CIFAR_NPZ.resolve()})"
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "random uint8 (no CIFAR-10 npz)"


def cpu_model() -> dict:
    """lscpu's model name and the vector flags that matter for torch's CPU kernels."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"model": platform.processor() or platform.machine()}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"model": fields.get("Model name", "?").strip(), "family": fields.get("CPU family", "?").strip(),
            "model_number": fields.get("Model", "?").strip(), "cores": os.cpu_count(),
            "vector_flags": [f for f in flags if f.startswith(("avx", "amx", "fma"))]}


# ---- the official pipelines (worker-side functions must be top level for the Pool) ----------
_RATES = {k: [np.ones(b, "f") for b in bins] for k, (bins, _) in official.CTA_OPS.items()}


def _pil_cta_one(x: np.ndarray) -> np.ndarray:
    policy = official.cta_policy(_RATES, 2, 0.80, 0.99, probe=False) + [("cutout", (1,))]
    return official.cta_apply(x, policy)


def _pil_ra_one(x: np.ndarray) -> np.ndarray:
    draws, centre = official.ra_draws()
    return official.ra_apply(x, draws, centre).astype("f")


def pil_runner(fn, floats: np.ndarray, pool):
    if pool is None:
        return lambda: np.stack([fn(x) for x in floats])
    return lambda: np.stack(list(pool.imap(fn, floats)))


def our_runners(x: torch.Tensor) -> dict:
    """Ours on uint8 NHWC images on their device: CTAugment (+ FixMatch's cutout), RandAugment."""
    aug = CTAugment(device=x.device)
    return {"cta": lambda: aug.apply(x, aug.policy(x.shape[0], probe=False), cutout=True),
            "ra": lambda: randaugment(x)}


def cuda_graphed(fn):
    """`fn` captured once in a CUDA graph and replayed (same input tensors; the RNG draws
    advance on each replay): what capturing ours would save in kernel launches."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):          # warm-up off the default stream, as torch.cuda.graph asks
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


# ---- the training step ----------------------------------------------------------------------
def step_runner(device: torch.device, n_images: int, amp: str, channels_last: bool, model: str = "wrn28_2"):
    """One training step (forward, cross-entropy, backward, SGD) of `model` on n_images."""
    model = build_model(model, 10, 3).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    x = torch.randn(n_images, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (n_images,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def run(args) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    n = args.batch * args.uratio
    x8, data_desc = images(n)
    x = torch.from_numpy(x8).to(device)
    floats = x8.astype(np.float32) * np.float32(2.0 / 255) - np.float32(1.0)   # libml/data.py
    fns = our_runners(x)
    pool = multiprocessing.get_context("fork").Pool(threads) if threads > 1 and not args.no_pil else None
    if not args.no_pil:
        fns["pil_cta"] = pil_runner(_pil_cta_one, floats, pool)
        fns["pil_ra"] = pil_runner(_pil_ra_one, floats, pool)
    if not args.no_step:
        fns["step"] = step_runner(device, args.batch + 2 * n, args.amp, args.channels_last)
    load0 = os.getloadavg()
    for name, fn in fns.items():                     # warm-up: tables, caches, allocator, pool
        for _ in range(args.warmup):
            timed(fn, device)
    per_rep = {k: [] for k in fns}
    for rep in range(args.repeats):
        for name, fn in fns.items():
            per_rep[name].append(timed(fn, device))
        if not args.quiet:
            print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.4f}s" for k, v in per_rep.items()),
                  file=sys.stderr)
    if pool is not None:
        pool.close()
    med = {k: statistics.median(v) for k, v in per_rep.items()}
    ratios = {}
    for ours in ("cta", "ra"):
        if f"pil_{ours}" in med:
            ratios[f"{ours}_over_pil"] = med[ours] / med[f"pil_{ours}"]
        if "step" in med:
            ratios[f"{ours}_over_step"] = med[ours] / med["step"]
    return {
        "benchmark": "strong_augment",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_model(), "torch": torch.__version__, "threads": threads,
        "pil_processes": threads if pool is not None else 1, "pillow": official.Image.__version__,
        "images": n, "batch": args.batch, "uratio": args.uratio, "data": data_desc,
        "step_definition": f"WRN-28-2 forward of {args.batch} + 2 x {n} images in one pass, cross-entropy, "
                           f"backward, SGD step; amp {args.amp}, channels_last {args.channels_last}",
        "warmup": args.warmup, "repeats": args.repeats, "load_avg_before": load0, "load_avg_after": os.getloadavg(),
        "seconds_per_repeat": per_rep, "median_seconds": med, "ratios": ratios,
        "goals": {"cpu_ours_over_pil_max": CPU_GOAL_RATIO, "gpu_ours_over_step_max": GPU_GOAL_FRACTION},
        "out": args.out,
    }


def print_table(r: dict) -> None:
    where = r["gpu"] or f"{r['cpu']['model']}, {r['threads']} thread(s)"
    print(f"strong_augment: {r['images']} images ({r['data']}) on {r['device']} ({where}); torch {r['torch']}, "
          f"Pillow {r['pillow']}; median of {r['repeats']}; load avg {r['load_avg_before'][0]:.1f} -> "
          f"{r['load_avg_after'][0]:.1f}")
    for k, v in r["median_seconds"].items():
        print(f"  {k:<8} {v * 1000:9.1f} ms")
    for k, v in r["ratios"].items():
        goal = GPU_GOAL_FRACTION if k.endswith("step") else CPU_GOAL_RATIO
        applies = (r["device"] == "cpu") != k.endswith("step")
        verdict = ("met" if v <= goal else "NOT met") if applies else "-"
        print(f"  {k:<14} {v:7.3f}   goal <= {goal}: {verdict}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.strong_augment", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads and PIL processes (0 = torch's default)")
    p.add_argument("--batch", type=positive, default=64, help="labeled batch (FixMatch: 64)")
    p.add_argument("--uratio", type=positive, default=7, help="unlabeled images per labeled one (FixMatch: 7)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=positive, default=5)
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast of the step")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and input in the step")
    p.add_argument("--no-step", action="store_true", help="skip the training step")
    p.add_argument("--no-pil", action="store_true", help="skip the PIL pipelines")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true")
    r = run(p.parse_args(argv))
    print_table(r)
    if r["out"]:
        out = Path(r["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(r, indent=1))
        print(f"wrote {out}")
    return 0


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
