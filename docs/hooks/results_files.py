"""MkDocs hook: the repository's results/ folder (plots, screenshots, reports, tables) in the site.

Owns: adding every file under results/ except Markdown to the site as a static file at the same
path (`results/quickstart/quickstart_report_screenshot.png`), so that the pages show the real
outputs without a copy of them in docs/. The results' own READMEs stay repository files (their
links point at folders and specs outside the site). Registered in mkdocs.yml under `hooks:`.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

FOLDER = "results"


def on_files(files, config):
    root = Path(config["config_file_path"]).resolve().parent
    for path in sorted((root / FOLDER).rglob("*")):
        if path.is_file() and path.suffix != ".md":
            files.append(File(str(path.relative_to(root)), str(root), config["site_dir"],
                              config["use_directory_urls"]))
    return files
