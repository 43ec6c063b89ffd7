"""`python -m mixmatch_cli ...` is the `mixmatch` command (how workers start each other)."""

from . import run

run()
