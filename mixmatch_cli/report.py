"""`mixmatch report SWEEP_OR_SPEC`: one self-contained HTML page of a sweep.

Owns the command's arguments; the page is sweeps.report's.
"""

from __future__ import annotations

from sweeps.report import report_of

from .errors import ArgumentParser, user_errors
from .options import add_source_arguments


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch report", description="One self-contained HTML page of a sweep (tables, "
                       "plots, cells, configs, provenance) that opens offline, from MLflow and the sweep's storage.")
    add_source_arguments(p)
    p.add_argument("--out", metavar="DIR", default="reports", help="output directory (default reports)")
    p.add_argument("--storage", metavar="URL",
                   help="the sweep's Optuna storage, for waiting cells (default: the spec's local default)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    with user_errors(out=args.out):
        path = report_of(args.sweep, args.out, args.experiment, args.storage)
    print(path)
    return 0
