"""Test helper: `mixmatch sweep` on a small spec with its worker in the test's process (a worker
process costs many seconds of imports on a busy machine; test_sweep.py runs real ones), in a
throwaway folder with its own SQLite MLflow store. Shared by test_report.py and test_mlflow_view.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mixmatch_cli import main


def run_sweep(root: Path, spec_text: str, *options: str) -> int:
    """Write ROOT/spec.yaml and run `mixmatch sweep spec.yaml --workers 1 OPTIONS` in ROOT, its
    MLflow store ROOT/mlflow.db; returns the command's exit code."""
    from sweeps import runner, worker
    from sweeps import store as queue
    (root / "spec.yaml").write_text(spec_text)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setattr(runner, "run_local_workers", lambda spec, url, *rest: worker.run_worker(
            queue.open_storage(url), spec.name, {"num_threads": 1}, log=lambda msg: None))
        return main(["sweep", "spec.yaml", "--workers", "1", *options])
