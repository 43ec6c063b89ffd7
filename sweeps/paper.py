"""The papers' numbers, to show beside ours: results/paper_reference.csv.

Owns: reading the reference CSV, which of our datasets compares with which of the papers'
(`reference_dataset`), matching the table's rows to the papers' numbers (`paper_numbers`) and
naming where a number comes from (`table_label`, `sources_text`).

The CSV holds three papers (its `paper` column): MixMatch (Berthelot et al. 2019), FixMatch
(Sohn et al. 2020) and ReMixMatch (Berthelot et al. 2020); `table` is that paper's table. A row
matches on dataset, method, variant and n_labeled (and the row's model when it has one). Where
several tables have the cell, the sweep's preferred paper wins, then the layout's preferred
table of it: a sweep with FixMatch rows prefers FixMatch's tables (its Table 2 reruns
ReMixMatch and MixMatch too), else one with ReMixMatch rows ReMixMatch's, else MixMatch's
(Table 5's 5-split means for `labels`, Table 4's single-split numbers for `ablation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mixmatch_core.config import ConfigError
from mixmatch_core.datasets import dataset_info

REFERENCE_CSV = Path(__file__).resolve().parent.parent / "results" / "paper_reference.csv"


@dataclass(frozen=True)
class PaperInfo:
    """One paper of the CSV: how a table names it and which of its tables each layout prefers."""
    citation: str                    # in the table's notes
    short: str                       # before a table number of it ("" for MixMatch's own)
    preferred: dict[str, tuple]      # layout -> its tables, most preferred first
    one_split: tuple = ()            # tables of single-split numbers (said in the notes)


PAPERS = {
    "mixmatch": PaperInfo("Berthelot et al. 2019", "", {"labels": (5, 6, 7, 1, 2, 4), "ablation": (4, 5, 6, 7, 1, 2)},
                          one_split=(4,)),
    "fixmatch": PaperInfo("Sohn et al. 2020 (FixMatch)", "FixMatch", {"labels": (2,), "ablation": (2,)}),
    "remixmatch": PaperInfo("Berthelot et al. 2020 (ReMixMatch)", "ReMixMatch",
                            {"labels": (1, 2, 3), "ablation": (3, 1, 2)}, one_split=(3,)),
}
DEFAULT_PAPER = "mixmatch"
# A sweep with rows of one of these methods prefers that method's paper, in this order.
METHOD_PAPERS = ("fixmatch", "remixmatch")


def load_reference(path: str | Path = REFERENCE_CSV) -> pd.DataFrame:
    """results/paper_reference.csv: paper, dataset, model, table, paper_label, method, variant,
    n_labeled, error_mean, error_std, n_splits, note (error in %). A file without a `paper`
    column holds MixMatch's numbers."""
    try:
        ref = pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"reference: '{path}' does not exist; use --reference none") from None
    return ref if "paper" in ref else ref.assign(paper=DEFAULT_PAPER)


def reference_dataset(dataset: str) -> str | None:
    """The paper dataset our dataset is compared with, or None (see the module docstring).
    `digits` never matches. An `npz:PATH` dataset matches only when the file's stem is exactly
    a paper dataset name (npz:/data/cifar10.npz -> cifar10): any other npz may be a subset or
    another split."""
    info = dataset_info(dataset)
    return info.paper_name if info is not None else None


def preferred_papers(methods) -> list[str]:
    """The papers in the order a sweep with these methods prefers them (module docstring)."""
    first = [p for p in METHOD_PAPERS if p in set(methods)]
    return first + [p for p in PAPERS if p not in first]


def table_label(rec: dict) -> str:
    """Which paper's table a reference record is from: 'Table 5' (MixMatch's), 'FixMatch Table 2'."""
    short = PAPERS[rec.get("paper", DEFAULT_PAPER)].short
    return f"{short} Table {int(rec['table'])}".strip()


def sources_text(records) -> str:
    """The notes' citation of the tables the records come from, e.g. 'Berthelot et al. 2019,
    Tables 4, 5 (Table 4: one split); Sohn et al. 2020 (FixMatch), Table 2'."""
    used: dict[str, set] = {}
    for rec in records:
        used.setdefault(rec.get("paper", DEFAULT_PAPER), set()).add(int(rec["table"]))
    parts = []
    for paper in [p for p in PAPERS if p in used]:
        tables, info = sorted(used[paper]), PAPERS[paper]
        single = [t for t in tables if t in info.one_split]
        parts.append(f"{info.citation}, Table{'s' if len(tables) > 1 else ''} {', '.join(map(str, tables))}"
                     + "".join(f" (Table {t}: one split)" for t in single))
    return "; ".join(parts)


@dataclass
class Paper:
    """The papers' number for each (row, n_labeled) that has one, and why rows have none."""
    numbers: dict[tuple, dict]       # (row, n) -> the reference record (paper, table, error_mean, error_std)
    datasets: set[str]               # paper datasets our rows were compared with
    models: list[str]                # when no number matched: the models the papers used there


def _ranked(ref: pd.DataFrame, methods, layout: str) -> pd.DataFrame:
    """The reference rows, most preferred first (module docstring), with their order in `_order`."""
    rank = {(paper, t): i * 100 + j for i, paper in enumerate(preferred_papers(methods))
            for j, t in enumerate(PAPERS[paper].preferred[layout])}
    keys = zip(ref["paper"], ref["table"])
    ref = ref.assign(_rank=[rank.get(k, 10_000) for k in keys]).sort_values(["_rank", "table"], kind="stable")
    return ref.assign(_order=range(len(ref)))


def paper_numbers(rows: list[tuple], label_counts: list[int], models: dict, layout: str,
                  path: str | Path) -> Paper:
    """Same dataset, method, variant and n_labeled, and the row's model when it has one; where
    several tables have the cell, the sweep's preferred paper, then the layout's preferred
    table wins (module docstring)."""
    ref = _ranked(load_reference(path), [r[1] for r in rows], layout)
    wanted = [(r, reference_dataset(str(r[0])), n) for r in rows for n in label_counts]
    wanted = pd.DataFrame([(r, ds, r[1], r[2], n, models.get(r)) for r, ds, n in wanted
                           if ds is not None and ds in set(ref["dataset"])],
                          columns=["row", "dataset", "method", "variant", "n_labeled", "row_model"])
    m = wanted.merge(ref, on=["dataset", "method", "variant", "n_labeled"])
    m = m[m["row_model"].isna() | m["row_model"].eq(m["model"])]
    m = m.sort_values("_order", kind="stable").drop_duplicates(["row", "n_labeled"])
    numbers = {(r, n): rec for r, n, rec in zip(m["row"], m["n_labeled"], m.to_dict("records"))}
    datasets = set(wanted["dataset"])
    # The papers' numbers are per model: a small CNN on CIFAR-10 gets none (a WRN-28-2 number
    # beside it would read as a reproduction gap); the note says why the column is absent.
    models_used = sorted({str(x) for x in ref.loc[ref["dataset"].isin(datasets), "model"]}) if not numbers else []
    return Paper(numbers, datasets, models_used)
