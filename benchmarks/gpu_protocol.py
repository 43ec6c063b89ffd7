"""How benchmarks/gpu_check.py runs a measurement in a child process, with a deadline.

Owns: the line protocol between the check and its children (a child builds and warms up what it
times, prints READY, waits for GO on stdin, times, prints `RESULT {json}`; a child that only
computes prints its RESULT at once), the parent side that starts many children together so
that they compile side by side (compiling is CPU work) and then lets each time alone on the GPU,
and the child side of a timing. A hung compile or a crashed child costs its own budget only.
"""

from __future__ import annotations

import json
import os
import selectors
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def env() -> dict[str, str]:
    """The children's environment: this repository first on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(":")}


def error_text(e: BaseException) -> str:
    """`Type: first line of the message` (300 characters at most), for the JSON."""
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}"


def read_line(proc: subprocess.Popen, deadline: float) -> str | None:
    """The next READY or RESULT line of `proc`'s stdout (other output is skipped), or None at
    EOF or past `deadline` (monotonic)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while True:          # at least one look, so a line already written is read even past the deadline
            left = deadline - time.monotonic()
            if sel.select(timeout=max(0.0, min(1.0, left))):
                line = proc.stdout.readline()
                if not line:
                    return None
                if line.startswith(("READY", "RESULT ")):
                    return line
            elif left <= 0:
                return None
    finally:
        sel.close()


def _wait_ready(procs: dict[str, subprocess.Popen], ready_s: float) -> tuple[list[str], dict[str, dict]]:
    """Children that said READY within `ready_s` (in start order), and the results of the others
    (a child that computed its result at once, or an error)."""
    deadline, ready, results = time.monotonic() + ready_s, [], {}
    for name, p in procs.items():
        line = read_line(p, deadline)
        if line and line.startswith("READY"):
            ready.append(name)
        elif line and line.startswith("RESULT "):
            results[name] = json.loads(line[7:])
        else:
            results[name] = {"error": f"not compiled and warmed up within {ready_s:.0f} s"
                             if line is None and p.poll() is None else "the process ended without a result"}
        log(f"  [{name}]: " + ("ready" if name in ready else results[name].get("error") or "done"))
    return ready, results


def run_side_by_side(commands: dict[str, list[str]], ready_s: float, time_s: dict[str, float],
                     time_until: float | None = None) -> dict[str, dict]:
    """Start every command at once (they compile side by side), then send GO to the ready ones one
    at a time, each alone on the GPU, within its `time_s` seconds (and before `time_until`,
    monotonic, when given). Returns each command's RESULT (or an `error`)."""
    procs = {name: subprocess.Popen(cmd, cwd=REPO, env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, bufsize=1) for name, cmd in commands.items()}
    try:
        ready, results = _wait_ready(procs, ready_s)
        for name, p in procs.items():           # the others must not share the GPU with the timings
            if name not in ready and p.poll() is None:
                p.kill()
        for name in ready:
            left = time_s[name] if time_until is None else min(time_s[name], time_until - time.monotonic())
            if left <= 0:
                results[name] = {"error": "skipped: the check's time budget is spent"}
                continue
            procs[name].stdin.write("GO\n")
            procs[name].stdin.flush()
            line = read_line(procs[name], time.monotonic() + left)
            results[name] = json.loads(line[7:]) if line and line.startswith("RESULT ") else \
                {"error": f"not timed within {left:.0f} s"}
            log(f"  [{name}]: timed" if "error" not in results[name] else f"  [{name}]: {results[name]['error']}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
    return results


def serve_timings(out: dict, build, steps: int, repeats: int, warmup: int, device, finish=None) -> int:
    """The child side: `build()` returns {name: callable step}; warm each up `warmup` times (this
    compiles), READY, wait for GO, time them round-robin (benchmarks/step_time.time_round_robin),
    add seconds per step (median over repeats) and the repeats to `out`, call `finish(out)` (more
    figures), print RESULT."""
    from benchmarks import step_time as st
    try:
        t0 = time.perf_counter()
        fns = build()
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        st.sync(device)
        out["compile_and_warmup_s"] = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - reported; the other children go on
        out["error"] = error_text(e)
        print("RESULT " + json.dumps(out), flush=True)
        return 1
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    try:
        per = st.time_round_robin(fns, steps, 0, repeats, device, log=lambda m: None)
        out.update(seconds_per_step={k: statistics.median(v) for k, v in per.items()}, per_repeat_s=per)
        if finish is not None:
            finish(out)
    except Exception as e:  # noqa: BLE001
        out["error"] = error_text(e)
    print("RESULT " + json.dumps(out), flush=True)
    return 0
