"""Local sweeps: spec validation, dry runs, relaunch safety, and a SIGKILL of the whole sweep."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from mixmatch_core.config import ConfigError
from mixmatch_cli import main
from sweeps.spec import load_spec, select

from mlflow_store import use_store

ROOT = Path(__file__).resolve().parents[1]
TINY_BASE = ("base: {dataset: digits, steps: 30, eval_every: 10, log_every: 10, batch_size: 16, "
             "median_of: 2, device: cpu}\n")


def write_spec(tmp_path, grid="grid: {n_labeled: [50], variant: [mixmatch, supervised], seed: [1, 2]}\n",
               extra=""):
    p = tmp_path / "spec.yaml"
    p.write_text("name: tiny\nexperiment: tiny-exp\n" + TINY_BASE + grid + extra)
    return p


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store):
    """tmp_path as the cwd, with its own copy of an empty MLflow store (MLFLOW_TRACKING_URI)."""
    use_store(monkeypatch, tmp_path, empty_store)
    return tmp_path


def cell_runs(tmp_path, sweep="tiny"):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    df = mlflow.search_runs(experiment_names=["tiny-exp"], filter_string=f"tags.sweep = '{sweep}'")
    return df[df["tags.mixmatch.role"] == "cell"] if len(df) else df


def test_spec_expands_the_cartesian_product(tmp_path):
    spec = load_spec(str(write_spec(tmp_path)))
    cells = spec.cells()
    assert [c.run_name for c in cells] == ["digits-50-s1-mixmatch", "digits-50-s2-mixmatch",
                                           "digits-50-s1-supervised", "digits-50-s2-supervised"]
    assert len({c.cell_key for c in cells}) == 4


def test_grids_are_a_union_without_duplicates(tmp_path):
    spec = load_spec(str(write_spec(tmp_path, "grids:\n  - {variant: [mixmatch, k1]}\n  - {variant: [k1, no_mixup]}\n")))
    assert [c.variant for c in spec.cells()] == ["mixmatch", "k1", "no_mixup"]


def test_spec_variants_are_named_diffs(tmp_path):
    spec = load_spec(str(write_spec(tmp_path, "grid: {variant: [t025]}\n", "variants: {t025: {T: 0.25}}\n")))
    (cell,) = spec.cells()
    assert cell.T == 0.25 and cell.run_name.endswith("-t025")


@pytest.mark.parametrize("text,match", [
    ("colour: red\n", "unknown key"), ("grid: {n_labeled: []}\n", "non-empty list"),
    ("grid: {flavour: [1]}\n", "unknown axis"), ("grid: {variant: [nope]}\n", "variant"),
    ("grid: {n_labeled: [55]}\n", "n_labeled"), ("layout: wide\n", "layout"), ("retries: -1\n", "retries"),
    ("notes: a line\n", "notes"), ("notes: [1, 2]\n", "notes"),
])
def test_bad_specs_fail_in_one_line(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(TINY_BASE + text)
    with pytest.raises(ConfigError, match=match) as e:
        load_spec(str(p))
    assert "\n" not in str(e.value)


def test_spec_notes_are_a_list_of_lines(tmp_path):
    spec = load_spec(str(write_spec(tmp_path, extra="notes:\n  - first line\n  - second line\n")))
    assert spec.notes == ["first line", "second line"]


def test_a_spec_resolves_its_cells_once(tmp_path, monkeypatch):
    import sweeps.spec
    spec = load_spec(str(write_spec(tmp_path)))
    monkeypatch.setattr(sweeps.spec, "resolve", lambda *a, **k: pytest.fail("resolved again"))
    assert spec.cells() == spec.cells() and len(spec.cells()) == 4


def test_only_selects_by_run_name_glob(tmp_path):
    cells = load_spec(str(write_spec(tmp_path))).cells()
    assert [c.run_name for c in select(cells, "*-s2-*")] == ["digits-50-s2-mixmatch", "digits-50-s2-supervised"]


def test_dry_run_of_the_paper_spec_lists_150_cells_and_runs_nothing(tmp_path, monkeypatch, capsys):
    store = tmp_path     # no store yet: the dry run must not create one
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    code = main(["sweep", str(ROOT / "experiments/paper_cifar10.yaml"), "--dry-run"])
    out, err = capsys.readouterr()
    assert out.count("cifar10-") == 150 and "GPU-h" in out and "nothing was run" in out
    # Priced on a machine without a GPU all the same; the launch's own device check says it
    # would fail here.
    if not torch.cuda.is_available():
        assert code == 2 and "a launch here would fail: device: 'cuda' requested but CUDA is not available" in err
    assert not (store / "mlflow.db").exists() and not (store / "data").exists()


POP_UNTIL_EMPTY = """
import json, os, sys, time
import optuna
from sweeps.store import load_sweep_study, open_storage
study = load_sweep_study(open_storage(sys.argv[1], must_exist=True), "race")
open(sys.argv[2] + "." + str(os.getpid()), "w").close()      # ready
while not os.path.exists(sys.argv[2]):     # start together: the race needs simultaneous claims
    time.sleep(0.01)
got = []
while (tid := study._pop_waiting_trial_id()) is not None:   # what study.ask() uses to claim
    got.append(tid)
print(json.dumps(got))
"""


@pytest.mark.slow
def test_concurrent_workers_never_claim_the_same_cell_on_sqlite(tmp_path):
    # Regression: on SQLite, Optuna's claim (SELECT ... FOR UPDATE, then UPDATE) is not atomic,
    # and plain RDBStorage let 4 processes double-claim 25 of 300 enqueued trials (a CI sweep
    # trained one cell twice). open_storage makes SQLite transactions BEGIN IMMEDIATE.
    import optuna
    from sweeps.store import open_storage, sweep_study_name
    url = f"sqlite:///{tmp_path}/queue.db"
    study = optuna.create_study(study_name=sweep_study_name("race"), storage=open_storage(url))
    for i in range(200):
        study.enqueue_trial({}, user_attrs={"cell_key": str(i)})
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", POP_UNTIL_EMPTY, url, str(go)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("go.*"))) < len(procs) and time.time() < deadline:
        time.sleep(0.05)        # every process has imported optuna and opened the storage
    go.touch()
    claims = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    flat = [t for c in claims for t in c]
    assert len(flat) == len(set(flat)) == 200, f"{len(flat) - len(set(flat))} trials claimed twice"
    # No assertion on how the claims are spread: with the write lock taken at BEGIN, one
    # process popping back to back can starve the others (SQLite's busy handler backs off),
    # which is harmless for real workers that claim once per cell. Without the fix this test
    # fails (measured with 4 processes: 237 claims of 200 trials; with these 3, 8-13 trials
    # claimed twice in each of 4 runs; with 2, 4-14).


def test_status_reads_while_a_worker_holds_the_sqlite_write_lock(tmp_path, capsys):
    # Workers' transactions take SQLite's write lock (BEGIN IMMEDIATE); `mixmatch status` only
    # reads, so it must not queue behind them (it would wait for the 60 s busy timeout).
    import sqlite3

    from sweeps import store as queue
    url = f"sqlite:///{tmp_path}/queue.db"
    queue.publish(queue.open_storage(url), "tiny", load_spec(str(write_spec(tmp_path))).cells(), {}, retries=0)
    worker = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
    worker.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.time()
        assert main(["status", "--storage", url, "--sweep", "tiny"]) == 0
        assert time.time() - t0 < 20 and "4 cells: 4 waiting" in capsys.readouterr().out
    finally:
        worker.execute("ROLLBACK")
        worker.close()


def test_a_sweep_whose_storage_was_lost_takes_its_results_from_mlflow_and_trains_nothing(store, capsys):
    # MLflow holds the results; the queue's copy of them is derived. A lost storage file (or a
    # worker killed between finishing its run and telling the queue) is refilled from MLflow:
    # the relaunch trains nothing, adds no run, and the sweep closes done, not failed.
    from mixmatch_core.tracking import client, start_parent_run
    from mlflow_store import log_cell
    spec = load_spec(str(write_spec(store)))
    parent = start_parent_run("tiny-exp", "tiny", {"sweep": "tiny", "mixmatch.role": "sweep"})
    for i, cell in enumerate(spec.cells()):
        log_cell(client(), "tiny", parent, cell, 10.0 + i)
    assert main(["sweep", "spec.yaml", "--workers", "1", "--no-table"]) == 0
    assert "4 cells (4 already done, 0 queued" in capsys.readouterr().err
    assert len(cell_runs(store)) == 4
    assert main(["status", "spec.yaml"]) == 0
    assert "4 cells: 0 waiting, 0 running, 4 done, 0 failed" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")     # the test claims with ask(), as no worker does
def test_a_cell_failed_in_the_queue_whose_run_finished_in_mlflow_is_adopted_not_retried(store):
    # Its worker died between ending the MLflow run and telling the queue, on its last retry.
    from optuna.trial import TrialState

    from mixmatch_core.tracking import client, experiment_id, start_parent_run
    from mlflow_store import log_cell
    from sweeps import store as queue
    from sweeps.runs import finished_results
    (cell,) = load_spec(str(write_spec(store, "grid: {n_labeled: [50], variant: [supervised], seed: [1]}\n"))).cells()
    storage = queue.open_storage(f"sqlite:///{store}/queue.db")
    queue.publish(storage, "tiny", [cell], {}, retries=0)
    study = queue.load_sweep_study(storage, "tiny")
    study.tell(study.ask(), state=TrialState.FAIL)
    log_cell(client(), "tiny", start_parent_run("tiny-exp", "tiny", {}), cell, 12.5)
    actions = queue.publish(storage, "tiny", [cell], {}, retries=0,
                            results=lambda: finished_results(experiment_id("tiny-exp"), "tiny"))
    state = queue.cell_states(study)[cell.cell_key]
    assert actions == {cell.cell_key: "done"} and (state.state, state.error) == ("done", 12.5)


def test_adding_a_seed_runs_only_the_new_cells(store, capsys, monkeypatch):
    # The worker runs in this process (a worker process costs seconds of imports; the tests
    # above and below run real ones): what is checked is which cells a relaunch queues.
    from sweeps import runner, worker
    from sweeps import store as queue
    monkeypatch.setattr(runner, "run_local_workers", lambda spec, url, *rest: worker.run_worker(
        queue.open_storage(url), spec.name, {"num_threads": 1}, log=lambda msg: None))
    spec = write_spec(store, "grid: {n_labeled: [50], variant: [supervised], seed: [1]}\n")
    assert main(["sweep", str(spec), "--workers", "1", "--no-table"]) == 0
    first = cell_runs(store)["run_id"].tolist()
    spec = write_spec(store, "grid: {n_labeled: [50], variant: [supervised], seed: [1, 2]}\n")
    assert main(["sweep", str(spec), "--workers", "1", "--no-table"]) == 0
    runs = cell_runs(store)
    assert len(runs) == 2 and set(first) <= set(runs["run_id"])


@pytest.mark.slow
def test_sigkill_of_the_whole_sweep_then_relaunch_finishes_every_cell_exactly_once(store, capsys):
    """Real local worker processes (`--workers 2`): the whole sweep SIGKILLed mid-cell, then a
    relaunch (one worker) trains what is left, each cell exactly once in one parent run, and
    prints the table; a further relaunch adds nothing and is quick, and status and the dry run
    see it done."""
    # One torch thread per cell, also for the relaunch's single worker (which would take both
    # cores: two threads on these small steps cost more CPU than they save).
    spec = write_spec(store).read_text().replace("steps: 30", "steps: 60, num_threads: 1")
    (store / "spec.yaml").write_text(spec)
    argv = ["sweep", "spec.yaml", "--workers", "2", "--heartbeat-seconds", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mixmatch_cli", *argv, "--no-table"], cwd=store, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        # Kill once a checkpoint exists (cells are mid-way, with state on disk).
        while time.time() < deadline and not list(store.glob("runs/*/ckpt.pt")):
            time.sleep(0.2)
        assert list(store.glob("runs/*/ckpt.pt")), "no checkpoint appeared"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len(cell_runs(store)) < 4 or set(cell_runs(store)["status"]) != {"FINISHED"}, "killed too late"
    # The relaunch runs in this process; its worker is a real process again (one: two workers
    # sharing the queue are test_concurrent_workers_never_claim_the_same_cell_on_sqlite's).
    argv[3] = "1"
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 done, 0 failed" in out and "| mixmatch |" in out
    runs = cell_runs(store)
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"} and runs["tags.cell_key"].nunique() == 4
    parents = mlflow.search_runs(experiment_names=["tiny-exp"], filter_string="tags.`mixmatch.role` = 'sweep'")
    assert len(parents) == 1 and set(runs["tags.mlflow.parentRunId"]) == {parents["run_id"][0]}
    t0 = time.time()
    assert main([*argv, "--no-table"]) == 0
    assert time.time() - t0 < 20 and len(cell_runs(store)) == 4
    capsys.readouterr()
    assert main(["status", "spec.yaml"]) == 0      # the spec finds the sweep's default local storage
    assert "4 cells: 0 waiting, 0 running, 4 done, 0 failed" in capsys.readouterr().out
    assert main(["sweep", "spec.yaml", "--dry-run"]) == 0    # done cells cost nothing in the plan
    assert "4 cells (4 done), ~0s of CPU time to go" in capsys.readouterr().out
    # nor are they checked: a finished sweep priced (or its tables rebuilt) where its cells could not train
    assert main(["sweep", "spec.yaml", "--dry-run", "--device", "cuda"]) == 0 or torch.cuda.is_available()
    assert "would fail" not in capsys.readouterr().err


def test_a_spec_that_sets_num_threads_keeps_it_whatever_the_worker_count(store):
    """A worker's thread share (`--threads`: one local worker gets every core) fills in only
    where the spec left num_threads at 0: a spec asking for one thread per cell (two runs side
    by side on 2 cores, say) trains with one thread. The worker runs in this process: the
    rule lives in the worker (the launcher's --threads per slot is checked in test_gpus.py)."""
    spec = write_spec(store, "grid: {n_labeled: [50], variant: [supervised], seed: [1]}\n")
    spec.write_text(spec.read_text().replace("device: cpu}", "device: cpu, num_threads: 1}"))
    assert main(["sweep", str(spec), "--workers", "0"]) == 0
    assert main(["worker", "--storage", "sqlite:///optuna/sweep-tiny.db", "--sweep", "tiny", "--threads", "2"]) == 0
    assert cell_runs(store)["params.num_threads"].tolist() == ["1"]


def test_status_lists_cells_in_numeric_label_order_and_counts_failed_attempts(store, capsys):
    """`mixmatch status` orders digits-30 before digits-100 (text order would not), and its count
    column is named for what it counts: the failed attempts (a queued cell has none)."""
    spec = write_spec(store, "grid: {n_labeled: [100, 30], variant: [supervised], seed: [1]}\n")
    assert main(["sweep", str(spec), "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["status", str(spec)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["cell", "cell_key", "state", "failed"]
    assert [ln.split()[0] for ln in lines[1:3]] == ["digits-30-s1-supervised", "digits-100-s1-supervised"]
    assert [ln.split()[3] for ln in lines[1:3]] == ["0", "0"]


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`mixmatch ... | head`: stdout's reader closes it; exit status 1 and no traceback. A broken
    pipe that is not stdout's stays an error with its traceback."""
    code = ("import sys, mixmatch_cli as cli\n"
            "def main():\n"
            "    if sys.argv[1] == 'other':\n        raise BrokenPipeError(32, 'Broken pipe')\n"
            "    sys.stdin.readline()\n"       # until the reader below has closed our stdout
            "    for _ in range(10000):\n        print('x' * 100)\n"
            "cli.main = main; cli.run()")
    proc = subprocess.Popen([sys.executable, "-c", code, "closed"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()                   # the reader goes away before the output comes
    proc.stdin.write("go\n")
    proc.stdin.close()
    assert proc.wait(timeout=60) == 1 and proc.stderr.read() == ""
    proc.stderr.close()
    other = subprocess.run([sys.executable, "-c", code, "other"], capture_output=True, text=True)
    assert other.returncode != 0 and "BrokenPipeError" in other.stderr


def test_a_dry_run_prices_the_wall_time_with_no_more_workers_than_cells(store, capsys):
    spec = write_spec(store, "grid: {n_labeled: [50], variant: [supervised], seed: [1]}\n")
    assert main(["sweep", str(spec), "--dry-run", "--workers", "2"]) == 0
    assert "wall with 1 worker(s)); nothing was run" in capsys.readouterr().out


def test_a_finished_sweep_made_under_older_table_rules_rebuilds_its_tables_instead_of_replaying_them(
        tmp_path, monkeypatch):
    """The fast relaunch replays a finished sweep's stored table only when this release's table
    rules made it: a sweep closed before paired comparisons existed (its record has no rules)
    is rebuilt, not shown as current; one closed under the current rules is replayed."""
    from types import SimpleNamespace

    from sweeps import summary
    from sweeps.store import CellState
    monkeypatch.chdir(tmp_path)
    spec, cells = SimpleNamespace(name="old"), [SimpleNamespace(cell_key="k1", run_name="r1")]
    states = {"k1": CellState("k1", "r1", "done", 0, error=4.4)}
    monkeypatch.setattr(summary, "cell_states", lambda study: states)
    summary.table_md_path(spec).parent.mkdir(parents=True)
    summary.table_md_path(spec).write_text("| variant |\n")
    digest = summary.outcome_digest(states)
    before = SimpleNamespace(user_attrs={"last_report": {"digest": digest, "tables": True}})
    assert not summary.unchanged_since_last_report(spec, before, cells, no_table=False)
    assert summary.unchanged_since_last_report(spec, before, cells, no_table=True)     # nothing to rebuild
    study = SimpleNamespace(user_attrs={}, set_user_attr=lambda k, v: study.user_attrs.__setitem__(k, v))
    summary.record_close(study, states, tables=True)
    assert summary.unchanged_since_last_report(spec, study, cells, no_table=False)
