"""Benchmark: build the table of a 2,000-cell sweep from a SQLite MLflow store (target < 10 s).

Owns: seeding a throw-away store with a realistic sweep (a parent run, cell runs with the
trainer's tags, every config field as a param, the final metrics and a short `test_error`
history; some cells failed, some re-run) and timing `load_runs` + `build_table` + the
renderers, as `mixmatch table` does them.

    python -m benchmarks.table_store [--runs 2000] [--history 20] [--keep DIR] [--via-client] [--repeat 3]

Seeding: through MLflow's public client each run costs three store transactions (create,
log_batch, set_terminated), 30-100 ms per run on SQLite on this machine, i.e. minutes for
2,000 runs. By default the rows are therefore inserted into the tables of MLflow's own
SQLAlchemy models (the tables the client writes) in one transaction; `--via-client` uses the
public API instead (both give the same table for a 100-run store). Only the seeding differs:
the timed part reads through the public API either way.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

SWEEP = "bench"
EXPERIMENT = "mixmatch-bench"
VARIANTS = ("mixmatch", "k1", "k3", "k4", "no_sharpen", "ema_guess", "no_mixup", "mixup_labeled_only",
            "mixup_unlabeled_only", "mixup_separate")
LABELS = (250, 500, 1000, 2000, 4000)


def plan(n_runs: int):
    """n_runs cells: 10 variants x 5 label counts x as many seeds as needed (cifar10)."""
    from mixmatch_core.config import resolve
    seeds = -(-n_runs // (len(VARIANTS) * len(LABELS)))
    cells = [resolve({"dataset": "cifar10", "variant": v, "n_labeled": n, "seed": s, "experiment": EXPERIMENT})
             for s in range(1, seeds + 1) for v in VARIANTS for n in LABELS]
    return cells[:n_runs]


def fake_run(cfg, i: int, rng: random.Random, history: int) -> dict:
    """One run's status, tags and metrics: every 25th cell failed, every 50th run twice."""
    base = {"mixmatch": 11.0, "k1": 17.0, "no_sharpen": 27.0, "no_mixup": 39.0}.get(cfg.variant, 12.0)
    err = base * (250 / cfg.n_labeled) ** 0.3 + rng.gauss(0, 0.5)
    failed = i % 25 == 7
    metrics = {} if failed else {"error": err, "error_last": err + 0.1, "error_best": err - 0.3,
                                 "error_raw": err + 0.8}
    curve = [(s * 1024, err + 40 * 0.8 ** s) for s in range(1, history + 1)]
    return {"status": "FAILED" if failed else "FINISHED", "metrics": metrics, "curve": curve,
            "reason": "RuntimeError: CUDA out of memory" if failed else None}


def tags_of(cfg, parent: str, reason: str | None) -> dict:
    t = {"sweep": SWEEP, "mixmatch.role": "cell", "dataset": cfg.dataset, "n_labeled": str(cfg.n_labeled),
         "seed": str(cfg.seed), "method": cfg.method, "variant": cfg.variant, "cell_key": cfg.cell_key,
         "mlflow.parentRunId": parent, "mlflow.runName": cfg.run_name, "code_version": "bench"}
    if reason:
        t["failure_reason"] = reason
    return t


def seed_orm(store_uri: str, cells, history: int) -> int:
    """Insert everything in one transaction: executemany over MLflow's SQLAlchemy tables."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from mixmatch_core.tracking import client, experiment_id
    exp = experiment_id(EXPERIMENT)
    parent = client().create_run(exp, run_name=SWEEP, tags={"sweep": SWEEP, "mixmatch.role": "sweep"}).info.run_id
    art = client().get_experiment(exp).artifact_location
    rng, now = random.Random(0), int(time.time() * 1000)
    rows: dict = {SqlRun: [], SqlTag: [], SqlParam: [], SqlMetric: [], SqlLatestMetric: []}
    for i, cfg in enumerate(cells):
        for _attempt in range(2 if i % 50 == 3 else 1):   # every 50th cell re-run
            r = fake_run(cfg, i, rng, history)
            run_id, t0 = uuid.uuid4().hex, now + 10 * len(rows[SqlRun])
            rows[SqlRun].append(dict(run_uuid=run_id, name=cfg.run_name, experiment_id=int(exp), user_id="bench",
                                     status=r["status"], start_time=t0, end_time=t0 + 5, source_type="LOCAL",
                                     source_name="", entry_point_name="", source_version="",
                                     lifecycle_stage="active", artifact_uri=f"{art}/{run_id}/artifacts"))
            tags = tags_of(cfg, parent, r["reason"])
            rows[SqlTag] += [dict(run_uuid=run_id, key=k, value=v) for k, v in tags.items()]
            rows[SqlParam] += [dict(run_uuid=run_id, key=k, value=str(v)) for k, v in cfg.to_dict().items()]
            points = [(k, v, 0) for k, v in r["metrics"].items()] + [("test_error", v, s) for s, v in r["curve"]]
            latest = {k: (v, s) for k, v, s in points}      # history is in step order: the last wins
            rows[SqlMetric] += [dict(run_uuid=run_id, key=k, value=v, timestamp=t0, step=s, is_nan=False)
                                for k, v, s in points]
            rows[SqlLatestMetric] += [dict(run_uuid=run_id, key=k, value=v, timestamp=t0, step=s, is_nan=False)
                                      for k, (v, s) in latest.items()]
    store = SqlAlchemyStore(store_uri, art)
    with store.ManagedSessionMaker() as session:
        for model, data in rows.items():
            session.execute(model.__table__.insert(), data)
    return len(rows[SqlRun])


def seed_client(cells, history: int) -> int:
    """The public API: three store transactions per run (slow on SQLite, see the docstring)."""
    from mlflow.entities import Metric, Param

    from mixmatch_core.tracking import client, experiment_id
    c = client()
    exp = experiment_id(EXPERIMENT, c)
    parent = c.create_run(exp, run_name=SWEEP, tags={"sweep": SWEEP, "mixmatch.role": "sweep"}).info.run_id
    rng, n = random.Random(0), 0
    for i, cfg in enumerate(cells):
        for _attempt in range(2 if i % 50 == 3 else 1):   # every 50th cell re-run
            r = fake_run(cfg, i, rng, history)
            run_id = c.create_run(exp, run_name=cfg.run_name, tags=tags_of(cfg, parent, r["reason"])).info.run_id
            ts = int(time.time() * 1000)
            metrics = [Metric(k, v, ts, 0) for k, v in r["metrics"].items()]
            metrics += [Metric("test_error", v, ts, s) for s, v in r["curve"]]
            c.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in cfg.to_dict().items()])
            c.set_terminated(run_id, r["status"])
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.table_store", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2000, help="cells in the sweep (default 2000)")
    p.add_argument("--history", type=int, default=20, help="test_error points per run (default 20)")
    p.add_argument("--keep", metavar="DIR",
                   help="build the store in DIR and keep it; an existing one there is reused (default: a temp dir)")
    p.add_argument("--via-client", action="store_true", help="seed through MlflowClient (minutes)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions; the verdict uses the median (default 3)")
    args = p.parse_args(argv)

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mixmatch-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root.resolve()}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        from mixmatch_core.tracking import client
        t = time.perf_counter()
        cells = plan(args.runs)
        if client().get_experiment_by_name(EXPERIMENT) is not None:
            print(f"reusing the sweep in {uri}")
        else:
            n = seed_client(cells, args.history) if args.via_client else seed_orm(uri, cells, args.history)
            print(f"seeded {n} runs ({len(cells)} cells) into {uri} in {time.perf_counter() - t:.1f} s")

        from sweeps import render
        from sweeps import table as tb
        from sweeps.runs import load_runs
        import scipy.stats  # noqa: F401 - imported once by any command; not part of the table's cost
        totals = []
        for i in range(args.repeat):
            t0 = time.perf_counter()
            runs = load_runs(SWEEP, EXPERIMENT)
            t1 = time.perf_counter()
            table = tb.build_table(runs, cells, sweep=SWEEP)
            t2 = time.perf_counter()
            texts = [render.to_markdown(table), render.to_latex(table), render.to_html(table),
                     render.runs_csv(table), render.cells_csv(table)]
            t3 = time.perf_counter()
            totals.append(t3 - t0)
            print(f"[{i + 1}] load_runs {t1 - t0:.2f} s ({len(runs)} runs), build_table {t2 - t1:.2f} s, "
                  f"render {t3 - t2:.2f} s ({sum(map(len, texts)) // 1024} KiB): {t3 - t0:.2f} s "
                  f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        median = sorted(totals)[len(totals) // 2]
        print(f"median {median:.2f} s, best {min(totals):.2f} s (target < 10 s): {'OK' if median < 10 else 'TOO SLOW'}")
        return 0 if median < 10 else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
