"""`mixmatch train`: one training run, resumable by re-running the same command.

Owns: the command's arguments and its closing line; the run itself is mixmatch_core.train.
"""

from __future__ import annotations

import argparse

from mixmatch_core.config import FIELDS, ConfigError, help_text, load_config

from .errors import EXIT_RUN_FAILED, ArgumentParser, die

def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch train", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Train one MixMatch (or supervised) run, tracked in MLflow; "
                            "re-running the same command resumes it from its checkpoint.",
                epilog=help_text())
    p.add_argument("--config", help="YAML file of config fields (key: value)")
    p.add_argument("--restart", action="store_true",
                   help="discard this run's checkpoint (e.g. a corrupt one) and start over")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see below)")
    return p


def field_given_as_option(argv: list[str], options: set[str]) -> str | None:
    """The error line for a config field written as an option (`--n_labeled 30`, which argparse
    would only call an unrecognized argument): fields are key=value. None when there is none."""
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        key = name[2:].replace("-", "_")
        if not arg.startswith("--") or name in options or key not in FIELDS:
            continue
        if not eq and i + 1 < len(argv) and "=" not in argv[i + 1] and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
        return (f"mixmatch train: '{name}' is not an option: config fields are given as key=value "
                f"(did you mean {key}={value or 'VALUE'}?)")
    return None


def main(argv: list[str]) -> int:
    parser = build_parser()
    hint = field_given_as_option(argv, set(parser._option_string_actions))
    if hint:
        die(hint)
    args = parser.parse_args(argv)
    # Lazy: torch and MLflow take seconds to import; `--help` and config errors need neither.
    from mixmatch_core.tracking import RunTracker, TrackingError, check_reachable
    from mixmatch_core.train import CheckpointError, TrainingFailed, train
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


