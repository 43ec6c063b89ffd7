"""The MLflow UI's saved views of a sweep: the runs table opens on the sweep's cells.

Owns: the two views written for every sweep into its experiment (the cells, one row each with
error, variant, method, n_labeled and seed, sorted by n_labeled then variant in the table's row
order; and the mean error per (n_labeled, variant), as MLflow's group-by), the `table_order` tag
that sorts a cell's run into place, the `error_mean` metric the means view shows (`write_means`,
at the sweep's end), and the view's URL. Nothing here trains.

Why `error_mean`: MLflow's group-by averages in the browser (sum / count) and prints every digit,
so the average of the seeds' errors shows binary-float tails (90.14999999999999) that no rounding
of the logged values prevents. So each group's mean over its cells' results (the table's rule:
a cell's newest FINISHED run with an `error`), rounded as the table shows it, is logged as
`error_mean` on one run of the group (its lowest seed's), and the means view averages that one
value: it shows the mean exactly. MLflow's group-by has no std or n: the report's table has them
(the view's name says so).

The format is MLflow 3.17's UI's own (read in mlflow/server/js/build/static/js: the constants
`mlflow.sharedViewState.` and `viewStateShareKey` in main.*.js; the loader in the experiment
page's chunk, 3878.*.js, "Error loading shared view state"; the envelope in 3448.*.js, module
53787; the view's fields in main.*.js, modules 1395 and 57637):
- an experiment tag `mlflow.sharedViewState.<key>` holding the envelope JSON
  `{"name": str, "createdAt": ms, "updatedAt": ms, "state": str}`, where `state` is itself a
  JSON text: the search facets (searchFilter, orderByKey, orderByAsc, startTime,
  lifecycleFilter, datasetsFilter, modelVersionFilter) and the table's UI state
  (selectedColumns, columnOrder, groupBy, groupsExpanded, ...; never runsExpanded: the UI drops
  it from a shared view, so the cells are shown by filtering the parent run away);
- the URL `#/experiments/<id>/runs?viewStateShareKey=<key>`; a URL that also carries one of
  the search facets ignores the view.
The UI lists these views in its saved-views menu (at most 40 per experiment) under their names.

The runs table sorts on the server, by one key, and MLflow compares tags and params as text
("100" < "30"), so each cell run carries `table_order`, e.g. `000000030 000 mixmatch 000001`
(label count, the variant's place among the table's rows, variant, seed), and the views sort by
it. Group rows keep the order of their first run, so the grouped view is in the same order.
"""

from __future__ import annotations

import json
import re
import time

from collections import defaultdict

from mixmatch_core.methods import row_order
from mixmatch_core.tracking import client, experiment_id   # cheap: it imports MLflow only when called

UI_PORT = 5000                                 # `mixmatch ui`'s default port (the report's links)
SHARED_VIEW_TAG = "mlflow.sharedViewState."   # + key: the experiment tag the UI reads a view from
SHARE_KEY_PARAM = "viewStateShareKey"          # the URL parameter that opens it
ORDER_TAG = "table_order"                      # a cell run's sort key in the sweep's views
MAX_TAG_CHARS = 20000                          # MLflow's limit on an experiment tag (and the UI's on a view)
COLUMNS = [("metrics", "error"), ("tags", "variant"), ("tags", "method"), ("tags", "n_labeled"), ("tags", "seed")]
RUN_NAME_COLUMN = "attributes.`Run Name`"      # the grid's run-name column (a group's name in the means view)
GROUP_KEYS = ("n_labeled", "variant")          # the means view's rows, in this order
TITLES = {"cells": "the sweep's cells", "means": "mean error per labels and variant"}   # kind -> what it shows
# The views' names in the UI's menu: what each shows, and where the rest is.
NAMES = {"cells": TITLES["cells"],
         "means": TITLES["means"] + " (error_mean: the table's mean over seeds; std and n: the report's table)"}
MEAN_METRIC = "error_mean"                     # a group's mean error, on one run of the group
MEAN_DECIMALS = 2                              # as the table prints it
ROWS = row_order()                             # the table's row order of variants


def order_value(n_labeled, variant: str, seed) -> str:
    """A cell's `table_order`: text that sorts as (n_labeled as a number, the variant's place
    among the table's rows, variant, seed)."""
    rank = ROWS.index(variant) if variant in ROWS else len(ROWS)
    return f"{int(n_labeled):09d} {rank:03d} {variant} {int(seed):06d}"


def row_tags(cfg) -> dict[str, str]:
    """The tags a sweep cell's MLflow run carries for the sweep's views."""
    return {ORDER_TAG: order_value(cfg.n_labeled, cfg.variant, cfg.seed)}


def view_key(sweep: str, kind: str) -> str:
    """The share key of a sweep's view (`cells` or `means`): stable, so a relaunch rewrites it."""
    return f"sweep-{re.sub(r'[^A-Za-z0-9_-]+', '_', sweep)}-{kind}"


def _quote(value: str) -> str:
    """A string literal of MLflow's search syntax."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def _column(kind: str, key: str) -> str:
    """A column as the UI names it (its canonical sort key): kind.`key`."""
    return f"{kind}.`{key}`"


def cells_state(sweep: str) -> dict:
    """The cells view: the sweep's cell runs (the parent filtered away), our columns, sorted."""
    columns = [_column(k, c) for k, c in COLUMNS]
    return {"searchFilter": f"tags.sweep = {_quote(sweep)} and tags.`mixmatch.role` = 'cell'",
            "orderByKey": _column("tags", ORDER_TAG), "orderByAsc": True,
            "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
            "selectedColumns": columns, "columnOrder": [RUN_NAME_COLUMN, *columns],
            "columnWidths": {RUN_NAME_COLUMN: 300, columns[0]: 170}, "groupBy": None}


def means_state(sweep: str, cells) -> dict:
    """The means view: the cells view grouped by (n_labeled, variant), each group a row with the
    average of its runs' metrics, collapsed; its column is `error_mean` (see the module's
    docstring), its groups in the table's order (the order tag's)."""
    state = cells_state(sweep)
    columns = [_column("metrics", MEAN_METRIC)] + state["selectedColumns"][1:]    # error_mean for error
    state.update(selectedColumns=columns, columnOrder=[RUN_NAME_COLUMN, *columns])
    state["columnWidths"] = {RUN_NAME_COLUMN: 390,      # "Group: n_labeled: 100, variant: supervised"
                             columns[0]: 170}
    state["groupBy"] = {"aggregateFunction": "average",
                        "groupByKeys": [{"mode": "tag", "groupByData": k} for k in GROUP_KEYS]}
    # A group's id is its values, "tag.n_labeled.30,tag.variant.mixmatch"; unlisted groups open.
    groups = {",".join(f"tag.{k}.{getattr(c, k)}" for k in GROUP_KEYS) for c in cells}
    state["groupsExpanded"] = {g: False for g in sorted(groups)}
    return state


def envelope(name: str, state: dict, now_ms: int) -> str:
    """The experiment tag's value: the UI's saved-view envelope around the state's JSON text."""
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms,
                       "state": json.dumps(state, separators=(",", ":"))}, separators=(",", ":"))


def write_views(spec, c=None) -> dict[str, str]:
    """Write (or rewrite) the sweep's two views into its experiment, and tag its cell runs made
    before `table_order` existed; returns kind -> share key."""
    c = c or client()
    exp = experiment_id(spec.experiment, c)
    now = int(time.time() * 1000)
    states = {"cells": cells_state(spec.name), "means": means_state(spec.name, spec.cells())}
    for kind, state in states.items():
        value = envelope(f"{spec.name}: {NAMES[kind]}", state, now)
        if len(value) > MAX_TAG_CHARS:      # thousands of groups: let them open expanded
            value = envelope(f"{spec.name}: {NAMES[kind]}", {**state, "groupsExpanded": {}}, now)
        c.set_experiment_tag(exp, SHARED_VIEW_TAG + view_key(spec.name, kind), value)
    _tag_older_runs(c, exp, spec.name)
    return {kind: view_key(spec.name, kind) for kind in states}


def _tag_older_runs(c, exp: str, sweep: str) -> None:
    """Give the sweep's cell runs whose `table_order` is missing or older than this format their tag."""
    for run in c.search_runs([exp], cells_state(sweep)["searchFilter"], max_results=50000):
        t = run.data.tags
        if {"n_labeled", "variant", "seed"} <= set(t):
            value = order_value(t["n_labeled"], t["variant"], t["seed"])
            if t.get(ORDER_TAG) != value:
                c.set_tag(run.info.run_id, ORDER_TAG, value)


def write_means(spec, c=None) -> dict[tuple[str, str], float]:
    """Log each (n_labeled, variant) group's mean error as `error_mean` on the counted run of its
    lowest seed (and on any run of the group that carries an older mean: MLflow cannot delete a
    metric); returns (n_labeled, variant) -> the mean."""
    c = c or client()
    exp = experiment_id(spec.experiment, c)
    runs = c.search_runs([exp], cells_state(spec.name)["searchFilter"] + " and attributes.status = 'FINISHED'",
                         order_by=["attributes.start_time DESC"], max_results=50000)
    counted: dict[str, object] = {}
    for run in runs:          # newest first: a cell's result is its newest finished run with an error
        if "error" in run.data.metrics and {"cell_key", "n_labeled", "variant", "seed"} <= set(run.data.tags):
            counted.setdefault(run.data.tags["cell_key"], run)
    groups = defaultdict(list)
    for run in counted.values():
        groups[run.data.tags["n_labeled"], run.data.tags["variant"]].append(run)
    means = {}
    for key, members in groups.items():
        means[key] = round(sum(r.data.metrics["error"] for r in members) / len(members), MEAN_DECIMALS)
        carrier = min(members, key=lambda r: int(r.data.tags["seed"]))
        holders = {r.info.run_id: r for r in runs if MEAN_METRIC in r.data.metrics
                   and (r.data.tags.get("n_labeled"), r.data.tags.get("variant")) == key}
        for run in {**holders, carrier.info.run_id: carrier}.values():
            if run.data.metrics.get(MEAN_METRIC) != means[key]:
                c.log_metric(run.info.run_id, MEAN_METRIC, means[key])
    return means


def saved_views(sweep: str, experiment_ids, c=None) -> dict[str, dict[str, str]]:
    """experiment id -> kind -> share key, for the experiments that hold the sweep's views (no
    experiment: no store is opened, so none is created)."""
    if not len(experiment_ids):
        return {}
    c = c or client()
    return {x: keys for x in experiment_ids if (keys := saved_keys(c.get_experiment(x).tags, sweep))}


def saved_keys(experiment_tags: dict[str, str], sweep: str) -> dict[str, str]:
    """kind -> share key of the sweep's views that this experiment holds."""
    keys = {kind: view_key(sweep, kind) for kind in TITLES}
    return {kind: k for kind, k in keys.items() if SHARED_VIEW_TAG + k in experiment_tags}


def view_url(runs_table_url: str, key: str) -> str:
    """The experiment's runs-table URL opening on a saved view."""
    return f"{runs_table_url}{'&' if '?' in runs_table_url else '?'}{SHARE_KEY_PARAM}={key}"
