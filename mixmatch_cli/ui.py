"""`mixmatch ui`: the MLflow UI on the configured tracking store, opened on an experiment's runs table.

Owns: starting `mlflow ui` bound to 127.0.0.1 unless asked otherwise (or, with a tracking
server, only printing its URL), the URL of the experiment's runs table (opened on the sweep's
saved view, sweeps/mlflow_view.py, where there is one), and opening it in a browser where
there is a display.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mixmatch_core.config import ConfigError, load_yaml
from sweeps import mlflow_view

from .errors import ArgumentParser, user_errors


def spec_experiment(path: str) -> str:
    """The MLflow experiment of a sweep or search spec: its `experiment`, else its base's."""
    raw = load_yaml(path, "spec")
    return str(raw.get("experiment") or (raw.get("base") or {}).get("experiment") or "mixmatch")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch ui", description="Start the MLflow UI on the configured tracking store and "
                       "print (and, with a display, open) the URL of an experiment's runs table.")
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT_OR_SPEC",
                   help="MLflow experiment name, or a sweep/search spec (default: the experiment with the newest run)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=mlflow_view.UI_PORT,
                   help=f"default {mlflow_view.UI_PORT}; a report's MLflow links follow `mixmatch report --ui-port`")
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from mixmatch_core.tracking import tracking_uri   # lazy: MLflow takes seconds to import
    uri = tracking_uri()
    server = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if server else f"http://{args.host}:{args.port}"
    with user_errors():
        url, more = runs_table_urls(base, args.experiment, uri)
    print(f"MLflow runs table: {url}" + ("" if server else f"  (store {uri}; Ctrl-C to stop)"),
          file=sys.stderr, flush=True)
    for what, other in more:
        print(f"  {what}: {other}", file=sys.stderr, flush=True)
    if not args.no_browser:
        open_when_up(url, f"{base}/health")
    if server:
        return 0            # the server is already up: nothing to start
    # One worker is plenty for a local UI (MLflow's default of 4 takes much longer to start).
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    # Nor MLflow's background job runner (its GenAI evaluation jobs: huey processes that each
    # import MLflow, ~20 s of CPU on 2 cores): the runs table needs none. Kept where set.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    # exec: the UI becomes this process, so signals (Ctrl-C, SIGTERM) reach it directly and no
    # server is left orphaned.
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


def runs_table_urls(base: str, experiment: str | None, uri: str) -> tuple[str, list[tuple[str, str]]]:
    """The runs table of the experiment (named, a spec's, else the one with the newest run) in
    MLflow 3's model-training view: `#/experiments/ID/runs?workflowType=machine_learning`
    (without workflowType MLflow 3.x opens its GenAI overview), opened on its sweep's cells view
    (the spec's sweep, else the newest run's) where `mixmatch sweep` saved one; and the other
    views of that sweep, as (what, url). The UI's home when the store holds no run yet; a local
    store that does not exist is a one-line error (starting the UI would create an empty one)."""
    from mixmatch_core.tracking import client, store_exists   # lazy: MLflow takes seconds to import
    sweep = None
    if experiment and experiment.endswith((".yaml", ".yml")):
        sweep = spec_sweep(experiment)
        experiment = spec_experiment(experiment)
    if not store_exists(uri):
        raise ConfigError(f"no MLflow store at {uri}: nothing was tracked from this folder; start from the "
                          "folder you ran the sweeps in, or set MLFLOW_TRACKING_URI")
    c = client()
    if experiment:
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            raise ConfigError(f"experiment: no MLflow experiment named '{experiment}' in {uri}")
        exp_ids = [exp.experiment_id]
    else:
        exp_ids = [e.experiment_id for e in c.search_experiments()]
    newest = c.search_runs(exp_ids, max_results=1, order_by=["attributes.start_time DESC"]) if exp_ids else []
    if not newest and not experiment:
        return f"{base}/", []
    exp_id = exp_ids[0] if experiment else newest[0].info.experiment_id
    url = f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    sweep = sweep or (newest[0].data.tags.get("sweep") if newest else None)
    keys = mlflow_view.saved_keys(c.get_experiment(exp_id).tags, sweep) if sweep else {}
    more = [(mlflow_view.TITLES[kind], mlflow_view.view_url(url, key)) for kind, key in keys.items() if kind != "cells"]
    return (mlflow_view.view_url(url, keys["cells"]) if "cells" in keys else url), more


def spec_sweep(path: str) -> str:
    """The sweep of a sweep spec: its `name`, else the file's stem (a search spec names none)."""
    return str(load_yaml(path, "spec").get("name") or Path(path).stem)


OPEN_WHEN_UP = """
import sys, time, urllib.request, webbrowser
url, health = sys.argv[1:]
for _ in range(120):                  # the UI takes a few seconds to start
    try:
        urllib.request.urlopen(health, timeout=2).read()
        break
    except Exception:
        time.sleep(0.5)
try:
    webbrowser.open(url)
except Exception:
    pass
"""


def open_when_up(url: str, health: str) -> None:
    """Open `url` in the user's browser once the UI answers, from a detached helper process
    (this process becomes the UI); only where there is a display, and never failing."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return      # a headless machine (ssh, a cluster node): the printed URL is all we can give
    try:
        import subprocess
        subprocess.Popen([sys.executable, "-c", OPEN_WHEN_UP, url, health], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        pass
