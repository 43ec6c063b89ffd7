"""Sweep specs: a base config plus axes whose cartesian product gives the cells.

Owns: the spec format, its validation (one line naming the key, before anything runs), the
expansion into resolved Configs (cells), and cell selection (`--only`). A spec looks like:

    name: quickstart                 # sweep name (default: the file's stem)
    experiment: mixmatch-quickstart  # MLflow experiment (default: the base config's)
    base: {dataset: digits, steps: 1500}
    variants: {t025: {T: 0.25}}      # optional, the spec's own named diffs
    grid:                            # one grid, or `grids:` a list of them (cells = union)
      n_labeled: [50, 100, 200]
      variant: [mixmatch, supervised]
      seed: [1, 2]
    retries: 2                       # failed cells re-run on relaunch up to this many times
    layout: labels                   # table layout: labels (Table 5) | ablation (Table 4)
    notes: [...]                     # optional lines printed under the spec's tables and report

Any config field can be an axis. Identical cells (same cell_key) are kept once.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixmatch_core.config import FIELDS, Config, ConfigError, did_you_mean, load_yaml, name_unknown, resolve

SPEC_KEYS = {"name", "experiment", "base", "variants", "grid", "grids", "retries", "layout", "description", "notes"}
LAYOUTS = ("auto", "labels", "ablation")


@dataclass
class Spec:
    name: str
    path: str
    base: dict[str, Any]
    grids: list[dict[str, list]]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    experiment: str = "mixmatch"
    retries: int = 2
    layout: str = "auto"
    description: str = ""
    notes: list[str] = field(default_factory=list)
    # The resolved cells, computed once: a launch resolves the grid once however many parts
    # (selection, parent run, tables, report) ask for it.
    _cells: list[Config] | None = field(default=None, init=False, repr=False, compare=False)

    def cells(self) -> list[Config]:
        """Every cell's resolved Config, in spec order, duplicates (same cell_key) removed."""
        if self._cells is None:
            self._cells = self._resolve()
        return list(self._cells)

    def _resolve(self) -> list[Config]:
        seen, out = set(), []
        for grid in self.grids:
            keys = list(grid)
            for combo in itertools.product(*(grid[k] for k in keys)):
                user = {**dict(zip(keys, combo)), "experiment": self.experiment}
                try:
                    # The base is shared by every cell: a method hyperparameter in it applies
                    # only to the cells whose method owns it (e.g. lambda_u to MixMatch's).
                    cfg = resolve(user, self.variants, base=self.base)
                except ConfigError as e:
                    raise ConfigError(f"spec '{self.path}', cell {dict(zip(keys, combo))}: {e}") from None
                if cfg.cell_key not in seen:
                    seen.add(cfg.cell_key)
                    out.append(cfg)
        return out


def load_spec(path: str) -> Spec:
    """Read and validate a spec file; every problem is one ConfigError line naming the key."""
    raw = load_yaml(path, "spec")
    unknown = set(raw) - SPEC_KEYS
    if "space" in unknown and not {"grid", "grids"} & set(raw):
        raise ConfigError(f"'{path}' is a search spec (it has space:), not a sweep spec: run it with "
                          f"`mixmatch search {path}`")
    if unknown:
        raise ConfigError(f"spec '{path}': unknown key(s) {name_unknown(unknown, SPEC_KEYS)}; "
                          f"allowed: {', '.join(sorted(SPEC_KEYS))}")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"spec '{path}': base must be a mapping of config fields")
    variants = raw.get("variants") or {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ConfigError(f"spec '{path}': variants must map a name to a mapping of config fields")
    for vname, diff in variants.items():
        bad = set(diff) - set(FIELDS)
        if bad:
            raise ConfigError(f"spec '{path}': variant '{vname}' has unknown config key(s) {name_unknown(bad, FIELDS)}")
    if "grid" in raw and "grids" in raw:
        raise ConfigError(f"spec '{path}': give either grid or grids, not both")
    grids = raw.get("grids") if "grids" in raw else [raw.get("grid") or {}]
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise ConfigError(f"spec '{path}': grids must be a list of mappings (axis: [values])")
    for g in grids:
        for axis, values in g.items():
            if axis not in FIELDS:
                raise ConfigError(f"spec '{path}': unknown axis '{axis}'{did_you_mean(axis, FIELDS)}; axes are config fields")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"spec '{path}': axis '{axis}' must be a non-empty list of values")
    layout = raw.get("layout", "auto")
    if layout not in LAYOUTS:
        raise ConfigError(f"spec '{path}': layout '{layout}' is not one of {', '.join(LAYOUTS)}")
    retries = raw.get("retries", 2)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ConfigError(f"spec '{path}': retries must be an integer >= 0, got {retries!r}")
    notes = raw.get("notes") or []
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ConfigError(f"spec '{path}': notes must be a list of strings")
    name = str(raw.get("name") or Path(path).stem)
    spec = Spec(name=name, path=str(path), base=dict(base), grids=grids, variants=variants,
                experiment=str(raw.get("experiment") or base.get("experiment") or "mixmatch"),
                retries=retries, layout=layout, description=str(raw.get("description", "")), notes=notes)
    if not spec.cells():
        raise ConfigError(f"spec '{path}': the grid has no cells")
    return spec


def file_stem(sweep: str) -> str:
    """A sweep's name as a file name (its tables, plots and report are named after it)."""
    return re.sub(r"[^\w.-]+", "_", sweep)


def select(cells: list[Config], only: str | None) -> list[Config]:
    """`--only PATTERN`: shell-style match on the run name or the cell key (comma = or)."""
    if not only:
        return cells
    pats = [p.strip() for p in only.split(",") if p.strip()]
    return [c for c in cells if any(fnmatch.fnmatch(c.run_name, p) or c.cell_key.startswith(p) for p in pats)]
