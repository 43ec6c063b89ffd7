"""`mixmatch plot SWEEP_OR_SPEC`: a sweep's error-vs-labels, ablation and learning-curve plots.

Owns the command's arguments and what it prints (the files written); the figures are
sweeps.plot's.
"""

from __future__ import annotations

import sys

from sweeps.plot import plot_all

from .errors import ArgumentParser, user_errors
from .options import add_source_arguments


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch plot", description="Error-vs-labels, ablation and learning-curve plots of a "
                "sweep (PNG and SVG), from MLflow.")
    add_source_arguments(p)
    p.add_argument("--out", metavar="DIR", default="plots", help="output directory (default plots)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    with user_errors(out=args.out):
        paths = plot_all(args.sweep, args.out, experiment=args.experiment)
    if not paths:
        print("mixmatch plot: no finished cell yet; nothing to plot", file=sys.stderr)
    for path in paths:
        print(path)
    return 0
