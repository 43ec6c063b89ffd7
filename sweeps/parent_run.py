"""The MLflow parent run of a sweep or a search study: the run its cell (or trial) runs hang under.

Owns: opening it (reopened on relaunch from the id the study keeps, created once otherwise),
what a sweep logs to it when it starts (the spec and its planned cells) and the files logged
to it at the end (tables, plots, report). Its end status is mixmatch_core.tracking's
`end_parent_run`.
"""

from __future__ import annotations

from pathlib import Path

from mixmatch_core.tracking import client, experiment_id, start_parent_run

from . import mlflow_view
from .spec import Spec


def open_parent_run(study, experiment: str, name: str, role: str, tags: dict[str, str]) -> str:
    """The MLflow parent run of a sweep (role "sweep") or a search study (role "study"), tagged
    `{role}: name`: reopened when the study holds its id and MLflow still has it, else created
    and its id kept in the study. Processes starting together (a Slurm array of `mixmatch search`)
    may each create one: all converge on the oldest and delete their own, so there is one."""
    c = client()
    run_id = study.user_attrs.get("parent_run_id")
    try:
        if run_id is None or c.get_run(run_id).info.lifecycle_stage != "active":
            raise LookupError(run_id)
        return start_parent_run(experiment, name, {}, run_id=run_id)
    except Exception:  # noqa: BLE001 - missing, deleted or in another MLflow store: make a new one
        pass
    run_id = start_parent_run(experiment, name, {**tags, role: name, "mixmatch.role": role})
    parents = c.search_runs([experiment_id(experiment, c)],
                            f"tags.{role} = '{name}' and tags.`mixmatch.role` = '{role}'",
                            order_by=["attributes.start_time ASC"], max_results=100)
    oldest = min(parents, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if parents else run_id
    if oldest != run_id:
        c.delete_run(run_id)
        run_id = start_parent_run(experiment, name, {}, run_id=oldest)
    study.set_user_attr("parent_run_id", run_id)
    return run_id


def open_sweep_parent_run(spec: Spec, study) -> str:
    """One MLflow parent run per sweep, reopened on relaunch (its id is kept in the study), with
    the spec and the planned cells (the spec may have grown since the last launch)."""
    parent = open_parent_run(study, spec.experiment, spec.name, "sweep", {"spec_path": str(spec.path)})
    planned = [{"cell_key": x.cell_key, "run_name": x.run_name, "dataset": x.dataset, "n_labeled": x.n_labeled,
                "seed": x.seed, "variant": x.variant, "method": x.method} for x in spec.cells()]
    c = client()
    c.log_text(parent, Path(spec.path).read_text(), "sweep/spec.yaml")
    c.log_dict(parent, planned, "sweep/cells.json")
    mlflow_view.write_views(spec, c)     # the MLflow UI's views of the sweep's table (mixmatch ui links them)
    return parent


def log_artifacts(paths: list[Path], parent_run_id: str | None, artifact_path: str) -> list[Path]:
    """Log the files to the run (none without a run id); returns them."""
    if parent_run_id and paths:
        c = client()
        for p in paths:
            c.log_artifact(parent_run_id, str(p), artifact_path)
    return paths
