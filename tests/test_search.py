"""`mixmatch search`: Optuna search with pruning, every trial an MLflow run under the study's
parent run. Trials are tiny digits runs (40 steps of 16 images, an evaluation every 10 steps)."""

from pathlib import Path

import optuna
import pytest
import yaml

import mixmatch_core.train
from mixmatch_core.config import load_config, resolve
from mixmatch_core.tracking import client
from mixmatch_cli.search import main as search_main
from sweeps.search_spec import TEST_OBJECTIVE_WARNING, load_search_spec

TINY = dict(dataset="digits", val_size=100, steps=40, eval_every=10, median_of=2, batch_size=16,
            log_every=10, num_threads=1, ema=False)
GOOD_LR, BAD_LR = 0.003, 1e-9   # after 20 steps: ~60-75% val error vs ~85% (the untrained model)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One MLflow SQLite store for the module (creating one takes ~12 s); tests use their own
    experiment names in it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")
    yield
    mp.undo()


@pytest.fixture
def workdir(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_spec(directory, name, **spec) -> str:
    spec = {"name": name, "experiment": f"exp-{name}", "base": dict(TINY), **spec}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def load_study(name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///optuna/{name}.db")


def trial_runs(experiment):
    """The study's child runs in MLflow, by trial number."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`mixmatch.role` = 'trial'")
    return {int(r.data.tags["trial_number"]): r for r in runs}


def parent_runs(experiment):
    c = client()
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], filter_string="tags.`mixmatch.role` = 'study'")


def logged_steps(run_id, key="val_error"):
    return sorted(m.step for m in client().get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def pruned_study(tmp_path_factory, mlflow_store):
    """A good-lr trial completes, then a hopeless-lr trial is pruned by the median pruner at its
    first evaluation after warm-up (step 20 of 40). The grid sampler's seed 1 runs the good one first."""
    d = tmp_path_factory.mktemp("pruned")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        spec = write_spec(d, "pruned", space={"lr": {"type": "categorical", "choices": [GOOD_LR, BAD_LR]}},
                          sampler="grid", seed=1, trials=2,
                          pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 20})
        assert search_main([spec]) == 0
        study = load_study("pruned")
    assert [t.params["lr"] for t in study.trials] == [GOOD_LR, BAD_LR], "grid order changed: pick another seed"
    return d, study


def test_pruned_trial_stops_early(pruned_study):
    _, study = pruned_study
    runs = trial_runs("exp-pruned")
    assert logged_steps(runs[0].info.run_id) == [10, 20, 30, 40]
    assert logged_steps(runs[1].info.run_id) == [10, 20]
    assert study.trials[1].user_attrs["pruned_at_step"] == 20


def test_pruned_trial_is_pruned_in_optuna_and_tagged_in_mlflow(pruned_study):
    _, study = pruned_study
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    runs = trial_runs("exp-pruned")
    assert (runs[0].info.status, runs[0].data.tags["trial_state"]) == ("FINISHED", "COMPLETE")
    assert (runs[1].info.status, runs[1].data.tags["trial_state"]) == ("KILLED", "PRUNED")


def test_every_trial_is_a_child_of_the_study_run(pruned_study):
    _, study = pruned_study
    (parent,) = parent_runs("exp-pruned")
    assert parent.info.run_id == study.user_attrs["parent_run_id"]
    assert (parent.data.tags["study"], parent.info.status) == ("pruned", "FINISHED")
    for number, run in trial_runs("exp-pruned").items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["study"] == "pruned"
        assert study.trials[number].user_attrs["mlflow_run_id"] == run.info.run_id


def test_best_yaml_is_the_best_trials_config(pruned_study):
    d, study = pruned_study
    best = load_config(str(d / "optuna/pruned/best.yaml"))
    assert best.lr == study.best_trial.params["lr"] == GOOD_LR
    # The same run identity as the best trial's MLflow run, and the same config up to runtime
    # fields (a trial has no progress bar and keeps its checkpoint under runs/STUDY/).
    assert best.cell_key == trial_runs("exp-pruned")[study.best_trial.number].data.tags["cell_key"]
    assert best.identity() == resolve(study.best_trial.user_attrs["config"]).identity()
    assert best.experiment == "exp-pruned"


def test_best_yaml_holds_only_user_level_fields(pruned_study):
    d, _ = pruned_study
    user = yaml.safe_load((d / "optuna/pruned/best.yaml").read_text())
    assert user == {**TINY, "experiment": "exp-pruned", "lr": GOOD_LR}


def test_study_outputs_are_parent_run_artifacts(pruned_study):
    d, _ = pruned_study
    (parent,) = parent_runs("exp-pruned")
    logged = {a.path for a in client().list_artifacts(parent.info.run_id, "search")}
    assert {"search/best.yaml", "search/optimization_history.png", "search/pruned.yaml"} <= logged
    assert (d / "optuna/pruned/optimization_history.png").stat().st_size > 0


def test_resumed_study_keeps_its_trials_and_parent_run(workdir):
    spec = write_spec(workdir, "resume", base={**TINY, "steps": 20}, pruner="none", sampler="random",
                      space={"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}})
    assert search_main([spec, "--trials", "2"]) == 0
    first = load_study("resume").trials
    assert search_main([spec, "--trials", "3"]) == 0
    study = load_study("resume")
    assert len(study.trials) == 3
    assert [(t.number, t.params, t.value, t.datetime_start) for t in study.trials[:2]] == \
        [(t.number, t.params, t.value, t.datetime_start) for t in first]
    assert study.trials[2].params != study.trials[0].params      # not the same draw again
    (parent,) = parent_runs("exp-resume")
    runs = trial_runs("exp-resume")
    assert sorted(runs) == [0, 1, 2]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}


@pytest.mark.parametrize("change,message", [
    ({"spce": {}}, "unknown key(s) spce"),
    ({"space": {"lrr": {"type": "float", "low": 0.001, "high": 0.01}}}, "unknown config field 'lrr'"),
    ({"space": {"lr": {"type": "float", "low": 0.01, "high": 0.001}}}, "space.lr: low (0.01) must be < high"),
    ({"space": {"lr": {"type": "float", "low": 0, "high": 0.01, "log": True}}}, "space.lr: log: true needs low > 0"),
    ({"space": {"lr": {"type": "float", "low": "a", "high": 0.01}}}, "space.lr: low must be a number"),
    ({"space": {"rampup_steps": {"type": "float", "low": 0, "high": 100}}}, "space.rampup_steps: type float"),
    ({"space": {"T": {"type": "uniform", "low": 0.1, "high": 1}}}, "space.T must be a mapping with type"),
    ({"space": {"device": {"type": "categorical", "choices": ["cpu"]}}}, "'device' cannot be searched"),
    ({"space": {"ema_decay": {"type": "float", "low": 0.9, "high": 1.0}}}, "space.ema_decay: value 1.0"),
    ({"sampler": "grid"}, "sampler grid needs every space dimension categorical or int with step"),
    ({"pruner": "asha"}, "pruner 'asha' is not one of median, hyperband, none"),
    ({"base": {**TINY, "val_size": 0}}, "objective val_error needs a validation split"),
    ({"trials": 0}, "trials must be an integer >= 1"),
])
def test_bad_spec_fails_in_one_line_before_anything_is_written(workdir, capsys, change, message):
    spec = write_spec(workdir, "bad", **{"space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2}}, **change})
    with pytest.raises(SystemExit) as e:
        search_main([spec])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("mixmatch: error: search spec") and err.count("\n") == 1 and message in err
    assert not (workdir / "optuna").exists()
    assert client().get_experiment_by_name("exp-bad") is None


def test_test_error_objective_warns_and_uses_the_test_error(workdir, capsys):
    spec = write_spec(workdir, "on_test", base={**TINY, "val_size": 0, "steps": 10}, objective="test_error",
                      pruner="none", space={"lr": {"type": "categorical", "choices": [GOOD_LR]}}, trials=1)
    assert search_main([spec]) == 0
    assert TEST_OBJECTIVE_WARNING in capsys.readouterr().err
    (trial,) = load_study("on_test").trials
    assert trial.value == trial.user_attrs["test_error"]


def test_invalid_param_combination_fails_the_trial_not_the_study(workdir, capsys):
    # Each value is valid with the base, but wd * lr >= 1 is not: the trial FAILs with the reason.
    spec = write_spec(workdir, "combo", trials=1, space={"lr": {"type": "categorical", "choices": [0.5]},
                                                         "wd": {"type": "categorical", "choices": [3.0]}})
    with pytest.raises(SystemExit) as e:
        search_main([spec])
    assert e.value.code == 1
    trials = load_study("combo").trials      # failures don't count toward --trials: 3 in a row stop it
    assert len(trials) == 3 and all(t.state.name == "FAIL" for t in trials)
    trial = trials[0]
    assert trial.user_attrs["failure_reason"].startswith("wd: wd * lr")
    assert "trial 0 FAIL (wd: wd * lr" in capsys.readouterr().out


def test_ctrl_c_kills_the_trial_run_and_the_rerun_resumes_it(workdir, monkeypatch):
    spec = write_spec(workdir, "ctrlc", pruner="none", trials=1,
                      space={"lr": {"type": "categorical", "choices": [GOOD_LR]}})
    real_train = mixmatch_core.train.train

    def interrupted_train(cfg, tracker=None, on_eval=None, **kw):
        def on(step, h):
            on_eval(step, h)
            if step == 20:
                raise KeyboardInterrupt
        return real_train(cfg, tracker=tracker, on_eval=on, **kw)

    monkeypatch.setattr(mixmatch_core.train, "train", interrupted_train)
    with pytest.raises(SystemExit) as e:
        search_main([spec])
    assert e.value.code == 130
    killed = trial_runs("exp-ctrlc")[0]
    assert (killed.info.status, killed.data.tags["trial_state"]) == ("KILLED", "FAIL")
    assert parent_runs("exp-ctrlc")[0].info.status == "KILLED"
    assert load_study("ctrlc").trials[0].state.name == "FAIL"

    monkeypatch.setattr(mixmatch_core.train, "train", real_train)
    assert search_main([spec]) == 0
    study = load_study("ctrlc")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    # The same config resumed from its step-20 checkpoint, in the same MLflow run.
    assert study.trials[1].user_attrs["mlflow_run_id"] == killed.info.run_id
    assert logged_steps(killed.info.run_id) == [10, 20, 30, 40]
    assert parent_runs("exp-ctrlc")[0].info.status == "FINISHED"


def go_stale(name: str) -> None:
    """What another worker does to our running trial once its heartbeat is stale: fail it and
    re-queue its params (Optuna's RetryHeartbeatStaleTrialCallback)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    study = load_study(name)
    (t,) = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    RetryHeartbeatStaleTrialCallback(max_retry=2)(study, study._storage.get_trial(t._trial_id))


@pytest.mark.parametrize("stale_at_step", [20, 40])
def test_a_trial_whose_heartbeat_went_stale_is_handed_over_and_finishes_once(
        workdir, monkeypatch, capsys, stale_at_step):
    # Another worker failed our trial as stale and re-queued it while we still trained it: we
    # stop before writing the next evaluation (Optuna then refuses our tell; the search goes
    # on), and the retry resumes the same config from its checkpoint in the same MLflow run
    # (or, stale after the last evaluation, reports the finished run without training).
    name = f"stale{stale_at_step}"
    spec = write_spec(workdir, name, pruner="none", trials=1,
                      space={"lr": {"type": "categorical", "choices": [GOOD_LR]}})
    real_train, calls = mixmatch_core.train.train, []

    def train_and_go_stale_once(cfg, tracker=None, on_eval=None, **kw):
        calls.append(cfg.cell_key)

        def on(step, h):
            on_eval(step, h)
            if len(calls) == 1 and step == stale_at_step:
                go_stale(name)
        return real_train(cfg, tracker=tracker, on_eval=on, **kw)

    monkeypatch.setattr(mixmatch_core.train, "train", train_and_go_stale_once)
    assert search_main([spec]) == 0
    assert "trial 0: handed to another worker" in capsys.readouterr().out
    assert len(calls) == 2 and len(set(calls)) == 1
    assert [t.state.name for t in load_study(name).trials] == ["FAIL", "COMPLETE"]
    (run,) = trial_runs(f"exp-{name}").values()
    assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == "COMPLETE"
    assert "failure_reason" not in run.data.tags     # the stale worker left the run alone
    assert logged_steps(run.info.run_id) == [10, 20, 30, 40]


# ---- seeds: a trial averaged over labeled splits ----------------------------------------------------
def seed_runs(experiment) -> dict[tuple[int, int], object]:
    """The study's child runs by (trial number, seed)."""
    c = client()
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id], "tags.`mixmatch.role` = 'trial'")
    return {(int(r.data.tags["trial_number"]), int(r.data.tags["trial_seed"])): r for r in runs}


def history(run, key="val_error") -> dict[int, float]:
    """The run's evaluations (step -> value): the first point of each step (at the last step the
    final metric, the median rule's, is logged after the evaluation)."""
    points = sorted(client().get_metric_history(run.info.run_id, key), key=lambda m: m.timestamp)
    out: dict[int, float] = {}
    for m in points:
        out.setdefault(m.step, m.value)
    return out


def reported(run, last_but_one: int = 30) -> float:
    """The run's val_error by the reporting rule (TINY: the median of the last 2 evaluations)."""
    h = history(run)
    return (h[last_but_one] + h[last_but_one + 10]) / 2


@pytest.fixture(scope="module")
def seeds_study(tmp_path_factory, mlflow_store):
    """As pruned_study, each trial on seeds 1 and 2: the good lr completes both; the hopeless lr
    finishes seed 1 and is pruned in seed 2 at step 20, the first step both seeds have."""
    d = tmp_path_factory.mktemp("seeds")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        spec = write_spec(d, "seeds", space={"lr": {"type": "categorical", "choices": [GOOD_LR, BAD_LR]}},
                          sampler="grid", seed=1, trials=2, seeds=[1, 2],
                          pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 20})
        assert search_main([spec]) == 0
        return load_study("seeds"), seed_runs("exp-seeds")


def test_a_trial_with_seeds_trains_one_child_run_per_seed_and_its_value_is_their_mean(seeds_study):
    study, runs = seeds_study
    (parent,) = parent_runs("exp-seeds")
    good = study.trials[0]
    assert good.state.name == "COMPLETE" and good.params["lr"] == GOOD_LR
    assert {runs[0, s].data.params["seed"] for s in (1, 2)} == {"1", "2"}
    assert {runs[0, s].data.tags["mlflow.parentRunId"] for s in (1, 2)} == {parent.info.run_id}
    assert good.value == pytest.approx((reported(runs[0, 1]) + reported(runs[0, 2])) / 2)
    assert reported(runs[0, 1]) != reported(runs[0, 2])     # two splits, two values


def test_a_trial_with_seeds_is_pruned_on_the_mean_of_the_steps_all_its_seeds_reported(seeds_study):
    study, runs = seeds_study
    bad = study.trials[1]
    assert bad.state.name == "PRUNED" and bad.user_attrs["pruned_at_step"] == 20
    first, second = history(runs[1, 1]), history(runs[1, 2])
    assert sorted(first) == [10, 20, 30, 40] and sorted(second) == [10, 20]     # seed 2 stopped at step 20
    assert bad.intermediate_values == {step: pytest.approx((first[step] + second[step]) / 2) for step in (10, 20)}
    assert (runs[1, 2].info.status, runs[1, 2].data.tags["trial_state"]) == ("KILLED", "PRUNED")
    assert runs[1, 1].data.tags["trial_state"] == "PRUNED"       # finished, in a pruned trial


def test_a_killed_trial_with_seeds_resumes_only_its_unfinished_seed(workdir, monkeypatch):
    """The worker is lost in seed 2 at step 10 of 20 (its heartbeat goes stale; the trial is failed
    and re-queued): the retry reports seed 1's finished run without training it and resumes seed 2
    from its step-10 checkpoint, in the same MLflow runs."""
    spec = write_spec(workdir, "killed", base={**TINY, "steps": 20}, pruner="none", trials=1, seeds=[1, 2],
                      space={"lr": {"type": "categorical", "choices": [GOOD_LR]}})
    real_train, evals = mixmatch_core.train.train, []

    def train_and_lose_the_worker_once(cfg, tracker=None, on_eval=None, **kw):
        def on(step, h):
            evals.append((cfg.seed, step))
            on_eval(step, h)
            if (cfg.seed, step) == (2, 10) and evals.count((2, 10)) == 1:
                go_stale("killed")
        return real_train(cfg, tracker=tracker, on_eval=on, **kw)

    monkeypatch.setattr(mixmatch_core.train, "train", train_and_lose_the_worker_once)
    assert search_main([spec]) == 0
    assert evals == [(1, 10), (1, 20), (2, 10), (2, 20)]   # nothing twice
    study = load_study("killed")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    runs = {seed: run for (_, seed), run in seed_runs("exp-killed").items()}
    assert sorted(runs) == [1, 2] and len(seed_runs("exp-killed")) == 2     # one run per seed, reused by the retry
    assert [sorted(history(runs[s])) for s in (1, 2)] == [[10, 20]] * 2
    assert study.trials[1].value == pytest.approx((reported(runs[1], 10) + reported(runs[2], 10)) / 2)


def test_seeds_must_be_distinct_integers(workdir, capsys):
    spec = write_spec(workdir, "badseeds", seeds=[1, 1], space={"lr": {"type": "float", "low": 1e-3, "high": 1e-2}})
    with pytest.raises(SystemExit) as e:
        search_main([spec])
    assert e.value.code == 2 and "seeds must be a non-empty list of distinct integers >= 0" in capsys.readouterr().err


def test_quickstart_spec_is_valid():
    spec = load_search_spec(str(Path(__file__).parents[1] / "experiments/search_quickstart.yaml"))
    assert set(spec.space) == {"T", "alpha", "lambda_u", "lr", "rampup_steps", "ema_decay"}
    assert spec.objective == "val_error" and spec.pruner["type"] == "median"
