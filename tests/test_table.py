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

# `paired` (no spec): three labeled splits of very different difficulty (errors' mean 18, median 14);
# no_sharpen is worse on each split by 0.5, 0.6 and 0.9 points. Welch sees p > 0.9, the pairs p = 0.031.
PAIRED_RUNS = [("mixmatch", 50, 1, 10.0), ("mixmatch", 50, 2, 14.0), ("mixmatch", 50, 3, 30.0),
               ("no_sharpen", 50, 3, 30.9), ("no_sharpen", 50, 1, 10.5), ("no_sharpen", 50, 2, 14.6)]

# `other` (no spec, another experiment): the supervised baseline on the same three splits, worse by
# 2, 2 and 1 points (seed 4 has no partner in `paired`).
OTHER_RUNS = [("supervised", 50, 1, 12.0), ("supervised", 50, 2, 16.0), ("supervised", 50, 3, 31.0),
              ("supervised", 50, 4, 20.0)]


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
        for name, runs in (("other", OTHER_RUNS), ("paired", PAIRED_RUNS)):
            parents[name] = start_parent_run(f"mixmatch-{name}", name, {"sweep": name, "mixmatch.role": "sweep"})
            for v, n, s, err in runs:
                cfg = resolve({"dataset": "digits", "variant": v, "n_labeled": n, "seed": s,
                               "experiment": f"mixmatch-{name}"})
                log_cell(c, name, parents[name], cfg, err)
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
- difference to the full method: paired by seed where both share >= 2 seeds (the same labeled splits), else Welch's t-test (>= 2 finished seeds each side), else n too small; the columns: docs/sweeps.md.

#### Difference to the full method (mixmatch) at the same label count: variant - mixmatch, in percentage points of error (negative: the variant errs less)

| variant | labels | Δ error | 95% interval | test | p | seeds | P(better) | bootstrap 95% |
|:---|---:|---:|---:|---:|---:|---:|---:|---:|
| no_sharpen | 50 | +9.00 | — | n too small | — | 1 vs 2 | — | — |
| no_sharpen | 100 | +2.00 | — | n too small | — | 1 vs 2 | — | — |

#### Interquartile mean over each row's (label count, seed) cells, test error (%), with a 95% stratified bootstrap interval (rliable's; compare rows over the same label counts only)

| variant | IQM | 95% interval | cells | label counts |
|:---|---:|---:|---:|---:|
| mixmatch | 17.00 | [16.00, 18.00] | 4 | 50, 100 |
| no_sharpen | 22.50 | [22.50, 22.50] | 2 | 50, 100 |
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
{\footnotesize error: 100 - median test accuracy of the last evaluations, in \%; mean $\pm$ sample std (ddof=1) over finished seeds. (n=k/m): k of m cells finished; failed, killed, running, missing: cells without a finished run. bold: lowest error in its column. paper: no numbers for digits. difference to the full method: paired by seed where both share >= 2 seeds (the same labeled splits), else Welch's t-test (>= 2 finished seeds each side), else n too small; the columns: docs/sweeps.md.}
\end{table}

\begin{table}[ht]
\centering
\caption{Difference to the full method (mixmatch) at the same label count: variant - mixmatch, in percentage points of error (negative: the variant errs less)}
\begin{tabular}{lrrrrrrrr}
\toprule
variant & labels & $\Delta$ error & 95\% interval & test & p & seeds & P(better) & bootstrap 95\% \\
\midrule
no\_sharpen & 50 & +9.00 & --- & n too small & --- & 1 vs 2 & --- & --- \\
no\_sharpen & 100 & +2.00 & --- & n too small & --- & 1 vs 2 & --- & --- \\
\bottomrule
\end{tabular}
\end{table}

\begin{table}[ht]
\centering
\caption{Interquartile mean over each row's (label count, seed) cells, test error (\%), with a 95\% stratified bootstrap interval (rliable's; compare rows over the same label counts only)}
\begin{tabular}{lrrrr}
\toprule
variant & IQM & 95\% interval & cells & label counts \\
\midrule
mixmatch & 17.00 & [16.00, 18.00] & 4 & 50, 100 \\
no\_sharpen & 22.50 & [22.50, 22.50] & 2 & 50, 100 \\
\bottomrule
\end{tabular}
\end{table}
"""


def test_latex_is_booktabs_with_escaped_names_and_bold_best(store):
    assert render.to_latex(quick_table()) == QUICK_LATEX


QUICK_CELLS_CSV = """\
sweep,row,dataset,model,method,variant,n_labeled,n_planned,n_finished,n_failed,n_killed,n_running,n_missing,\
error_mean,error_std,text,error_last_mean,error_last_std,best,paper_table,paper_error,paper_std,diff_paper,\
diff_full,diff_low,diff_high,boot_low,boot_high,test,t,p,p_better,n_pairs,n_dropped
quick,mixmatch,digits,small_cnn16,mixmatch,mixmatch,50,2,2,0,0,0,0,21,1.41421,21.00 ± 1.41,,,True,,,,,,,,,,,,,,,
quick,mixmatch,digits,small_cnn16,mixmatch,mixmatch,100,2,2,0,0,0,0,13,1.41421,13.00 ± 1.41,,,True,,,,,,,,,,,,,,,
quick,no_sharpen,digits,small_cnn16,mixmatch,no_sharpen,50,2,1,1,0,0,0,30,,"30.00 (n=1/2, 1 failed)",,,False,,,,,9,,,,,\
n too small,,,,0,0
quick,no_sharpen,digits,small_cnn16,mixmatch,no_sharpen,100,2,1,0,0,0,1,15,,"15.00 (n=1/2, 1 missing)",,,False,,,,,2,,,,,\
n too small,,,,0,0
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
- difference to the full method: paired by seed where both share >= 2 seeds (the same labeled splits), else Welch's t-test (>= 2 finished seeds each side), else n too small; the columns: docs/sweeps.md.
- cells known from MLflow only (no spec given): cells that never started are not shown.

#### Difference to the full method (mixmatch) at the same label count: variant - mixmatch, in percentage points of error (negative: the variant errs less)

| variant | labels | Δ error | 95% interval | test | p | seeds | P(better) | bootstrap 95% |
|:---|---:|---:|---:|---:|---:|---:|---:|---:|
| supervised | 250 | +49.80 | [+39.64, +59.96] | paired t | 0.010 | 2 pairs | 0.00 | — |
| supervised | 500 | +40.50 | — | n too small | — | 1 vs 2 | — | — |
| supervised | 4000 | +14.40 | [+9.32, +19.48] | paired t | 0.018 | 2 pairs | 0.00 | — |

#### Interquartile mean over each row's (label count, seed) cells, test error (%), with a 95% stratified bootstrap interval (rliable's; compare rows over the same label counts only)

| variant | IQM | 95% interval | cells | label counts |
|:---|---:|---:|---:|---:|
| mixmatch | 9.05 | [8.75, 9.40] | 6 | 250, 500, 4000 |
| supervised | 43.67 | [43.33, 44.33] | 5 | 250, 500, 4000 |
"""


def test_cifar10_sweep_by_name_gets_the_papers_table5_rows_and_paired_tests(store):
    table = tb.build_table(load_runs("c10"), None)
    assert table.layout == "labels"
    assert render.to_markdown(table) == C10_MARKDOWN


def test_a_variant_worse_on_every_split_is_significant_paired_though_welch_sees_nothing(store):
    from scipy.stats import ttest_ind, ttest_rel
    table = tb.build_table(load_runs("paired"), None)
    assert texts(table.main) == [["mixmatch", "18.00 ± 10.58"], ["no_sharpen", "18.67 ± 10.79"]]
    # By hand: differences 0.5, 0.6, 0.9; mean 2/3, sd 0.2082, t = 5.547 with 2 dof, so
    # p = 1 - t / sqrt(2 + t^2) = 0.031 and the interval 2/3 -+ 4.303 * 0.1202.
    assert texts(table.vs_full) == [["no_sharpen", "50", "+0.67", "[+0.15, +1.18]", "paired t", "0.031", "3 pairs",
                                     "0.00", "—"]]
    cell = table.cells.set_index("variant").loc["no_sharpen"]
    full, variant = [10.0, 14.0, 30.0], [10.5, 14.6, 30.9]
    assert cell["p"] == pytest.approx(ttest_rel(variant, full).pvalue, rel=1e-9)
    assert ttest_ind(variant, full, equal_var=False).pvalue > 0.9       # unpaired, nothing to see
    assert (cell["p_better"], cell["n_pairs"], cell["n_dropped"]) == (0.0, 3, 0)


def test_a_table_of_two_sweeps_pairs_their_cells_that_share_dataset_labels_and_seed(store, capsys):
    assert main(["table", "paired", "other"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### Sweep paired+other: test error (%) on digits")
    # Across the sweeps: differences 2, 2, 1 (t = 5 with 2 dof: p = 1 - 5 / sqrt(27)); seed 4 has no partner.
    assert ("| supervised | 50 | +1.67 | [+0.23, +3.10] | paired t | 0.038 | 3 pairs, 1 unpaired dropped | 0.00 | — |"
            in out)
    assert "| no_sharpen | 50 | +0.67 | [+0.15, +1.18] | paired t | 0.031 | 3 pairs | 0.00 | — |" in out


def test_a_report_of_two_sweeps_holds_their_paired_table_and_each_sweeps_command(store, tmp_path, capsys):
    assert main(["report", "paired", "other", "--out", str(tmp_path), "--ui-port", "5123"]) == 0
    page = (tmp_path / "paired_other_report.html").read_text()
    assert "<td>supervised</td><td>50</td><td>+1.67</td>" in page
    assert "<code>mixmatch table paired</code><br><code>mixmatch table other</code>" in page
    assert "http://127.0.0.1:5123/#/experiments/" in page and "127.0.0.1:5000" not in page


def test_a_failed_seed_drops_its_partner_and_the_table_counts_both():
    runs = frame(*[("mixmatch", 50, s, e) for s, e in FULL_SEEDS.items()],
                 ("k1", 50, 1, 10.5), ("k1", 50, 2, 14.6), ("k1", 50, 3, None, "FAILED"))
    table = tb.build_table(runs, None)
    assert texts(table.main)[1][1] == "12.55 ± 2.90 (n=2/3, 1 failed)"
    # 2 pairs (0.5, 0.6): t = 0.55 / 0.05 = 11 with 1 dof, p = 1 - 2 atan(11) / pi = 0.058.
    assert texts(table.vs_full)[0][2:7] == ["+0.55", "[-0.09, +1.19]", "paired t", "0.058",
                                            "2 pairs, 2 unpaired dropped"]


def test_the_error_at_the_last_evaluation_is_exported_beside_the_headline_in_every_format():
    runs = frame(("mixmatch", 50, 1, 10.0), ("mixmatch", 50, 2, 12.0), ("k1", 50, 1, 11.0), ("k1", 50, 2, 13.0))
    table = tb.build_table(runs.assign(error_last=[9.0, 15.0, 11.5, 12.5]), None)
    assert texts(table.main) == [["mixmatch", "11.00 ± 1.41"], ["k1", "12.00 ± 1.41"]]     # the median rule's
    assert texts(table.last) == [["mixmatch", "12.00 ± 4.24"], ["k1", "12.00 ± 0.71"]]
    assert table.cells["error_last_mean"].tolist() == [12.0, 12.0]
    title = "at the last evaluation (not the headline"
    assert all(title in text for text in (render.to_markdown(table), render.to_html(table), render.to_latex(table)))
    assert render.cells_csv(table).splitlines()[1].split(",")[16:18] == ["12", "4.24264"]


def test_the_interquartile_mean_needs_a_grid_of_two_label_counts_or_more():
    one = frame(("mixmatch", 50, 1, 10.0), ("mixmatch", 50, 2, 12.0))
    assert tb.build_table(one, None).iqm is None
    two = tb.build_table(pd.concat([one, frame(("mixmatch", 100, 1, 5.0), ("mixmatch", 100, 2, 30.0))]), None)
    assert texts(two.iqm) == [["mixmatch", "11.00", "[7.50, 21.00]", "4", "50, 100"]]    # (10 + 12) / 2


def test_runs_without_a_last_evaluation_metric_get_no_last_evaluation_table():
    assert tb.build_table(frame(("mixmatch", 50, 1, 10.0)), None).last is None


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
    own = ("- difference to the full method: paired by seed where both share >= 2 seeds (the same labeled splits), "
           "else Welch's t-test (>= 2 finished seeds each side), else n too small; the columns: docs/sweeps.md.\n")
    assert capsys.readouterr().out == QUICK_MARKDOWN.replace(own, own + "".join(f"- {n}\n" for n in SPEC_NOTES))


@pytest.mark.parametrize("fmt", ["latex", "html"])
def test_the_spec_notes_follow_the_tables_own_notes_in_latex_and_html(noted_spec, capsys, fmt):
    assert main(["table", noted_spec, "--format", fmt]) == 0
    out = capsys.readouterr().out.replace(r"\_", "_")      # LaTeX escapes the _ of create_split.py
    assert out.index("the columns: docs/sweeps.md.") < out.index(SPEC_NOTES[0]) < out.index(SPEC_NOTES[1])


def test_cli_prints_the_markdown_table_of_a_spec(store, capsys):
    assert main(["table", "quick.yaml"]) == 0
    assert capsys.readouterr().out == QUICK_MARKDOWN


@pytest.mark.parametrize("argv,message", [
    (["table", "nope"], "mixmatch: error: sweep: no cell runs tagged sweep='nope' in any experiment; "
                        "known sweeps: c10, other, paired, quick (or pass the spec file)"),
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


FULL_SEEDS = {1: 10.0, 2: 14.0, 3: 30.0, 4: 12.0}


def test_rows_without_shared_seeds_keep_welch_which_needs_two_finished_seeds_on_each_side():
    runs = frame(("mixmatch", 50, 1, 10.0), ("mixmatch", 50, 2, 11.0), ("mixmatch", 100, 1, 8.0),
                 ("k1", 50, 3, 20.0), ("k1", 50, 4, 22.0), ("k1", 100, 3, 9.0), ("k1", 100, 4, 9.5))
    table = tb.build_table(runs, None)
    # Welch by hand at 50 labels: t = 10.5 / sqrt(2/2 + 0.5/2) = 9.39, dof = 1.25^2 / (1 + 0.25^2) = 1.47,
    # interval 10.5 -+ t_0.975(1.47) sqrt(1.25) = 10.5 -+ 6.188 * 1.118.
    assert [row[:7] for row in texts(table.vs_full)] == [
        ["k1", "50", "+10.50", "[+3.58, +17.42]", "Welch", "0.027", "2 vs 2"],
        ["k1", "100", "+1.25", "—", "n too small", "—", "2 vs 1"]]
    cell = table.cells.set_index(["variant", "n_labeled"]).loc[("k1", 50)]
    assert (cell["t"], cell["p"]) == (pytest.approx(9.3915, abs=1e-4), pytest.approx(0.02738, abs=1e-4))


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
