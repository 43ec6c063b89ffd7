"""The paper's numbers (Berthelot et al. 2019), to show beside ours: results/paper_reference.csv.

Owns: reading the reference CSV, which of our datasets compares with which of the paper's
(`reference_dataset`), and matching the table's rows to the paper's numbers (`paper_numbers`):
same dataset, model, method, variant and n_labeled; where several of the paper's tables have
the cell, the layout's preferred table wins (Table 5's 5-split means for `labels`, Table 4's
single-split numbers for `ablation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mixmatch_core.config import ConfigError
from mixmatch_core.datasets import dataset_info

REFERENCE_CSV = Path(__file__).resolve().parent.parent / "results" / "paper_reference.csv"
# Which of the paper's tables each layout prefers when several have the same cell.
PREFERRED_TABLES = {"labels": (5, 6, 7, 1, 2, 4), "ablation": (4, 5, 6, 7, 1, 2)}


def load_reference(path: str | Path = REFERENCE_CSV) -> pd.DataFrame:
    """results/paper_reference.csv: dataset, model, table, paper_label, method, variant,
    n_labeled, error_mean, error_std, n_splits, note (error in %)."""
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"reference: '{path}' does not exist; use --reference none") from None


def reference_dataset(dataset: str) -> str | None:
    """The paper dataset our dataset is compared with, or None (see the module docstring).
    `digits` never matches. An `npz:PATH` dataset matches only when the file's stem is exactly
    a paper dataset name (npz:/data/cifar10.npz -> cifar10): any other npz may be a subset or
    another split."""
    info = dataset_info(dataset)
    return info.paper_name if info is not None else None


@dataclass
class Paper:
    """The paper's number for each (row, n_labeled) that has one, and why rows have none."""
    numbers: dict[tuple, dict]       # (row, n) -> the reference record (table, error_mean, error_std)
    datasets: set[str]               # paper datasets our rows were compared with
    models: list[str]                # when no number matched: the models the paper used there


def paper_numbers(rows: list[tuple], label_counts: list[int], models: dict, layout: str,
                   path: str | Path) -> Paper:
    """Same dataset, method, variant and n_labeled, and the row's model when it has one; where
    several of the paper's tables have the cell, the layout's preferred table wins."""
    ref = load_reference(path)
    rank = {t: i for i, t in enumerate(PREFERRED_TABLES[layout])}
    ref = ref.assign(_rank=ref["table"].map(rank).fillna(99)).sort_values(["_rank", "table"], kind="stable")
    ref = ref.assign(_order=range(len(ref)))
    wanted = [(r, reference_dataset(str(r[0])), n) for r in rows for n in label_counts]
    wanted = pd.DataFrame([(r, ds, r[1], r[2], n, models.get(r)) for r, ds, n in wanted
                           if ds is not None and ds in set(ref["dataset"])],
                          columns=["row", "dataset", "method", "variant", "n_labeled", "row_model"])
    m = wanted.merge(ref, on=["dataset", "method", "variant", "n_labeled"])
    m = m[m["row_model"].isna() | m["row_model"].eq(m["model"])]
    m = m.sort_values("_order", kind="stable").drop_duplicates(["row", "n_labeled"])
    numbers = {(r, n): rec for r, n, rec in zip(m["row"], m["n_labeled"], m.to_dict("records"))}
    datasets = set(wanted["dataset"])
    # The paper's numbers are per model: a small CNN on CIFAR-10 gets none (a WRN-28-2 number
    # beside it would read as a reproduction gap); the note says why the column is absent.
    models_used = sorted({str(x) for x in ref.loc[ref["dataset"].isin(datasets), "model"]}) if not numbers else []
    return Paper(numbers, datasets, models_used)
