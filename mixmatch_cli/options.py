"""Options and argument types that several `mixmatch` commands share.

Owns: the sweep a reading command takes (SWEEP_OR_SPEC and --experiment: table, plot,
report), the pinned-worker options (--workers-per-gpu, --gpus: sweep, worker, search) and the
argument types of positive numbers. Their errors are argparse's, so each is one line.
"""

from __future__ import annotations

import argparse


def add_source_arguments(p: argparse.ArgumentParser, several: bool = False) -> None:
    """SWEEP_OR_SPEC and --experiment, as every command reading a sweep from MLflow takes them;
    `several`: one or more sweeps, read as one (table, report)."""
    if several:
        p.add_argument("sweep", metavar="SWEEP_OR_SPEC", nargs="+",
                       help="sweep spec YAML, or a sweep name; several: their cells in one table, paired across "
                            "the sweeps where they share (dataset, n_labeled, seed)")
    else:
        p.add_argument("sweep", metavar="SWEEP_OR_SPEC", help="sweep spec YAML, or a sweep name")
    p.add_argument("--experiment", metavar="NAME",
                   help="MLflow experiment (default: the spec's; for a sweep name, all experiments)")


def add_gpu_arguments(p: argparse.ArgumentParser) -> None:
    """--workers-per-gpu and --gpus (sweeps.gpus.pinned_slots turns them into worker slots)."""
    p.add_argument("--workers-per-gpu", type=positive_int, metavar="N",
                   help="N worker processes per visible GPU, each pinned to its GPU (CUDA_VISIBLE_DEVICES) "
                        "with cores // workers torch threads; see docs/scaling-out.md for CUDA MPS")
    p.add_argument("--gpus", type=positive_int, metavar="N",
                   help="use the first N visible GPUs (default: all); without --workers-per-gpu, one worker each")


def positive_int(s: str) -> int:
    """argparse type: an integer >= 1 (the error names the option through argparse)."""
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got '{s}'")
    return v


def positive(kind):
    """argparse type: a number of `kind` (int, float) > 0."""
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {s!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {s!r}")
        return v
    return parse
