"""The JSON file a benchmark writes its result to (its `--out FILE`), one way for all of them:
parent folders made, indented JSON, and a `wrote FILE` line on stdout."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(result: dict, out: str | None) -> None:
    """`result` as JSON into `out`; nothing when `out` is None (no --out given)."""
    if not out:
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
