"""The `mixmatch` console command: one table of subcommands, each owned by one module.

Owns: the dispatch from `mixmatch COMMAND ...` to the module that runs the command, the
top-level usage text, and `parsers()`, every command's argparse parser (the docs' CLI
reference is generated from it, so it cannot drift from `--help`). Commands import their
module lazily: a relaunch of a finished sweep must not pay for importing torch or MLflow.
`run` is the process's entry point (the `mixmatch` script, `python -m mixmatch_cli`): `main`,
then a fast exit.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import select
import sys

# name -> (module, main function, parser function, one-line summary)
COMMANDS = {
    "train": ("mixmatch_cli.train", "main", "build_parser", "train one run (resumable)"),
    "sweep": ("mixmatch_cli.sweep", "main", "build_parser", "run every cell of a sweep spec"),
    "table": ("mixmatch_cli.table", "main", "build_parser", "paper-style error tables from MLflow"),
    "plot": ("mixmatch_cli.plot", "main", "build_parser", "error-vs-labels, ablation and learning-curve plots"),
    "report": ("mixmatch_cli.report", "main", "build_parser", "one self-contained HTML report of a sweep"),
    "search": ("mixmatch_cli.search", "main", "build_parser", "Optuna hyperparameter search"),
    "worker": ("mixmatch_cli.worker", "main", "build_parser", "claim and train cells of a shared sweep"),
    "status": ("mixmatch_cli.status", "main", "build_parser", "cells waiting / running / done / failed"),
    "slurm": ("mixmatch_cli.slurm", "main", "build_parser",
              "submit a sweep's workers as one Slurm job array (submitit)"),
    "ui": ("mixmatch_cli.ui", "main", "build_parser", "start the MLflow UI (127.0.0.1)"),
    "data": ("mixmatch_cli.data", "main", "build_parser", "make data files (CIFAR-10 as npz)"),
}


def usage() -> str:
    lines = ["usage: mixmatch COMMAND [args]  (mixmatch COMMAND --help for details)", "", "commands:"]
    lines += [f"  {name:<8} {doc}" for name, (_, _, _, doc) in COMMANDS.items()]
    return "\n".join(lines)


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, in the order of `mixmatch --help` (imports every command module)."""
    return {name: getattr(importlib.import_module(module), parser)()
            for name, (module, _, parser, _) in COMMANDS.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"mixmatch: error: unknown command '{argv[0]}'; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func, _, _ = COMMANDS[argv[0]]
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def run() -> None:
    """`main` as a whole process: its exit code, then an exit without the interpreter's final
    garbage collections over every object torch, dynamo and MLflow made (1.6 s of a worker's
    exit on 2 cores, 0.2 s without: frozen objects are skipped). atexit handlers, the joins of
    threads and the flush of stdout/stderr still run; files are closed by the code that opened
    them (with-blocks), not left to the exit. Not in `main`: tests call it in their own process.

    The youngest generation is collected every 10,000 allocations instead of CPython's 700:
    importing torch, dynamo, MLflow and Optuna allocates millions of long-lived objects, and the
    default threshold ran repeated collections over them (about 0.5 s of CPU of a worker's
    start-up). Training allocates few Python objects; cycles are still collected, later.

    A reader of stdout that goes away (`mixmatch status SPEC | head`) ends the command quietly
    with status 1, as Python's documentation recommends, instead of a BrokenPipeError traceback;
    a broken pipe elsewhere (a socket, a child) stays an error."""
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
    try:
        code = main()
        sys.stdout.flush()            # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit
        code = 1
    finally:
        gc.freeze()
    raise SystemExit(code)
