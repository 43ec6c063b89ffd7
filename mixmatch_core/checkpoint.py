"""A run's checkpoint and its directory: atomic writes, safe loads, a writable run directory.

Owns: writing a checkpoint atomically (temporary file, fsync, rename: a kill leaves the old or
the new one, never a torn one), loading it with `weights_only=True` and refusing a file of
another config, and checking the checkpoint root and the run directory before a run starts
(one-line errors, nothing created on failure). What a checkpoint holds is the trainer's
(train.py); this module only moves it to and from disk.

Importing it imports no torch (only saving and loading need it): `mixmatch sweep` checks the
cells' out_dirs here before it starts workers, and torch's import (about 1.7 s on 2 cores)
would only delay them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .config import Config, ConfigError

CKPT_NAME = "ckpt.pt"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; the message names the file."""


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: write a temporary file in the same directory, fsync, rename over the old one.
    A kill at any moment leaves either the previous or the new checkpoint, never a torn one."""
    import torch   # lazy: see the module docstring
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_out_dir(out_dir: str) -> None:
    """Fail in one line, creating nothing, when `out_dir` cannot be created or written: its
    nearest existing ancestor must be a writable directory (e.g. not a regular file)."""
    probe = Path(out_dir).absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        why = "is not a directory" if not probe.is_dir() else "is not writable"
        raise ConfigError(f"out_dir: cannot create '{out_dir}' ('{probe}' {why}); choose a writable out_dir")


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory and prove it writable (a probe file), before the run is started
    or logged; then remove temporary files left by a process killed while writing a checkpoint."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".ckpt-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"out_dir: cannot write the run directory '{run_dir}' ({e.strerror or e}); "
                          "choose a writable out_dir") from None
    for stray in run_dir.glob(".ckpt-*.tmp"):
        with contextlib.suppress(OSError):
            stray.unlink()


def load_checkpoint(path: Path, cfg: Config) -> dict:
    """Load with weights_only=True (no arbitrary pickle); reject foreign or corrupt files."""
    import torch   # lazy: see the module docstring
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means unusable
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a mixmatch checkpoint "
                              f"({type(e).__name__}); rerun with --restart to start this run over") from None
    if not isinstance(state, dict) or state.get("cell_key") != cfg.cell_key:
        raise CheckpointError(f"checkpoint '{path}' belongs to another config (cell_key "
                              f"{state.get('cell_key') if isinstance(state, dict) else '?'} != {cfg.cell_key}); "
                              "rerun with --restart to start this run over")
    return state
