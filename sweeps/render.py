"""The renderers of a built Table: GitHub Markdown, LaTeX (booktabs), CSV and standalone HTML.

Owns the text of every format and writing them to files (`write_table`); the numbers, the
rows and the notes are the Table's (table.py). Rows of kind `paper` and `delta` (the paper's
numbers under ours) are set in italics in every format.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from mixmatch_core.config import ConfigError

from .spec import file_stem
from .table import DASH, Grid, Table

FORMATS = ("markdown", "latex", "csv", "html")


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _md_grid(g: Grid, level: str) -> list[str]:
    out = [f"{level} {_md(g.title)}", "", "| " + " | ".join(_md(h) for h in g.header) + " |",
           "|" + "|".join([":---"] + ["---:"] * (len(g.header) - 1)) + "|"]
    for row, kind in zip(g.rows, g.kinds):
        cells = [f"**{_md(c.text)}**" if c.bold else _md(c.text) for c in row]
        if kind != "ours":
            cells[0] = f"*{cells[0]}*"
        out.append("| " + " | ".join(cells) + " |")
    return out


def to_markdown(table: Table) -> str:
    """GitHub Markdown: the main table, its notes, then the error at the last evaluation and the
    difference to the full method."""
    out = _md_grid(table.main, "###") + [""] + [f"- {_md(n)}" for n in table.notes]
    for g in table.second_grids():
        out += [""] + _md_grid(g, "####")
    return "\n".join(out) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "Δ": r"$\Delta$", DASH: "---", "≥": r"$\geq$"}


def _tex(text: str) -> str:
    text = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    for u, t in _LATEX_UNICODE.items():
        text = text.replace(u, t)
    return text


def _tex_grid(g: Grid, notes: list[str]) -> list[str]:
    out = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{_tex(g.title)}}}",
           r"\begin{tabular}{l" + "r" * (len(g.header) - 1) + "}", r"\toprule",
           " & ".join(_tex(h) for h in g.header) + r" \\", r"\midrule"]
    for row, kind in zip(g.rows, g.kinds):
        cells = [rf"\textbf{{{_tex(c.text)}}}" if c.bold else _tex(c.text) for c in row]
        if kind != "ours":
            cells[0] = rf"\quad\textit{{{cells[0]}}}"
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        out += [r"\par\smallskip", r"{\footnotesize " + " ".join(_tex(n) for n in notes) + "}"]
    return out + [r"\end{table}"]


def to_latex(table: Table) -> str:
    """LaTeX with booktabs (\\usepackage{booktabs}): one table environment per grid."""
    out = [f"% mixmatch table: sweep {table.sweep}; needs \\usepackage{{booktabs}}"]
    out += _tex_grid(table.main, table.notes)
    for g in table.second_grids():
        out += [""] + _tex_grid(g, [])
    return "\n".join(out) + "\n"


TABLE_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;color:#222}
h2,h3{font-weight:600}
table{border-collapse:collapse;border-top:2px solid #222;border-bottom:2px solid #222;margin:1em 0}
th,td{padding:.3em .8em;text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{border-bottom:1px solid #222}
tr.paper td,tr.delta td{color:#666;font-style:italic;font-size:.92em}
ul.notes{color:#444;font-size:.9em}"""


def _html_grid(g: Grid, level: str) -> list[str]:
    e = html.escape
    out = [f"<{level}>{e(g.title)}</{level}>", "<table>", "<thead><tr>"
           + "".join(f"<th>{e(h)}</th>" for h in g.header) + "</tr></thead>", "<tbody>"]
    for row, kind in zip(g.rows, g.kinds):
        out.append(f'<tr class="{kind}">' + "".join(
            f"<td><strong>{e(c.text)}</strong></td>" if c.bold else f"<td>{e(c.text)}</td>" for c in row) + "</tr>")
    return out + ["</tbody>", "</table>"]


def html_body(table: Table, level: int = 2) -> list[str]:
    """The tables and their notes as HTML elements (headings from <h{level}>), for to_html and
    the sweep report."""
    e = html.escape
    out = _html_grid(table.main, f"h{level}")
    out += ['<ul class="notes">'] + [f"<li>{e(n)}</li>" for n in table.notes] + ["</ul>"]
    for g in table.second_grids():
        out += _html_grid(g, f"h{level + 1}")
    return out


def to_html(table: Table) -> str:
    """One standalone HTML file with inline CSS."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(table.main.title)}</title>", f"<style>\n{TABLE_CSS}\n</style>", "</head>", "<body>"]
    return "\n".join(out + html_body(table) + ["</body>", "</html>"]) + "\n"


RUNS_CSV_COLUMNS = ["sweep", "run_id", "run_name", "cell_key", "dataset", "model", "n_labeled", "seed", "method",
                    "variant", "status", "counted", "error", "error_last", "error_best", "error_raw",
                    "failure_reason", "start_time", "end_time", "experiment_id", "parent_run_id"]


def runs_csv(table: Table) -> str:
    """Tidy CSV, one row per run (planned cells without a run: status MISSING, or FAILED with the
    queue's reason where a worker failed the cell before its run began); `counted` marks
    the run that stands for its cell; times in UTC ISO 8601."""
    df = table.runs.copy()
    for f in table.extra_axes:
        df[f] = df.get(f"params.{f}")
    for col in ("start_time", "end_time"):
        t = pd.to_numeric(df[col], errors="coerce")
        df[col] = pd.to_datetime(t, unit="ms", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    cols = RUNS_CSV_COLUMNS[:10] + ["row"] + table.extra_axes + RUNS_CSV_COLUMNS[10:]
    df["sweep"] = table.sweep
    return df.reindex(columns=cols).to_csv(index=False, float_format="%.6g", lineterminator="\n")


def cells_csv(table: Table) -> str:
    """Aggregated CSV, one row per (table row, n_labeled), with the paper's number and the
    difference to the full method."""
    return table.cells.drop(columns=["errors"], errors="ignore").to_csv(index=False, float_format="%.6g",
                                                                           lineterminator="\n")


def write_table(table: Table, out_dir: str | Path, formats=FORMATS) -> list[Path]:
    """Write the chosen formats into out_dir; csv gives two files (per run, aggregated)."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"format: '{bad[0]}' is not one of {', '.join(FORMATS)}, all")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem, paths = file_stem(table.sweep), []
    texts = {"markdown": [(f"{stem}_table.md", to_markdown)], "latex": [(f"{stem}_table.tex", to_latex)],
             "csv": [(f"{stem}_runs.csv", runs_csv), (f"{stem}_cells.csv", cells_csv)],
             "html": [(f"{stem}_table.html", to_html)]}
    for fmt in formats:
        for name, render in texts[fmt]:
            p = out / name
            p.write_text(render(table), encoding="utf-8")
            paths.append(p)
    return paths


# What `mixmatch table --format F` prints (csv: the aggregated table; --out writes both CSVs).
PRINTED = {"markdown": to_markdown, "latex": to_latex, "csv": cells_csv, "html": to_html}
