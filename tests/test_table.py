"""Tables from MLflow: which run counts, seed aggregation, markers, reference, Welch, formats, CLI.

One small SQLite store per module (creating MLflow's schema takes seconds) holds two sweeps:
- `quick` (a spec in the store's folder): digits, n_labeled 50/100 x mixmatch/no_sharpen x
  seeds 1/2, with a FAILED cell, a cell FINISHED twice (the newer run counts) and a missing seed;
- `c10` (no spec): cifar10, mixmatch and supervised at 250/500/4000 labels, one seed missing.
Rules that need no store are tested on hand-made DataFrames.
"""

import pandas as pd
import pytest

from mixmatch_core.config import ConfigError, resolve
from mixmatch_cli import main
from sweeps import paper, render
from sweeps import table as tb
from sweeps.runs import load_runs, load_source

from mlflow_store import log_cell, sqlite_store

QUICK_SPEC = """name: quick
experiment: mixmatch-test
base: {dataset: digits}
grid:
  n_labeled: [50, 100]
  variant: [mixmatch, no_sharpen]
  seed: [1, 2]
"""
# (variant, n_labeled, seed, error or None, status, failure_reason), in logging order.
QUICK_RUNS = [("mixmatch", 50, 1, 20.0, "FINISHED", None), ("mixmatch", 50, 2, 22.0, "FINISHED", None),
              ("mixmatch", 100, 1, 12.0, "FINISHED", None), ("mixmatch", 100, 2, 13.0, "FINISHED", None),
              ("mixmatch", 100, 2, 14.0, "FINISHED", None),     # re-run of the same cell: this one counts
              ("no_sharpen", 50, 1, 30.0, "FINISHED", None),
              ("no_sharpen", 50, 2, None, "FAILED", "RuntimeError: boom"),
              ("no_sharpen", 100, 1, 15.0, "FINISHED", None)]   # (no_sharpen, 100, seed 2): missing
C10_RUNS = [("mixmatch", 250, 1, 11.0), ("mixmatch", 250, 2, 11.4), ("mixmatch", 500, 1, 9.0),
            ("mixmatch", 500, 2, 10.0), ("mixmatch", 4000, 1, 6.0), ("mixmatch", 4000, 2, 6.2),
            ("supervised", 250, 1, 60.0), ("supervised", 250, 2, 62.0), ("supervised", 500, 1, 50.0),
            ("supervised", 4000, 1, 20.0), ("supervised", 4000, 2, 21.0)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mixmatch_core.tracking import start_parent_run
    from sweeps.spec import load_spec

    root = tmp_path_factory.mktemp("store")
    (root / "quick.yaml").write_text(QUICK_SPEC)
    with sqlite_store(root) as c:
        parents = {"quick": start_parent_run("mixmatch-test", "quick", {"sweep": "quick", "mixmatch.role": "sweep"}),
                   "c10": start_parent_run("mixmatch-c10", "c10", {"sweep": "c10", "mixmatch.role": "sweep"})}
        cells = {(x.variant, x.n_labeled, x.seed): x for x in load_spec("quick.yaml").cells()}
        for v, n, s, err, status, reason in QUICK_RUNS:
            log_cell(c, "quick", parents["quick"], cells[v, n, s], err, status, reason)
        for v, n, s, err in C10_RUNS:
            cfg = resolve({"dataset": "cifar10", "variant": v, "n_labeled": n, "seed": s, "steps": 4096,
                           "experiment": "mixmatch-c10"})
            log_cell(c, "c10", parents["c10"], cfg, err)
        yield {"root": root, "parents": parents}


def quick_table(**kw) -> tb.Table:
    src = load_source("quick.yaml")
    return tb.build_table(src.runs, src.planned, sweep=src.sweep, **kw)


# ---- from the store ------------------------------------------------------------------------------
QUICK_MARKDOWN = """\
### Sweep quick: test error (%) on digits, ablations (layout of the paper's Table 4)

| variant | 50 | 100 |
|:---|---:|---:|
| mixmatch | **21.00 ± 1.41** | **13.00 ± 1.41** |
| no_sharpen | 30.00 (n=1/2, 1 failed) | 15.00 (n=1/2, 1 missing) |

- error: 100 - median test accuracy of the last evaluations, in %; mean ± sample std (ddof=1) over finished seeds.
- (n=k/m): k of m cells finished; failed, killed, running, missing: cells without a finished run.
- bold: lowest error in its column.
- paper: no numbers for digits.
- difference to the full method: Welch's t-test when both sides have >= 2 finished seeds, else n too small.

#### Difference to the full method (mixmatch) at the same label count, Welch's t-test over seeds

| variant | 50 | 100 |
|:---|---:|---:|
| no_sharpen | +9.00 (n too small) | +2.00 (n too small) |
"""


def test_markdown_marks_failed_and_missing_seeds_and_counts_a_rerun_once(store):
    assert render.to_markdown(quick_table()) == QUICK_MARKDOWN


def test_a_cell_its_queue_failed_before_any_run_is_failed_not_missing(store):
    """A worker can fail a cell before its MLflow run begins (a foreign checkpoint, data a remote
    worker lacks): only the sweep's queue knows. Given the queue's states the table says
    failed, with the queue's reason, where MLflow alone would say missing."""
    from sweeps.store import CellState
    key = next(c.cell_key for c in load_source("quick.yaml").planned
               if (c.variant, c.n_labeled, c.seed) == ("no_sharpen", 100, 2))
    states = {key: CellState(key, "digits-100-s2-no_sharpen", "failed", 1, reason="ConfigError: no data here")}
    table = tb.table_of(load_source("quick.yaml"), states=states)
    assert "| no_sharpen | 30.00 (n=1/2, 1 failed) | 15.00 (n=1/2, 1 failed) |" in render.to_markdown(table)
    cell = table.outcomes.set_index("cell_key").loc[key]
    assert (cell["state"], cell["failure_reason"]) == ("failed", "ConfigError: no data here")
    assert table.runs.set_index("cell_key").loc[key, ["status", "failure_reason"]].tolist() == \
        ["FAILED", "ConfigError: no data here"]
    from sweeps.report import cell_states
    assert cell_states(table, states).set_index("cell_key").loc[key, "run_name"] == "digits-100-s2-no_sharpen"
    assert "1 missing" in render.to_markdown(tb.table_of(load_source("quick.yaml")))     # without the queue


QUICK_LATEX = r"""% mixmatch table: sweep quick; needs \usepackage{booktabs}
\begin{table}[ht]
\centering
\caption{Sweep quick: test error (\%) on digits, ablations (layout of the paper's Table 4)}
\begin{tabular}{lrr}
\toprule
variant & 50 & 100 \\
\midrule
mixmatch & \textbf{21.00 $\pm$ 1.41} & \textbf{13.00 $\pm$ 1.41} \\
no\_sharpen & 30.00 (n=1/2, 1 failed) & 15.00 (n=1/2, 1 missing) \\
\bottomrule
\end{tabular}
\par\smallskip
{\footnotesize error: 100 - median test accuracy of the last evaluations, in \%; mean $\pm$ sample std (ddof=1) over finished seeds. (n=k/m): k of m cells finished; failed, killed, running, missing: cells without a finished run. bold: lowest error in its column. paper: no numbers for digits. difference to the full method: Welch's t-test when both sides have >= 2 finished seeds, else n too small.}
\end{table}

\begin{table}[ht]
\centering
\caption{Difference to the full method (mixmatch) at the same label count, Welch's t-test over seeds}
\begin{tabular}{lrr}
\toprule
variant & 50 & 100 \\
\midrule
no\_sharpen & +9.00 (n too small) & +2.00 (n too small) \\
\bottomrule
\end{tabular}
\end{table}
"""


def test_latex_is_booktabs_with_escaped_names_and_bold_best(store):
    assert render.to_latex(quick_table()) == QUICK_LATEX


QUICK_CELLS_CSV = """\
sweep,row,dataset,model,method,variant,n_labeled,n_planned,n_finished,n_failed,n_killed,n_running,n_missing,\
error_mean,error_std,text,best,paper_table,paper_error,paper_std,diff_paper,diff_full,welch_t,welch_p,test_note
quick,mixmatch,digits,small_cnn16,mixmatch,mixmatch,50,2,2,0,0,0,0,21,1.41421,21.00 ± 1.41,True,,,,,,,,
quick,mixmatch,digits,small_cnn16,mixmatch,mixmatch,100,2,2,0,0,0,0,13,1.41421,13.00 ± 1.41,True,,,,,,,,
quick,no_sharpen,digits,small_cnn16,mixmatch,no_sharpen,50,2,1,1,0,0,0,30,,"30.00 (n=1/2, 1 failed)",False,,,,,9,,,\
n too small
quick,no_sharpen,digits,small_cnn16,mixmatch,no_sharpen,100,2,1,0,0,0,1,15,,"15.00 (n=1/2, 1 missing)",False,,,,,2,,,\
n too small
"""


def test_aggregated_csv_has_one_row_per_table_cell_with_counts(store):
    assert render.cells_csv(quick_table()) == QUICK_CELLS_CSV


QUICK_RUNS_CSV = """\
run_name,seed,status,counted,error,failure_reason
digits-50-s1-mixmatch,1,FINISHED,True,20.0,
digits-50-s2-mixmatch,2,FINISHED,True,22.0,
digits-100-s1-mixmatch,1,FINISHED,True,12.0,
digits-100-s2-mixmatch,2,FINISHED,False,13.0,
digits-100-s2-mixmatch,2,FINISHED,True,14.0,
digits-50-s1-no_sharpen,1,FINISHED,True,30.0,
digits-50-s2-no_sharpen,2,FAILED,False,,RuntimeError: boom
digits-100-s1-no_sharpen,1,FINISHED,True,15.0,
digits-100-s2-no_sharpen,2,MISSING,False,,
"""


def test_runs_csv_has_every_run_and_marks_the_newest_finished_one_per_cell(store):
    from io import StringIO
    df = pd.read_csv(StringIO(render.runs_csv(quick_table())))
    cols = ["run_name", "seed", "status", "counted", "error", "failure_reason"]
    assert df[cols].to_csv(index=False, lineterminator="\n") == QUICK_RUNS_CSV
    assert df["run_id"].notna().sum() == len(QUICK_RUNS)


C10_MARKDOWN = """\
### Sweep c10: test error (%) on cifar10, by number of labels (layout of the paper's Table 5)

| variant | 250 | 500 | 4000 |
|:---|---:|---:|---:|
| mixmatch | **11.20 ± 0.28** | **9.50 ± 0.71** | **6.10 ± 0.14** |
| *paper (Table 5)* | 11.08 ± 0.87 | 9.65 ± 0.94 | 6.24 ± 0.06 |
| *Δ vs paper* | +0.12 | -0.15 | -0.14 |
| supervised | 61.00 ± 1.41 | 50.00 | 20.50 ± 0.71 |

- error: 100 - median test accuracy of the last evaluations, in %; mean ± sample std (ddof=1) over finished seeds.
- bold: lowest error in its column.
- paper: Berthelot et al. 2019, Table 5; Δ = ours - paper; —: the paper has no number.
- difference to the full method: Welch's t-test when both sides have >= 2 finished seeds, else n too small.
- cells known from MLflow only (no spec given): cells that never started are not shown.

#### Difference to the full method (mixmatch) at the same label count, Welch's t-test over seeds

| variant | 250 | 500 | 4000 |
|:---|---:|---:|---:|
| supervised | +49.80 (p=0.010) | +40.50 (n too small) | +14.40 (p=0.018) |
"""


def test_cifar10_sweep_by_name_gets_the_papers_table5_rows_and_welch_tests(store):
    table = tb.build_table(load_runs("c10"), None)
    assert table.layout == "labels"
    assert render.to_markdown(table) == C10_MARKDOWN


def test_ablation_layout_puts_the_paper_beside_ours_preferring_table4(store):
    table = tb.build_table(load_runs("c10", experiment="mixmatch-c10"), None, layout="ablation")
    assert table.main.header == ["variant", "250", "paper", "Δ", "500", "paper", "Δ", "4000", "paper", "Δ"]
    assert [c.text for c in table.main.rows[0]] == [
        "mixmatch", "11.20 ± 0.28", "11.80", "-0.60", "9.50 ± 0.71", "9.65 ± 0.94", "-0.15", "6.10 ± 0.14", "6.00",
        "+0.10"]
    assert [c.text for c in table.main.rows[1]][2:4] == ["—", "—"]


def test_a_spec_with_no_runs_yet_shows_every_cell_missing(store, tmp_path):
    spec = tmp_path / "later.yaml"
    spec.write_text("experiment: not-yet\nbase: {dataset: digits}\ngrid: {seed: [1, 2]}\n")
    src = load_source(str(spec))
    assert [c.text for c in tb.build_table(src.runs, src.planned).main.rows[0]] == ["mixmatch", "missing"]


def test_every_format_is_written_and_logged_to_the_parent_run(store, tmp_path):
    from mixmatch_core.tracking import client
    from sweeps.parent_run import log_artifacts
    parent = store["parents"]["quick"]
    paths = log_artifacts(render.write_table(quick_table(), tmp_path / "out", render.FORMATS), parent, "tables")
    assert [p.name for p in paths] == ["quick_table.md", "quick_table.tex", "quick_runs.csv", "quick_cells.csv",
                                       "quick_table.html"]
    assert paths[0].read_text() == QUICK_MARKDOWN
    logged = sorted(f.path for f in client().list_artifacts(parent, "tables"))
    assert logged == sorted(f"tables/{p.name}" for p in paths)


SPEC_NOTES = ["5000-label cells: labeled from train+unlabeled, as the official create_split.py does.",
              "wd 0.04 for the large model (Table 1)."]


@pytest.fixture
def noted_spec(store, tmp_path):
    """quick.yaml's sweep, with `notes:` in its spec."""
    path = tmp_path / "quick_noted.yaml"
    path.write_text(QUICK_SPEC + "notes:\n" + "".join(f"  - \"{n}\"\n" for n in SPEC_NOTES))
    return str(path)


def test_the_spec_notes_follow_the_tables_own_notes_in_markdown(noted_spec, capsys):
    assert main(["table", noted_spec]) == 0
    own = "- difference to the full method: Welch's t-test when both sides have >= 2 finished seeds, else n too small.\n"
    assert capsys.readouterr().out == QUICK_MARKDOWN.replace(own, own + "".join(f"- {n}\n" for n in SPEC_NOTES))


@pytest.mark.parametrize("fmt", ["latex", "html"])
def test_the_spec_notes_follow_the_tables_own_notes_in_latex_and_html(noted_spec, capsys, fmt):
    assert main(["table", noted_spec, "--format", fmt]) == 0
    out = capsys.readouterr().out.replace(r"\_", "_")      # LaTeX escapes the _ of create_split.py
    assert out.index("else n too small.") < out.index(SPEC_NOTES[0]) < out.index(SPEC_NOTES[1])


def test_cli_prints_the_markdown_table_of_a_spec(store, capsys):
    assert main(["table", "quick.yaml"]) == 0
    assert capsys.readouterr().out == QUICK_MARKDOWN


@pytest.mark.parametrize("argv,message", [
    (["table", "nope"], "mixmatch: error: sweep: no cell runs tagged sweep='nope' in any experiment; "
                        "known sweeps: c10, quick (or pass the spec file)"),
    (["table", "quick", "--format", "pdf"], "mixmatch: error: mixmatch table: argument --format: invalid choice: "
                                            "'pdf' (choose from 'markdown', 'latex', 'csv', 'html', 'all')"),
    (["table", "quick", "--experiment", "nope"], "mixmatch: error: experiment: no MLflow experiment named 'nope' in "),
    (["table", "quick", "--format", "all"], "mixmatch: error: --format all writes several files; give --out DIR"),
])
def test_cli_user_errors_are_one_line_and_exit_2(store, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith(message) and err.count("\n") == 1


# ---- rules on hand-made runs ---------------------------------------------------------------------
def frame(*runs, dataset="digits") -> pd.DataFrame:
    """Runs as `load_runs` returns them: (variant, n_labeled, seed, error[, status[, params]])."""
    rows = []
    for i, (variant, n, seed, error, *rest) in enumerate(runs):
        status = rest[0] if rest else "FINISHED"
        params = rest[1] if len(rest) > 1 else {}
        rows.append({"sweep": "t", "run_id": f"r{i}", "cell_key": f"{variant}-{n}-{seed}-{sorted(params.items())}",
                     "dataset": dataset, "model": "wrn28_2" if dataset != "digits" else "small_cnn",
                     "n_labeled": n, "seed": seed, "method": "supervised" if variant == "supervised" else "mixmatch",
                     "variant": variant, "status": status, "error": error, "start_time": i,
                     **{f"params.{k}": str(v) for k, v in params.items()}})
    return pd.DataFrame(rows)


def texts(grid) -> list[list[str]]:
    return [[c.text for c in row] for row in grid.rows]


def test_welch_test_needs_two_finished_seeds_on_each_side():
    runs = frame(("mixmatch", 50, 1, 10.0), ("mixmatch", 50, 2, 11.0), ("mixmatch", 100, 1, 8.0),
                 ("k1", 50, 1, 20.0), ("k1", 50, 2, 22.0), ("k1", 100, 1, 9.0), ("k1", 100, 2, 9.5))
    table = tb.build_table(runs, None)
    # Welch by hand at 50 labels: t = 10.5 / sqrt(2/2 + 0.5/2) = 9.39, dof = 1.25^2 / (1 + 0.25^2) = 1.47.
    assert texts(table.vs_full) == [["k1", "+10.50 (p=0.027)", "+1.25 (n too small)"]]
    cell = table.cells.set_index(["variant", "n_labeled"]).loc[("k1", 50)]
    assert (cell["welch_t"], cell["welch_p"]) == (pytest.approx(9.3915, abs=1e-4), pytest.approx(0.02738, abs=1e-4))


def test_best_value_of_each_column_is_bold_in_markdown_and_latex():
    table = tb.build_table(frame(("mixmatch", 50, 1, 10.0), ("k1", 50, 1, 9.0), ("mixmatch", 100, 1, 5.0),
                                 ("k1", 100, 1, 6.0)), None)
    md = render.to_markdown(table)
    assert "| mixmatch | 10.00 | **5.00** |" in md and "| k1 | **9.00** | 6.00 |" in md
    assert r"k1 & \textbf{9.00} & 6.00 \\" in render.to_latex(table)


def test_a_lone_row_is_not_bold():
    assert not any(c.bold for row in tb.build_table(frame(("mixmatch", 50, 1, 10.0)), None).main.rows
                   for c in row)


def test_full_method_comes_first_then_table4_order():
    runs = frame(("supervised", 50, 1, 40.0), ("no_mixup", 50, 1, 30.0), ("k1", 50, 1, 20.0),
                 ("mixmatch", 50, 1, 10.0))
    assert [r[0] for r in texts(tb.build_table(runs, None).main)] == ["mixmatch", "k1", "no_mixup", "supervised"]


@pytest.mark.parametrize("statuses,text", [
    (("FAILED", "FAILED"), "failed"),
    (("KILLED", "RUNNING"), "1 killed, 1 running"),
    (("FINISHED", "RUNNING"), "10.00 (n=1/2, 1 running)"),
])
def test_cells_without_a_finished_run_are_named_not_dropped(statuses, text):
    runs = frame(*[("mixmatch", 50, s + 1, 10.0 if st == "FINISHED" else None, st) for s, st in enumerate(statuses)])
    assert texts(tb.build_table(runs, None).main) == [["mixmatch", text]]


def test_a_config_field_varying_within_a_variant_splits_rows_instead_of_pooling_seeds():
    runs = frame(("mixmatch", 50, 1, 10.0, "FINISHED", {"steps": 1000}),
                 ("mixmatch", 50, 1, 20.0, "FINISHED", {"steps": 3000}))
    assert texts(tb.build_table(runs, None).main) == [["mixmatch [steps=1000]", "10.00"],
                                                     ["mixmatch [steps=3000]", "20.00"]]


@pytest.mark.parametrize("labels,rows,layout", [(5, 2, "labels"), (3, 4, "labels"), (2, 2, "ablation"),
                                                (5, 10, "ablation")])
def test_auto_layout_is_labels_for_three_label_counts_and_few_rows(labels, rows, layout):
    assert tb.choose_layout(labels, rows) == layout


@pytest.mark.parametrize("dataset,ref", [("cifar10", "cifar10"), ("svhn_extra", "svhn_extra"),
                                         ("npz:/data/cifar10.npz", "cifar10"), ("npz:/data/cifar10_4k.npz", None),
                                         ("digits", None)])
def test_reference_dataset_matching(dataset, ref):
    assert paper.reference_dataset(dataset) == ref


def pooled(runs: pd.DataFrame, pools: dict[int, str]) -> pd.DataFrame:
    """The runs with a `labeled_pool` param at the given label counts (the others have none)."""
    return runs.assign(labeled_pool=runs["n_labeled"].map(pools))


def test_cells_that_drew_labels_from_another_set_than_train_are_named_in_a_note():
    runs = pooled(frame(("mixmatch", 250, 1, 11.0), ("mixmatch", 5000, 1, 6.0), dataset="cifar10"),
                  {5000: "train+unlabeled"})
    table = tb.build_table(runs, None, reference="none")
    assert "labeled set: 5000-label cells drew from train+unlabeled (official create_split.py)." in table.notes
    assert texts(table.main)[0] == ["mixmatch", "11.00", "6.00"]       # one row: the note, not a row, says it


def test_a_spec_with_notes_points_the_labeled_set_note_at_them():
    runs = pooled(frame(("mixmatch", 5000, 1, 6.0), ("k1", 5000, 1, 7.0)), {5000: "labeled_only"})
    table = tb.build_table(runs, None, notes=["how labeled_only was drawn"])
    assert table.notes[-2:] == ["labeled set: 5000-label cells drew from labeled_only (see the spec's notes).",
                                "how labeled_only was drawn"]


@pytest.mark.parametrize("pools", [{}, {250: "train"}])
def test_runs_without_a_labeled_pool_or_from_train_get_no_labeled_set_note(pools):
    table = tb.build_table(pooled(frame(("mixmatch", 250, 1, 11.0)), pools), None)
    assert not any(n.startswith("labeled set") for n in table.notes)


def test_a_label_count_with_both_sets_says_some_cells():
    runs = frame(("mixmatch", 250, 1, 11.0), ("mixmatch", 250, 2, 12.0)).assign(labeled_pool=[None, "train+unlabeled"])
    assert "labeled set: some 250-label cells drew from train+unlabeled (official create_split.py)." \
        in tb.build_table(runs, None).notes


@pytest.mark.parametrize("n_labeled,pools,extra", [
    ([50, 100], ["train", "train+unlabeled"], []),        # a function of the label count: the note says it
    ([50, 50], ["train", "train"], []),
    ([50, 50], ["train", "train+unlabeled"], ["labeled_pool"]),    # two sets at one label count: two rows
])
def test_a_labeled_pool_field_splits_rows_only_where_it_varies_at_one_label_count(monkeypatch, n_labeled, pools,
                                                                                  extra):
    # Once labeled_pool is an identity config field, the cells carry params.labeled_pool like any other.
    monkeypatch.setattr(tb, "IDENTITY", ("steps", "labeled_pool"))
    cells = pd.DataFrame({"dataset": "d", "method": "m", "variant": "v", "n_labeled": n_labeled,
                          "params.steps": "1000", "params.labeled_pool": pools})
    assert tb._extra_axes(cells) == extra


def test_reference_none_leaves_the_paper_out():
    table = tb.build_table(frame(("mixmatch", 250, 1, 11.0), dataset="cifar10"), None, reference="none")
    assert texts(table.main) == [["mixmatch", "11.00"]] and not any("paper" in n for n in table.notes)


def test_a_model_the_paper_did_not_use_gets_no_paper_column_and_a_note_saying_why():
    runs = frame(("mixmatch", 250, 1, 48.0), ("mixmatch", 250, 2, 49.0), dataset="npz:data/cifar10.npz")
    runs["model"] = "small_cnn16"
    table = tb.build_table(runs, None)
    assert texts(table.main) == [["mixmatch", "48.50 ± 0.71"]]
    assert "paper: no numbers for small_cnn16 (its cifar10 numbers are for wrn28_2, wrn28_large); not shown." \
        in table.notes


def test_html_is_one_standalone_file():
    page = render.to_html(tb.build_table(frame(("mixmatch", 50, 1, 10.0), ("k1", 50, 1, 12.0)), None))
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "<strong>10.00</strong>" in page
    assert "<link" not in page and "src=" not in page


@pytest.mark.parametrize("layout,reference", [("wide", "paper"), ("auto", "arxiv")])
def test_bad_layout_or_reference_is_a_config_error(layout, reference):
    with pytest.raises(ConfigError):
        tb.build_table(frame(("mixmatch", 50, 1, 10.0)), None, layout=layout, reference=reference)


def test_paper_reference_csv_holds_the_papers_numbers():
    ref = paper.load_reference().query("paper == 'mixmatch'")      # the MixMatch paper's own tables
    ref = ref.set_index(["table", "dataset", "model", "variant", "n_labeled"])
    assert ref.groupby(level="table").size().to_dict() == {1: 2, 2: 2, 4: 22, 5: 31, 6: 31, 7: 31}
    assert tuple(ref.loc[(5, "cifar10", "wrn28_2", "mixmatch", 250), ["error_mean", "error_std"]]) == (11.08, 0.87)
    assert ref.loc[(5, "cifar10", "wrn28_2", "fully_supervised", 50000), "error_mean"] == 4.13
    assert ref.loc[(4, "cifar10", "wrn28_2", "no_sharpen", 4000), "error_mean"] == 10.59
    assert ref.loc[(1, "cifar10", "wrn28_large", "mixmatch", 4000), "error_mean"] == 4.95
    assert ref.loc[(7, "svhn_extra", "wrn28_2", "mixmatch", 4000), "error_mean"] == 2.07
    assert tuple(ref.loc[(7, "svhn_extra", "wrn28_2", "pseudo_label_svhn", 250), ["error_mean", "error_std"]]) == \
        (17.71, 0.78)
    assert ref.loc[(6, "svhn", "wrn28_2", "mixup_svhn", 250), "error_mean"] == 39.97
    assert ref.loc[(1, "cifar10", "wrn28_large", "mixmatch", 4000), "n_splits"] == 5
