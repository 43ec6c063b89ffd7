"""`mixmatch search SPEC`: an Optuna hyperparameter search with pruning, resumable by re-running.

Owns the command's arguments (they override the spec's trials and timeout), its checks (one
line before anything starts), and, with --workers-per-gpu, re-running itself as pinned search
processes that share the study before it writes the study's outputs once. The spec is
sweeps.search_spec's, the study sweeps.search's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixmatch_core.config import ConfigError
from mixmatch_core.tracking import check_reachable, client
from sweeps import gpus, search, search_spec
from sweeps.search_spec import TEST_OBJECTIVE_WARNING, SearchSpec, load_search_spec
from sweeps.spec import file_stem
from sweeps.store import StorageError, check_storage_url, default_storage, open_storage

from .errors import EXIT_RUN_FAILED, ArgumentParser, die, user_errors
from .options import add_gpu_arguments, positive


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch search", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Optuna hyperparameter search with pruning; every trial is an MLflow run "
                            "under one parent run per study. Re-running the same command resumes the study.",
                epilog="search spec:" + search_spec.__doc__.split("A spec looks like:", 1)[1])
    p.add_argument("spec", metavar="SPEC", help="search spec YAML (see below)")
    p.add_argument("--trials", type=positive(int),
                   help="total finished (COMPLETE + PRUNED) trials of the study, counting earlier runs "
                        "and other workers (default: the spec's trials)")
    p.add_argument("--timeout", type=positive(float), metavar="S",
                   help="stop starting new trials after S seconds of this run (default: the spec's)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage (default sqlite:///optuna/STUDY.db; postgresql://... to share with workers)")
    p.add_argument("--study", metavar="NAME", help="study name (default: the spec's name)")
    p.add_argument("--heartbeat-seconds", type=positive(int), metavar="S",
                   help="trial heartbeat; a trial silent for 3x this is failed and retried (default 30)")
    p.add_argument("--out", metavar="DIR", help="where best.yaml and the plots go (default optuna/STUDY)")
    add_gpu_arguments(p)
    p.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)   # set by --workers-per-gpu
    return p


def load(args) -> tuple[SearchSpec, str, str]:
    """The spec with the command's overrides, the study's name and its storage URL, checked."""
    spec = load_search_spec(args.spec)
    if args.trials is not None:
        spec.trials = args.trials
    if args.timeout is not None:
        spec.timeout_seconds = args.timeout
    study_name = args.study if args.study is not None else spec.name
    if not study_name.strip():
        raise ConfigError("--study: the study name must not be empty")
    storage_url = args.storage or default_storage(study_name)
    check_storage_url(storage_url)
    return spec, study_name, storage_url


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    with user_errors(StorageError):
        spec, study_name, storage_url = load(args)
        out_dir = Path(args.out or Path("optuna") / file_stem(study_name))
        if spec.objective == "test_error":
            print(TEST_OBJECTIVE_WARNING, file=sys.stderr)
        slots = gpus.pinned_slots(args.workers_per_gpu, args.gpus)
        check_reachable()
        if slots is not None:   # N pinned search processes per GPU share the study; then the outputs
            # Optuna's and MLflow's tables, once: N processes creating them at once collide
            open_storage(storage_url)
            client().search_experiments(max_results=1)
            child = gpus.strip_options(argv, {"--workers-per-gpu": True, "--gpus": True})
            gpus.run_pinned(slots, lambda s: [sys.executable, "-m", "mixmatch_cli", "search", *child, "--as-worker"],
                            log=lambda m: print(m, file=sys.stderr, flush=True))
        role = "worker" if args.as_worker else "finish" if slots is not None else "all"
        try:
            return search.run_search(spec, study_name, storage_url, out_dir, args.heartbeat_seconds, role=role)
        except search.SearchInterrupted:
            die(f"interrupted; the trial's MLflow run ended KILLED. Re-run the same command to resume study "
                f"'{study_name}' (the interrupted trial resumes from its checkpoint)", 130)
        except search.NoTrialCompleted as e:
            die(str(e), EXIT_RUN_FAILED)
