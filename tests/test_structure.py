"""The layering the code keeps: benchmarks -> mixmatch_cli -> sweeps -> mixmatch_core, no import circle, and
no function over 60 lines (a longer one usually holds several jobs). Read from the source
with `ast`, nothing is imported."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mixmatch_core", "sweeps", "mixmatch_cli", "benchmarks")
LAYER = {"mixmatch_core": 0, "sweeps": 1, "mixmatch_cli": 2, "benchmarks": 3}
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            out[".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = p
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules `name` imports, at the top or inside functions."""
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            prefix = ".".join(base[:len(base) - n.level + 1] + ([n.module] if n.module else [])) if n.level \
                else n.module
            for a in n.names:
                out.add(f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix)
        elif isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_no_import_circle():
    g, state, circles = graph(), {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(g[m]):
            if state.get(d) == "open":
                circles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"
    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_arrow_runs_back_up(pkg):
    """mixmatch_core imports neither sweeps nor the CLI; sweeps does not import the CLI."""
    up = {(m, d) for m, deps in graph().items() if m.split(".")[0] == pkg for d in deps
          if LAYER[d.split(".")[0]] > LAYER[pkg]}
    assert not up, f"{pkg} imports a layer above it: {sorted(up)}"


def test_no_function_over_60_lines():
    """In the product's packages (benchmarks are one-off measurement scripts)."""
    long = []
    for m, p in modules().items():
        if m.startswith("benchmarks"):
            continue
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = n.end_lineno - n.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{m}.{n.name}: {lines} lines")
    assert not long, long


def test_every_module_starts_with_a_docstring_saying_what_it_owns():
    missing = [m for m, p in modules().items() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, missing
