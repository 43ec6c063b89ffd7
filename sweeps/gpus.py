"""Worker slots: which GPUs this process may use, the worker processes placed on them (or on
the CPU), and the environment and process handling of each.

Owns: visible-GPU discovery (`visible_gpus`), the slot plans (`plan`: N workers per GPU for
`--workers-per-gpu`; `local_slots`: the local workers of `mixmatch sweep`, one per GPU or a
few on the CPU; both `spread` the host's CPU threads among the workers), each worker's
environment (`Slot.env`: its one GPU in CUDA_VISIBLE_DEVICES, its thread count), and
starting, waiting for and stopping the worker processes. Imports neither Optuna nor MLflow
(benchmarks/gpu_check.py uses it on machines that have neither).

Why several workers per GPU: a small model (WRN-28-2 at batch 64, let alone the CPU-scale
small CNNs) leaves most of a modern GPU idle between its kernel launches, so two to eight
cells side by side train more cells per hour than one. Without MPS their kernels are
time-sliced; with MPS (docs/scaling-out.md, "CUDA MPS") they run concurrently.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from mixmatch_core.config import ConfigError


def visible_gpus(environ: dict | None = None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices, UUIDs or MIG ids).

    When CUDA_VISIBLE_DEVICES is set (by Slurm, submitit or the user) its list is the answer:
    the scheduler's allocation is what we may use, and reading it needs no CUDA call. CUDA
    stops at the first invalid entry, so '-1' (or an empty value) means no GPU. Unset: every
    GPU torch sees (`torch.cuda.device_count()`, which does not create a CUDA context)."""
    env = os.environ if environ is None else environ
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        ids = []
        for entry in (e.strip() for e in raw.split(",")):
            if not entry or entry.startswith("-"):
                break
            ids.append(entry)
        return ids
    try:
        import torch    # lazy: importing torch takes seconds; only an unset CUDA_VISIBLE_DEVICES needs it
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no CUDA runtime at all: no GPU
        return []


def cpu_cores() -> int:
    """CPU cores this process may run on (Slurm's allocation via the affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:    # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Slot:
    """One worker process: the GPU it is pinned to (if any) and its share of the CPU."""
    gpu: str | None  # its CUDA_VISIBLE_DEVICES value: exactly one GPU, which it sees as cuda:0; None: CPU
    rank: int        # its number among the workers on that GPU (or on the CPU)
    threads: int     # torch CPU (intra-op) threads

    @property
    def name(self) -> str:
        return f"cpu-w{self.rank}" if self.gpu is None else f"gpu{self.gpu}-w{self.rank}"

    def env(self, base: dict | None = None) -> dict[str, str]:
        """The worker's environment: `base` (default: this process's) with its GPU and threads.
        OMP_NUM_THREADS sets torch's default thread count in processes that take no --threads.
        A CPU worker keeps the CUDA_VISIBLE_DEVICES it was given."""
        env = dict(os.environ if base is None else base)
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        env["OMP_NUM_THREADS"] = str(self.threads)
        return env


def spread(workers: int, gpus: list[str], cores: int | None = None) -> list[Slot]:
    """`workers` slots round-robin over `gpus` (the first len(gpus) slots use every GPU once, so
    fewer cells than slots still spread over the GPUs), or on the CPU when `gpus` is empty. Each
    slot gets cores // workers torch threads, at least 1."""
    threads = max(1, (cores or cpu_cores()) // max(workers, 1))
    if not gpus:
        return [Slot(None, i, threads) for i in range(workers)]
    return [Slot(gpus[i % len(gpus)], i // len(gpus), threads) for i in range(workers)]


def plan(gpus: list[str], workers_per_gpu: int, cores: int | None = None) -> list[Slot]:
    """`--workers-per-gpu`: `workers_per_gpu` slots on each GPU, round-robin over the GPUs."""
    if workers_per_gpu < 1:
        raise ConfigError(f"--workers-per-gpu: must be an integer >= 1, got {workers_per_gpu}")
    if not gpus:
        raise ConfigError("--workers-per-gpu: no GPU to plan workers on")
    return spread(len(gpus) * workers_per_gpu, gpus, cores)


def local_slots(device: str, workers: int | None = None) -> list[Slot]:
    """The local workers of `mixmatch sweep`: where the cells train on a GPU (device auto or
    cuda, and torch finds CUDA), `workers` (default: one per visible GPU) round-robin over the
    visible GPUs; on the CPU, `workers` (default: one per core, at most 4: small models scale
    better across processes than across threads)."""
    if device in ("auto", "cuda") and _cuda_available():
        visible = visible_gpus()
        return spread(len(visible) if workers is None else workers, visible)
    return spread(max(1, min(cpu_cores(), 4)) if workers is None else workers, [])


def _cuda_available() -> bool:
    import torch    # lazy: importing torch takes seconds; only a sweep that starts workers asks
    return torch.cuda.is_available()


def choose_gpus(count: int | None, visible: list[str], option: str = "--gpus",
                hint: str = "on CPU use --workers N instead") -> list[str]:
    """The first `count` visible GPUs (all when None); asking for more than are visible is a
    ConfigError naming `option` and the allowed range."""
    if not visible:
        raw = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = f"CUDA_VISIBLE_DEVICES='{raw}'" if raw is not None else "torch.cuda.device_count() is 0"
        raise ConfigError(f"{option}: no GPU is visible ({why}); {hint}")
    if count is None:
        return list(visible)
    if count > len(visible):
        raise ConfigError(f"{option}: {count} GPUs asked for, {len(visible)} visible "
                          f"({','.join(visible)}); allowed: 1..{len(visible)}")
    return list(visible[:count])


def pinned_slots(workers_per_gpu: int | None, n_gpus: int | None) -> list[Slot] | None:
    """The pinned worker slots asked for by --workers-per-gpu / --gpus, or None when neither was
    given. Checked against the visible GPUs before anything is started."""
    if workers_per_gpu is None and n_gpus is None:
        return None
    option = "--gpus" if n_gpus is not None else "--workers-per-gpu"
    return plan(choose_gpus(n_gpus, visible_gpus(), option), workers_per_gpu or 1)


def strip_options(argv: list[str], options: dict[str, bool]) -> list[str]:
    """`argv` without the given options; options[name] says whether it takes a value
    (`--opt VALUE` or `--opt=VALUE`). Used to re-run a command as one of its pinned workers."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in options:
            skip = options[name] and "=" not in a
            continue
        out.append(a)
    return out


# ---- the worker processes -----------------------------------------------------------------------
def tie_to_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGKILL this process when its parent dies, so a killed job or launcher never
    leaves workers training on (their cells go back to the queue instead)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: best effort
        pass


def start(slots: list[Slot], command: Callable[[Slot], list[str]], base_env: dict | None = None,
          tied: bool = False, **popen) -> list[subprocess.Popen]:
    """One process per slot, `command(slot)` in the slot's environment (never through a shell);
    `tied`: each dies with this process (`tie_to_parent`)."""
    return [start_one(s, command(s), base_env, tied, **popen) for s in slots]


def start_one(slot: Slot, argv: list[str], base_env: dict | None = None, tied: bool = False,
              **popen) -> subprocess.Popen:
    """`argv` in the slot's environment; `tied`: it dies with this process."""
    pre = tie_to_parent if tied and sys.platform.startswith("linux") else None
    return subprocess.Popen(argv, env=slot.env(base_env), preexec_fn=pre, **popen)


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGKILL the processes still running and reap them."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def wait(procs: list[subprocess.Popen], poll_seconds: float = 0.5) -> list[int]:
    """Exit codes once every process has exited (polling, so signal handlers run meanwhile)."""
    while any(p.poll() is None for p in procs):
        time.sleep(poll_seconds)
    return [p.returncode for p in procs]


def run_pinned(slots: list[Slot], command: Callable[[Slot], list[str]], log=None) -> int:
    """Start a worker per slot, wait for all of them, and return 0 if all exited with 0, else 1.
    Ctrl-C reaches the workers through the terminal's process group; anything that ends this
    process early stops them."""
    if log is not None:
        log(f"starting {len(slots)} pinned worker(s): "
            + ", ".join(f"{s.name} ({s.threads} threads)" for s in slots))
    procs = start(slots, command, tied=True)
    try:
        codes = wait(procs)
    except KeyboardInterrupt:
        deadline = time.monotonic() + 30     # let them end their MLflow runs as KILLED
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        raise
    finally:
        stop(procs)
    bad = [f"{s.name} exited {c}" for s, c in zip(slots, codes) if c != 0]
    if bad and log is not None:
        log("worker(s) failed: " + ", ".join(bad))
    return 1 if bad else 0
