"""The trainer's commands: `mixmatch train` and `mixmatch ui`.

Owns: argument parsing for one training run; the user-error contract every `mixmatch` command
follows (`die`, `ArgumentParser`, `user_errors`: one line on stderr with a non-zero exit, never
a traceback); and starting the MLflow UI on the configured store, bound to 127.0.0.1 unless
asked otherwise, with the URL of an experiment's runs table. The `mixmatch` console entry
(sweeps/cli.py) dispatches here for `train` and `ui`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .config import ConfigError, help_text, load_config, load_yaml

EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1


def die(msg: str, code: int = EXIT_USER_ERROR) -> None:
    """Exit with one `mixmatch: error: MSG` line on stderr (the user-error contract)."""
    print(f"mixmatch: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


@contextlib.contextmanager
def user_errors(*more: type[BaseException], out: str | None = None):
    """The user-error contract of every command, written once: inside this block a ConfigError,
    a TrackingError or one of `more` (e.g. StorageError) becomes one `mixmatch: error:` line
    and exit code 2; so does an error from MLflow (its first line) and, with `out` (the folder a
    command writes into), an OSError naming the file it could not write."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a user error
        line = _user_error_line(e, more, out)
        if line is None:
            raise
        die(line)


def _user_error_line(e: Exception, more: tuple, out: str | None) -> str | None:
    # Only loaded modules are asked: an exception of a module never imported cannot have been
    # raised, and importing mlflow (seconds) just to check would slow every command down.
    tracking, mlflow_exc = sys.modules.get("mixmatch_core.tracking"), sys.modules.get("mlflow.exceptions")
    if isinstance(e, (ConfigError, *more)) or (tracking and isinstance(e, tracking.TrackingError)):
        return str(e)
    if mlflow_exc and isinstance(e, mlflow_exc.MlflowException):
        return f"MLflow: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
    if out is not None and isinstance(e, OSError):
        return f"out: cannot write '{getattr(e, 'filename', None) or out}' ({e.strerror})"
    return None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error contract: usage errors are one `mixmatch: error:` line
    and exit code 2. Shared by every `mixmatch` subcommand (sweeps/ uses it too)."""

    def error(self, message: str) -> None:  # argparse's own errors: one line too
        die(f"{self.prog}: {message}")


def train_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="mixmatch train", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Train one MixMatch (or supervised) run, tracked in MLflow; "
                            "re-running the same command resumes it from its checkpoint.",
                epilog=help_text())
    p.add_argument("--config", help="YAML file of config fields (key: value)")
    p.add_argument("--restart", action="store_true",
                   help="discard this run's checkpoint (e.g. a corrupt one) and start over")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see below)")
    args = p.parse_args(argv)

    from .tracking import RunTracker, TrackingError, check_reachable
    from .train import CheckpointError, TrainingFailed, train
    try:
        cfg = load_config(args.config, args.overrides)
        tracker = None
        if not args.no_tracking:
            check_reachable()
            tracker = RunTracker(cfg)
        result = train(cfg, tracker=tracker, restart=args.restart)
    except (ConfigError, TrackingError, CheckpointError) as e:
        die(str(e))
    except TrainingFailed as e:
        die(f"run {cfg.run_name} FAILED: {e}", EXIT_RUN_FAILED)
    except KeyboardInterrupt:
        die("interrupted; re-run the same command to resume from the last checkpoint", 130)
    m = result.metrics
    print(f"{cfg.run_name} [{cfg.cell_key}] {result.status}: error {m['error']:.2f}% "
          f"(median of last {min(cfg.median_of, len(result.history))} evals; last {m['error_last']:.2f}%, "
          f"best {m['error_best']:.2f}% [test-selected])"
          + (f", val {m['val_error']:.2f}%" if "val_error" in m else "")
          + (f", {result.steps_per_s:.1f} steps/s" if result.steps_per_s else "")
          + (f", mlflow run {result.run_id}" if result.run_id else ""))
    return 0


def ui_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="mixmatch ui", description="Start the MLflow UI on the configured tracking store and "
                       "print (and, with a display, open) the URL of an experiment's runs table.")
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT_OR_SPEC",
                   help="MLflow experiment name, or a sweep/search spec (default: the experiment with the newest run)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    args = p.parse_args(argv)
    from .tracking import tracking_uri
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
    from .tracking import client
    if experiment and experiment.endswith((".yaml", ".yml")):
        raw = load_yaml(experiment)
        experiment = str(raw.get("experiment") or (raw.get("base") or {}).get("experiment") or "mixmatch")
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
