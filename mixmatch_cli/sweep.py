"""`mixmatch sweep SPEC`: every cell of a sweep spec, trained by local workers and tracked in MLflow.

Owns: the command's arguments and their checks (one line before anything starts), `--dry-run`
(which makes the launch's checks of the cells' device and data too, without downloading),
and the order of a launch: a relaunch of a finished sweep replays its close (sweeps.summary,
which needs neither MLflow nor torch), any other launch publishes the cells, starts the local
workers and closes the sweep (sweeps.runner).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from mixmatch_core.config import Config, ConfigError, validate
from sweeps import gpus, store, summary
from sweeps.cost import device_type, dry_run
from sweeps.spec import Spec, load_spec, select

from .errors import ArgumentParser, die, user_errors
from .options import add_gpu_arguments


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch sweep", description="Train every cell of a sweep spec, tracked in MLflow; "
                "relaunching the same command skips finished cells and resumes interrupted ones.")
    p.add_argument("spec", help="sweep spec YAML (see experiments/)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per GPU; on CPU one per core, at most 4); "
                        "0 = only publish the cells for `mixmatch worker`s elsewhere")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their estimated cost; run nothing")
    p.add_argument("--only", help="run only cells whose run name (glob) or cell_key prefix matches; comma = or")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///optuna/sweep-NAME.db, NAME the "
                                     "spec's name)")
    p.add_argument("--device", default=None, help="device for every cell (default: the spec's, else auto)")
    p.add_argument("--heartbeat-seconds", type=int, default=None, help="worker heartbeat (stale after 3x)")
    p.add_argument("--no-table", action="store_true", help="skip the closing error table, plots and report")
    add_gpu_arguments(p)
    return p


@dataclass
class Launch:
    """What the arguments ask for, checked: the spec, its selected cells (resolved once), the
    cells' device, the pinned worker slots (--workers-per-gpu, else None) and the storage."""
    spec: Spec
    cells: list[Config]
    device: str
    slots: list[gpus.Slot] | None
    url: str

    def local_runs(self, states: dict) -> list[Config]:
        """The cells local workers would train, as they run them (on the launch's device), for the
        launch's checks: every cell but those the sweep's queue (`states`) has done."""
        return [dataclasses.replace(c, device=self.device) for c in self.cells
                if getattr(states.get(c.cell_key), "state", None) != "done"]


def plan_launch(args) -> Launch:
    spec = load_spec(args.spec)
    cells = select(spec.cells(), args.only)
    if not cells:
        raise ConfigError(f"--only '{args.only}' matches none of the {len(spec.cells())} cells")
    device = args.device or spec.base.get("device", "auto")
    if args.device:
        validate(dataclasses.replace(cells[0], device=args.device))     # one line: the allowed devices
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    slots = gpus.pinned_slots(args.workers_per_gpu, args.gpus)     # N pinned workers per GPU
    if slots is not None and args.workers is not None:
        raise ConfigError("--workers-per-gpu: give --workers or --workers-per-gpu, not both")
    return Launch(spec, cells, device, slots, args.storage or store.default_sweep_storage(spec.name))


def launch_checks(run: Launch, states: dict) -> tuple[list[str], str | None]:
    """The checks a launch with local workers makes of the cells' device and data, without
    downloading anything: (notes, the first failure or None). The dry run still lists the cells
    and their cost when the launch would fail here (a GPU spec priced on a machine without one)."""
    from mixmatch_core.train import check_runs    # lazy: torch; the relaunch path must not import it
    try:
        return check_runs(run.local_runs(states), download=False), None
    except ConfigError as e:
        return [], str(e)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    with user_errors(store.StorageError):
        run = plan_launch(args)
        if args.dry_run:
            states = store.known_states(run.url, run.spec.name)
            notes, failure = launch_checks(run, states) if args.workers != 0 else ([], None)
            workers = len(run.slots or gpus.local_slots(run.device, args.workers))
            dry_run(run.spec, run.cells, device_type(run.device), workers or 1, states)
            for line in notes + ([f"a launch here would fail: {failure}"] if failure else []):
                print(f"mixmatch sweep: {line}", file=sys.stderr)
            return 2 if failure else 0
        previous = store.existing_study(run.url, run.spec.name)
        if previous is not None and summary.unchanged_since_last_report(run.spec, previous, run.cells, args.no_table):
            return summary.replay(run.spec, previous, run.cells, run.url, args.no_table)
        # Lazy: the launch (pandas now, MLflow once it publishes), off the fast relaunch path above.
        from sweeps import runner
        runner.check_launch(run.local_runs(store.cell_states(previous) if previous is not None else {}), run.url,
                            local_workers=args.workers != 0)
        storage = store.open_storage(run.url, args.heartbeat_seconds, max_retry=run.spec.retries)
    study, parent = runner.publish_sweep(run.spec, run.cells, storage, run.url)
    pending = store.counts(study)
    if args.workers == 0:
        print(f"cells published; start workers with: mixmatch worker --storage {run.url} --sweep {run.spec.name}",
              file=sys.stderr)
        return 0
    if pending["waiting"] or pending["running"]:
        slots = run.slots or gpus.local_slots(run.device, args.workers)
        try:
            runner.run_local_workers(run.spec, run.url, slots, run.device, args.heartbeat_seconds, study, run.cells)
        except KeyboardInterrupt:
            die("interrupted; relaunch the same command to resume (finished cells are kept)", 130)
    return runner.finish(run.spec, study, parent, run.cells, no_table=args.no_table)
