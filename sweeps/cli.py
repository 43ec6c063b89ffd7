"""The `mixmatch` console command: dispatches each subcommand to the module that owns it.

train, ui -> mixmatch_core.cli (the trainer's own commands)
sweep, worker, status -> sweeps.runner / sweeps.distributed
slurm -> sweeps.slurm
table, plot, report -> sweeps.table / sweeps.plot / sweeps.report
search -> sweeps.search
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("mixmatch_core.cli", "train_main", "train one run (resumable)"),
    "sweep": ("sweeps.runner", "sweep_main", "run every cell of a sweep spec"),
    "table": ("sweeps.table", "table_main", "paper-style error tables from MLflow"),
    "plot": ("sweeps.plot", "plot_main", "error-vs-labels, ablation and learning-curve plots"),
    "report": ("sweeps.report", "report_main", "one self-contained HTML report of a sweep"),
    "search": ("sweeps.search", "search_main", "Optuna hyperparameter search"),
    "worker": ("sweeps.distributed", "worker_main", "claim and train cells of a shared sweep"),
    "status": ("sweeps.distributed", "status_main", "cells waiting / running / done / failed"),
    "slurm": ("sweeps.slurm", "slurm_main", "submit a sweep's workers as one Slurm job array (submitit)"),
    "ui": ("mixmatch_core.cli", "ui_main", "start the MLflow UI (127.0.0.1)"),
}


def usage() -> str:
    lines = ["usage: mixmatch COMMAND [args]  (mixmatch COMMAND --help for details)", "", "commands:"]
    lines += [f"  {name:<8} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"mixmatch: error: unknown command '{argv[0]}'; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[argv[0]]
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
