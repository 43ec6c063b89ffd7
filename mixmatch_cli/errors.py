"""The user-error contract every `mixmatch` command follows.

Owns: `die` (one `mixmatch: error: MSG` line on stderr and a non-zero exit, never a
traceback), `ArgumentParser` (argparse whose own usage errors are such a line too) and
`user_errors` (the block inside which a user error of any layer becomes that line).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from mixmatch_core.config import ConfigError

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
    and exit code 2. Shared by every `mixmatch` subcommand."""

    def error(self, message: str) -> None:  # argparse's own errors: one line too
        die(f"{self.prog}: {message}")


