"""A sweep's closing summary, and what lets a relaunch of a finished sweep skip everything.

Owns: the done / failed / not run summary (`summarize`), the outcome digest that closing a
sweep records in its study (`record_close`), and the fast relaunch: when every cell is done
and nothing changed since the last close (same outcomes; its tables still on disk unless
--no-table), `replay` prints what that close printed, from the storage and the files it wrote.

Imports neither MLflow nor torch: their imports and the MLflow store's start-up were 8 of the
13 s a relaunch of a finished sweep took on a busy 2-core VM.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from mixmatch_core.config import Config

from .spec import Spec, file_stem
from .store import CellState, cell_states


# What the tables say, as a version: bump it when a release changes what a table holds for the
# same runs (2: paired comparisons, the error at the last evaluation, the interquartile mean;
# issue #33). A finished sweep relaunched after such an upgrade trains nothing (its cells keep
# their keys) but rebuilds its tables instead of replaying the old ones as current.
TABLE_RULES = 2


def tables_dir(spec: Spec) -> Path:
    return Path("runs") / "_tables" / spec.name


def table_md_path(spec: Spec) -> Path:
    return tables_dir(spec) / f"{file_stem(spec.name)}_table.md"


def summarize(spec: Spec, study, cells: list[Config]) -> dict[str, CellState | None]:
    """Print done / failed / not run (failed cells with their reason); cell_key -> CellState."""
    st = cell_states(study)
    by = {x.cell_key: st.get(x.cell_key) for x in cells}
    done = [k for k, s in by.items() if s and s.state == "done"]
    failed = [k for k, s in by.items() if s and s.state == "failed"]
    print(f"\nsweep '{spec.name}': {len(done)} done, {len(failed)} failed, {len(by) - len(done) - len(failed)} not run")
    names = {x.cell_key: x.run_name for x in cells}
    for k in failed:
        print(f"  FAILED {names[k]} [{k}] after {by[k].attempts} attempt(s): {by[k].reason}")
    return by


def outcome_digest(states: dict[str, CellState | None]) -> str:
    """A fingerprint of every cell's outcome (state, error, attempts)."""
    items = sorted((k, s.state, s.error, s.attempts) if s else (k,) for k, s in states.items())
    return hashlib.sha1(json.dumps(items).encode()).hexdigest()[:16]


def record_close(study, states: dict[str, CellState | None], tables: bool) -> None:
    """What the next launch may skip: these outcomes, and whether their tables were written."""
    study.set_user_attr("last_report", {"digest": outcome_digest(states), "tables": tables, "rules": TABLE_RULES})


def unchanged_since_last_report(spec: Spec, study, cells: list[Config], no_table: bool) -> bool:
    """True when every cell is done and nothing changed since the last launch closed the sweep
    (same outcomes; its tables and report still on disk, made by this release's TABLE_RULES,
    unless --no-table): a relaunch then has nothing to train, log or rebuild, and needs neither
    MLflow nor torch."""
    last = study.user_attrs.get("last_report")
    st = cell_states(study)
    states = {x.cell_key: st.get(x.cell_key) for x in cells}
    if not last or any(s is None or s.state != "done" for s in states.values()):
        return False
    current = last["tables"] and last.get("rules", 1) == TABLE_RULES and table_md_path(spec).exists()
    return last["digest"] == outcome_digest(states) and (no_table or current)


def replay(spec: Spec, study, cells: list[Config], url: str, no_table: bool) -> int:
    """What closing the sweep printed last time, from the storage and the files it wrote."""
    print(f"sweep '{spec.name}': {len(cells)} cells ({len(cells)} already done, 0 queued, 0 failed beyond "
          f"retries); storage {url}; MLflow parent run {study.user_attrs.get('parent_run_id')}", file=sys.stderr)
    summarize(spec, study, cells)
    if not no_table:
        print()
        print(table_md_path(spec).read_text().rstrip())
        print(f"\nnothing changed since the last launch: tables, plots and report in {tables_dir(spec)}/ are current")
    return 0
