"""`mixmatch status`: the cells of a sweep, waiting, running (on which host), done or failed.

Owns the command's arguments and the listing; the states are the sweep's queue's
(sweeps.store.cell_states), read without writing anything.
"""

from __future__ import annotations

import re

from sweeps import store
from sweeps.spec import load_spec

from .errors import ArgumentParser, die, user_errors

ORDER = {"running": 0, "waiting": 1, "failed": 2, "done": 3}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch status", description="Cells of a sweep: waiting, running (on which host), "
                       "done, failed. Give the spec (local sweep, default storage) or --storage and --sweep.")
    p.add_argument("spec", nargs="?", help="sweep spec YAML: its name and default storage (sqlite:///optuna/...)")
    p.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://user@host:5432/db "
                   "(default: the spec's local default)")
    p.add_argument("--sweep", help="sweep name (default: the spec's `name`)")
    return p


def natural(name: str) -> list:
    """Sort key: numbers as numbers (digits-30-... before digits-100-...)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    name, url = args.sweep, args.storage
    with user_errors(store.StorageError):
        if args.spec:
            name = name or load_spec(args.spec).name
            url = url or store.default_sweep_storage(name)
        if not (name and url):
            die("mixmatch status: give a sweep spec, or both --storage and --sweep")
        study = store.load_sweep_study(store.open_storage(url, must_exist=True, read_only=True), name)
    states = store.cell_states(study)
    print(f"{'cell':<36} {'cell_key':<13} {'state':<8} {'failed':>6}  detail")
    for s in sorted(states.values(), key=lambda s: (ORDER[s.state], natural(s.run_name))):
        detail = (f"on {s.host}" if s.state == "running" else f"error {s.error:.2f}%" if s.state == "done"
                  else s.reason if s.state == "failed" else "")
        print(f"{s.run_name:<36} {s.cell_key:<13} {s.state:<8} {s.attempts:>6}  {detail}")
    n = store.counts(study)
    print(f"\n{len(states)} cells: {n['waiting']} waiting, {n['running']} running, {n['done']} done, "
          f"{n['failed']} failed")
    return 0
