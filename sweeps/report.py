"""One self-contained HTML report of a sweep: `mixmatch report`, also written at the end of
every `mixmatch sweep` and logged to the sweep's parent run.

Owns the page, not the numbers: the error tables and the comparisons with the full method are
`sweeps.table.build_table`'s (the same Table `mixmatch table` renders), the figures are
`sweeps.plot`'s (embedded as base64 PNG). A cell's state follows store.py's rule: a cell with
a result (the run the table counts) is finished; any other cell is where the sweep's queue has
it (waiting, running, failed with its reason), and, without a queue to read (a sweep run
elsewhere), what its newest MLflow run says. The page also says how to reproduce
the sweep (command, code version), where and when it ran, its wall time and the compute it
spent, and the configs (the base config, and each variant's diff against it).

The file opens offline: CSS inline, images as data: URIs, no script. Links go to the MLflow
UI: the sweep's saved views (mlflow_view.py), each cell's run, and (for an http(s) tracking
server, where all runs are one server away) MLflow's compare view of all the sweep's runs. With
the default SQLite store the links point at `mixmatch ui` on 127.0.0.1 at `ui_port` (`mixmatch
report --ui-port P` for `mixmatch ui --port P`; the page says so).

Several sweeps (`mixmatch report A B`) make one page: one table of all their cells (paired across
the sweeps), each sweep's command, views and configs.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from mixmatch_core.config import Config, resolve
from mixmatch_core.methods import FULL_METHOD
from mixmatch_core.tracking import tracking_uri

from . import mlflow_view
from .parent_run import log_artifacts
from .plot import plot_table
from .render import FORMATS, TABLE_CSS, html_body, write_table
from .runs import Source, load_sources, source_of_spec, spec_from_parent_run, storage_states
from .spec import Spec, file_stem
from .table import Table, table_of, variant_rank

ML_VIEW = "workflowType=machine_learning"  # MLflow 3's model-training view (its default is GenAI)

REPORT_CSS = TABLE_CSS + """
body{max-width:72em}
h1{margin-bottom:.2em} .lead{color:#444;margin-top:0}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.25em 1.5em;font-size:.95em}
dl.facts dt{color:#555} dl.facts dd{margin:0}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em}
pre{background:#f6f6f6;padding:.6em .8em;overflow-x:auto}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
table.cells td:nth-child(-n+3),table.cells th:nth-child(-n+3){text-align:left}
.state-finished{color:#1a7f37} .state-failed,.state-killed{color:#cf222e}
.state-running{color:#9a6700} .state-waiting,.state-missing{color:#666}
td.reason{white-space:normal;text-align:left;max-width:28em;color:#cf222e;font-size:.9em}
nav a{margin-right:1em}
table.diffs th,table.diffs td{text-align:left;white-space:normal}
pre.config{columns:3 20em;column-gap:2em}"""


# ---- links to the MLflow UI ----------------------------------------------------------------------
def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def ui_base(uri: str, ui_port: int = mlflow_view.UI_PORT) -> str:
    """The MLflow UI serving this tracking URI: the server itself, else `mixmatch ui --port
    ui_port`'s address."""
    return uri.rstrip("/") if is_server(uri) else f"http://127.0.0.1:{ui_port}"


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in MLflow 3's model-training view (not the GenAI overview);
    `base`: ui_base's address."""
    return f"{base}/#/experiments/{experiment_id}/runs?{ML_VIEW}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def compare_url(base: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    """MLflow's compare view of these runs (its route takes JSON lists)."""
    q = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps(experiment_ids)})
    return f"{base}/#/compare-runs?{q}&{ML_VIEW}"


# ---- what the page says --------------------------------------------------------------------------
def cell_states(table: Table, queue: dict | None) -> pd.DataFrame:
    """One row per cell: run name, state (finished, failed, killed, running, waiting, missing),
    error, steps/s, its run's id and experiment, the failure reason. A cell with a result is
    finished; any other cell the queue (`queue`: cell_key -> store.CellState) knows is where
    the queue has it (a cell may wait for a retry, or its worker be lost while MLflow still
    shows its run running); the others keep what MLflow says."""
    cells = table.outcomes.copy()
    runs = table.runs[table.runs["run_id"].notna()].drop_duplicates("run_id")
    cells = cells.merge(runs[["run_id", "run_name", "experiment_id", "steps_per_s"]], on="run_id", how="left")
    planned = table.runs.loc[table.runs["run_id"].isna(), ["cell_key", "run_name"]]   # cells without a run
    cells["run_name"] = cells["run_name"].fillna(cells["cell_key"].map(dict(zip(planned["cell_key"],
                                                                               planned["run_name"]))))
    for i, key in cells["cell_key"].items():
        q = (queue or {}).get(key)
        if q is None or q.state == "done" or cells.at[i, "state"] == "finished":
            continue
        cells.at[i, "state"] = q.state
        if q.state == "failed":
            cells.at[i, "failure_reason"] = q.reason
    return cells


@dataclass
class Facts:
    """Where, when, with what code and at what cost the sweep ran (from its runs' tags and times)."""
    code_versions: list[str]
    machines: list[str]
    first_start: str
    last_end: str
    wall_seconds: float          # time during which at least one of its runs was running
    compute_hours: float
    compute_unit: str            # CPU core-hours | GPU-hours
    n_runs: int


def _utc(ms: float) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


def facts(table: Table) -> Facts | None:
    """From every run of the sweep (retries and failures included: they spent compute too)."""
    runs = table.runs[table.runs["run_id"].notna() & table.runs["start_time"].notna()]
    if runs.empty:
        return None
    start = pd.to_numeric(runs["start_time"]).astype(float)
    end = pd.to_numeric(runs["end_time"]).astype(float).fillna(start)
    hours = (end - start) / 3.6e6
    gpu = ~runs["device_name"].fillna("cpu").str.lower().str.startswith("cpu")   # e.g. "cpu (x86_64, 1 threads)"
    # A CPU run computes on as many cores as it had torch threads (its device_name tag says how
    # many, e.g. "cpu (x86_64, 1 threads)"; else its num_threads param; else 1).
    threads = pd.to_numeric(runs["device_name"].fillna("").str.extract(r"(\d+) threads")[0], errors="coerce")
    threads = threads.fillna(pd.to_numeric(runs["num_threads"], errors="coerce")).fillna(1).clip(lower=1)
    unit = "GPU-hours" if gpu.any() else "CPU core-hours"
    compute = float((hours * (1 if gpu.any() else threads)).sum())
    # The trainer's tag says "1 threads"; the page says it in English.
    device = runs["device_name"].fillna("?").str.replace(r"\b1 threads\b", "1 thread", regex=True)
    machines = runs["host"].fillna("?").str.split(":").str[0] + ": " + device
    return Facts(sorted(runs["code_version"].dropna().unique()), sorted(machines.unique()), _utc(start.min()),
                 _utc(end.max()), _busy_seconds(start, end), compute, unit, len(runs))


def _busy_seconds(start: pd.Series, end: pd.Series) -> float:
    """Length of the union of the runs' intervals: the sweep's wall time without the gaps
    between launches."""
    total, cur_start, cur_end = 0.0, None, None
    for s, e in sorted(zip(start, end)):
        if cur_end is None or s > cur_end:
            total += 0 if cur_end is None else cur_end - cur_start
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    return (total + (cur_end - cur_start if cur_end is not None else 0)) / 1000


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def config_diffs(spec: Spec) -> tuple[dict, dict[str, dict]]:
    """The spec's base config resolved (every field), and for each variant in the sweep the
    fields its cells change against the full method's cell with the same labels and seed, in the
    table's row order."""
    # The base as the full method's cell sees it (a method field in the base reaches only the
    # cells whose method owns it); a baseline's diff then shows its own fields, MixMatch's unset.
    base = resolve({"experiment": spec.experiment}, spec.variants, base=spec.base).to_dict()
    cells = spec.cells()
    full = {(c.n_labeled, c.seed): c.to_dict() for c in cells if c.variant == FULL_METHOD}
    diffs: dict[str, dict] = {}
    for c in cells:
        ref = full.get((c.n_labeled, c.seed), base)
        d = {k: f"{_yaml(ref[k])} → {_yaml(v)}" for k, v in c.to_dict().items() if ref.get(k) != v and k != "variant"}
        diffs.setdefault(c.variant, d)
    return base, dict(sorted(diffs.items(), key=lambda kv: variant_rank(kv[0])))     # the table's order


def _yaml(v) -> str:
    """A value as the config files spell it (true, not True)."""
    return str(v).lower() if isinstance(v, bool) else str(v)


# ---- the page ------------------------------------------------------------------------------------
def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _facts_html(src: Source, table: Table, f: Facts | None, uri: str) -> list[str]:
    e = html.escape
    commands = [f"mixmatch sweep {p.spec.path}" if p.spec is not None else f"mixmatch table {p.sweep}"
                for p in src.sources()]
    rows = [("reproduce", "<br>".join(f"<code>{e(c)}</code>" for c in commands)),
            ("tracking", f"<code>{e(uri)}</code>")]
    if f is not None:
        rows += [("code version", ", ".join(f"<code>{e(v)}</code>" for v in f.code_versions) or "unknown"),
                 ("machines", "<br>".join(e(m) for m in f.machines)),
                 ("dates", f"{e(f.first_start)} to {e(f.last_end)}"),
                 ("wall time", f"{_duration(f.wall_seconds)} (while at least one of its runs was running)"),
                 ("compute", f"{f.compute_hours:.2f} {f.compute_unit} over {f.n_runs} runs (retries and failures "
                             "included)")]
    return ['<dl class="facts">'] + [f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows] + ["</dl>"]


def _num(v, fmt: str) -> str:
    return "" if v is None or pd.isna(v) else format(v, fmt)


def _cells_html(cells: pd.DataFrame, base: str) -> list[str]:
    e = html.escape
    out = ['<table class="cells">', "<thead><tr><th>cell</th><th>cell_key</th><th>state</th><th>error (%)</th>"
           "<th>steps/s</th><th>runs</th><th>MLflow</th></tr></thead>", "<tbody>"]
    for c in cells.to_dict("records"):
        has_run = isinstance(c["run_id"], str) and isinstance(c["experiment_id"], str)
        link = f'<a href="{e(run_url(base, c["experiment_id"], c["run_id"]))}">run</a>' if has_run else ""
        out.append(f"<tr><td>{e(str(c['run_name']))}</td><td><code>{e(c['cell_key'])}</code></td>"
                   f'<td class="state-{e(c["state"])}">{e(c["state"])}</td><td>{_num(c["error"], ".2f")}</td>'
                   f"<td>{_num(c['steps_per_s'], '.1f')}</td><td>{c['n_runs']}</td><td>{link}</td></tr>")
        if isinstance(c["failure_reason"], str) and c["state"] != "finished":
            out.append(f'<tr><td></td><td colspan="6" class="reason">{e(c["failure_reason"])}</td></tr>')
    return out + ["</tbody>", "</table>"]


def _configs_html(spec: Spec | None) -> list[str]:
    e = html.escape
    if spec is None:
        return ["<p>No spec given (a sweep name only): pass the spec file to see the configs.</p>"]
    base, diffs = config_diffs(spec)
    out = ["<h3>Base config (resolved: every field a cell starts from)</h3>",
           f'<pre class="config">{e(yaml.safe_dump(base, sort_keys=False))}</pre>',
           "<h3>Each variant against the full method (same labels and seed)</h3>",
           '<table class="diffs"><thead><tr><th>variant</th><th>changes</th></tr></thead><tbody>']
    for variant, d in diffs.items():
        text = ", ".join(f"{k}: {v}" for k, v in d.items()) or "(the full method)"
        out.append(f"<tr><td>{e(variant)}</td><td>{e(text)}</td></tr>")
    return out + ["</tbody></table>"]


def _links(src: Source, cells: pd.DataFrame, base: str, local: bool, views: dict) -> list[str]:
    """The nav bar: each sweep's saved MLflow views, each experiment's runs table, and either the
    compare view of all runs (a tracking server) or where the local links open."""
    e = html.escape
    run_ids = [r for r in cells["run_id"] if isinstance(r, str)]
    exp_ids = sorted({x for x in cells["experiment_id"] if isinstance(x, str)})
    several = len(src.sources()) > 1
    links = [f'<a href="{e(mlflow_view.view_url(experiment_url(base, x), key))}">MLflow: '
             f"{e(sweep + ': ') if several else ''}{mlflow_view.TITLES[kind]}</a>"
             for sweep, by_exp in views.items() for x in exp_ids for kind, key in by_exp.get(x, {}).items()]
    links += [f'<a href="{e(experiment_url(base, x))}">MLflow runs table (experiment {e(x)})</a>' for x in exp_ids]
    if not local and run_ids:
        links.append(f'<a href="{e(compare_url(base, run_ids, exp_ids))}">compare all {len(run_ids)} runs</a>')
    elif run_ids:
        links.append(f"<span>(links open in <code>mixmatch ui</code> at {e(base)}; for "
                     "<code>mixmatch ui --port P</code>, rebuild this page with "
                     "<code>mixmatch report ... --ui-port P</code>)</span>")
    return links


def render(src: Source, table: Table, figures: list[Path], uri: str, queue: dict | None = None,
           views: dict[str, dict[str, dict[str, str]]] | None = None, ui_port: int = mlflow_view.UI_PORT) -> str:
    """The report page of a built table (and the PNG figures plot.py drew from it); `views`:
    sweep -> experiment id -> the sweep's saved MLflow views there (mlflow_view.saved_views);
    `ui_port`: where `mixmatch ui` serves a local store."""
    e = html.escape
    cells = cell_states(table, queue)
    title = f"Sweep{'s' if len(src.sources()) > 1 else ''} {src.sweep}"
    counts = cells["state"].value_counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    lead = " · ".join([p.spec.description for p in src.sources() if p.spec is not None and p.spec.description]
                      + [f"{len(cells)} cells: {summary}"])
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>\n{REPORT_CSS}\n</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>",
           f'<p class="lead">{e(lead)}</p>',
           "<nav>" + "".join(_links(src, cells, ui_base(uri, ui_port), not is_server(uri), views or {})) + "</nav>"]
    out += ["<h2>Provenance</h2>"] + _facts_html(src, table, facts(table), uri)
    out += html_body(table, level=2)
    if figures:
        out += ["<h2>Plots</h2>"] + [_img(p) for p in figures]
    out += ["<h2>Cells</h2>"] + _cells_html(cells, ui_base(uri, ui_port))
    out += ["<h2>Configs</h2>"]
    for part in src.sources():
        out += ([f"<h3>Sweep {e(part.sweep)}</h3>"] if len(src.sources()) > 1 else []) + _configs_html(part.spec)
    return "\n".join(out + ["</body>", "</html>"]) + "\n"


# ---- files ---------------------------------------------------------------------------------------
def write_report(src: Source, table: Table, out_dir, figures: list[Path], states: dict | None,
                 ui_port: int = mlflow_view.UI_PORT) -> Path:
    path = Path(out_dir) / f"{file_stem(src.sweep)}_report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    exp_ids = sorted(table.runs["experiment_id"].dropna().unique())
    views = {p.sweep: mlflow_view.saved_views(p.sweep, exp_ids) for p in src.sources()}
    path.write_text(render(src, table, [p for p in figures if p.suffix == ".png"], tracking_uri(), states, views,
                           ui_port), encoding="utf-8")
    return path


def export_all(spec: Spec, cells: list[Config], out_dir, parent_run_id: str | None = None,
               states: dict | None = None) -> list[Path]:
    """Tables (every format), plots and the report of the spec's sweep with `cells` planned, into
    out_dir; with `parent_run_id`, also logged to the sweep's parent run (folders tables, plots,
    report). `states`: the sweep storage's cell states, if known."""
    src = source_of_spec(spec, cells, spec.experiment)
    table = table_of(src, states=states)
    tables, plots = write_table(table, out_dir, FORMATS), plot_table(table, out_dir)
    report = write_report(src, table, out_dir, plots, states)
    for paths, folder in ((tables, "tables"), (plots, "plots"), ([report], "report")):
        log_artifacts(paths, parent_run_id, folder)
    return tables + plots + [report]


def report_of(sweeps_or_specs: list[str], out_dir, experiment: str | None = None, storage: str | None = None,
              ui_port: int = mlflow_view.UI_PORT) -> Path:
    """`mixmatch report`: the page of one or more sweeps, each given by its spec or its name
    (then with the spec its parent run logged, for the configs, the command and the notes),
    figures embedded."""
    src = load_sources(sweeps_or_specs, experiment)
    for part in src.sources():
        part.spec = part.spec or spec_from_parent_run(part)
    states = storage_states(src, storage)
    table = table_of(src, states=states)
    with tempfile.TemporaryDirectory() as figures:      # embedded: drawn here, one file comes out
        return write_report(src, table, out_dir, plot_table(table, figures), states, ui_port)
