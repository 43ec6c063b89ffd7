"""`mixmatch report SWEEP_OR_SPEC...`: one self-contained HTML page of one or more sweeps.

Owns the command's arguments; the page is sweeps.report's.
"""

from __future__ import annotations

from sweeps import mlflow_view
from sweeps.report import report_of

from .errors import ArgumentParser, user_errors
from .options import add_source_arguments, positive_int


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch report", description="One self-contained HTML page of a sweep (tables, "
                       "plots, cells, configs, provenance) that opens offline, from MLflow and the sweep's storage.")
    add_source_arguments(p, several=True)
    p.add_argument("--out", metavar="DIR", default="reports", help="output directory (default reports)")
    p.add_argument("--storage", metavar="URL",
                   help="the sweep's Optuna storage, for waiting cells (default: the spec's local default)")
    p.add_argument("--ui-port", type=positive_int, default=mlflow_view.UI_PORT, metavar="P",
                   help="the port `mixmatch ui --port P` serves a local store on: the page's MLflow links "
                        f"(default {mlflow_view.UI_PORT})")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    with user_errors(out=args.out):
        path = report_of(args.sweep, args.out, args.experiment, args.storage, args.ui_port)
    print(path)
    return 0
