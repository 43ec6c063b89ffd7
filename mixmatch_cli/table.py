"""`mixmatch table SWEEP_OR_SPEC...`: the paper-style error tables of one or more sweeps, from MLflow.

Owns the command's arguments and where the tables go (stdout, or files in --out); the table is
sweeps.table's, its formats sweeps.render's.
"""

from __future__ import annotations

import sys

from sweeps.render import FORMATS, PRINTED, write_table
from sweeps.runs import load_sources, storage_states
from sweeps.spec import LAYOUTS
from sweeps.table import REFERENCES, table_of

from .errors import ArgumentParser, die, user_errors
from .options import add_source_arguments


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch table", description="Paper-style error tables of a sweep, from MLflow. "
                "Give the spec file (planned cells are known: missing ones are marked) or the sweep's name; "
                "several sweeps make one table.")
    add_source_arguments(p, several=True)
    p.add_argument("--format", default="markdown", choices=FORMATS + ("all",),
                   help="output format (default markdown); csv = per-run and aggregated CSV; all needs --out")
    p.add_argument("--out", metavar="DIR", help="write files into DIR (default: print to stdout)")
    p.add_argument("--reference", default="paper", choices=REFERENCES,
                   help="show the paper's numbers beside ours (default paper)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS,
                   help="labels = Table 5, ablation = Table 4; auto = the spec's layout, else labels for "
                        ">= 3 label counts and <= 4 rows (default auto)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.format == "all" and not args.out:
        die("--format all writes several files; give --out DIR")
    with user_errors(out=args.out):
        src = load_sources(args.sweep, args.experiment)
        table = table_of(src, args.layout, args.reference, storage_states(src, None))
        if args.out:
            for path in write_table(table, args.out, FORMATS if args.format == "all" else (args.format,)):
                print(path)
        else:
            sys.stdout.write(PRINTED[args.format](table))
    return 0
