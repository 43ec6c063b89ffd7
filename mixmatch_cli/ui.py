"""`mixmatch ui`: the MLflow UI on the configured tracking store, opened on an experiment's runs table.

Owns: starting `mlflow ui` bound to 127.0.0.1 unless asked otherwise (or, with a tracking
server, only printing its URL), the URL of the experiment's runs table, and opening it in a
browser where there is a display.
"""

from __future__ import annotations

import os
import sys

from mixmatch_core.config import ConfigError, load_yaml

from .errors import ArgumentParser, user_errors


def spec_experiment(path: str) -> str:
    """The MLflow experiment of a sweep or search spec: its `experiment`, else its base's."""
    raw = load_yaml(path)
    return str(raw.get("experiment") or (raw.get("base") or {}).get("experiment") or "mixmatch")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch ui", description="Start the MLflow UI on the configured tracking store and "
                       "print (and, with a display, open) the URL of an experiment's runs table.")
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT_OR_SPEC",
                   help="MLflow experiment name, or a sweep/search spec (default: the experiment with the newest run)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from mixmatch_core.tracking import tracking_uri   # lazy: MLflow takes seconds to import
    uri = tracking_uri()
    server = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if server else f"http://{args.host}:{args.port}"
    with user_errors():
        url = runs_table_url(base, args.experiment, uri)
    print(f"MLflow runs table: {url}" + ("" if server else f"  (store {uri}; Ctrl-C to stop)"),
          file=sys.stderr, flush=True)
    if not args.no_browser:
        open_when_up(url, f"{base}/health")
    if server:
        return 0            # the server is already up: nothing to start
    # One worker is plenty for a local UI (MLflow's default of 4 takes much longer to start).
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    # exec: the UI becomes this process, so signals (Ctrl-C, SIGTERM) reach it directly and no
    # server is left orphaned.
    os.execv(sys.executable, cmd)
    return 0  # not reached


def runs_table_url(base: str, experiment: str | None, uri: str) -> str:
    """The runs table of the experiment (named, a spec's, else the one with the newest run) in
    MLflow 3's model-training view: `#/experiments/ID/runs?workflowType=machine_learning`
    (without workflowType MLflow 3.x opens its GenAI overview); the UI's home when the store
    holds no such experiment yet."""
    from mixmatch_core.tracking import client   # lazy: MLflow takes seconds to import
    if experiment and experiment.endswith((".yaml", ".yml")):
        experiment = spec_experiment(experiment)
    exp_id = None
    if uri.startswith(("http://", "https://")) or not uri.startswith("sqlite:///") or \
            os.path.exists(uri[len("sqlite:///"):]):
        c = client()
        if experiment:
            exp = c.get_experiment_by_name(experiment)
            if exp is None:
                raise ConfigError(f"experiment: no MLflow experiment named '{experiment}' in {uri}")
            exp_id = exp.experiment_id
        else:
            newest = c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=1,
                                   order_by=["attributes.start_time DESC"])
            exp_id = newest[0].info.experiment_id if newest else None
    return f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning" if exp_id else f"{base}/"


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
