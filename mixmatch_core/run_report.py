"""A run's report: the reporting rule and the artifacts of one finished run (the sweep's
tables and HTML page are sweeps/report.py's).

Owns: `report_errors` (the paper's number: the median of the last N evaluation errors, i.e.
100 - median accuracy; plus the last and the best, clearly labeled), `final_metrics` over an
evaluation history, and the files logged with every finished run: the resolved config as
YAML, the confusion matrix (CSV and PNG), per-class error (CSV) and the learning curve (PNG).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np


def report_errors(errors: list[float], median_of: int) -> dict[str, float]:
    """error = median of the last `median_of` errors (in %): the paper's reporting rule.
    error_last is the final evaluation; error_best is the minimum over the run, i.e. model
    selection on the test set (optimistic; shown only to compare with ports that report it)."""
    if not errors:
        return {}
    return {"error": float(statistics.median(errors[-median_of:])), "error_last": float(errors[-1]),
            "error_best": float(min(errors))}


def final_metrics(history: list[dict], median_of: int) -> dict[str, float]:
    """The final metrics of a run from its evaluation history (test, live model, validation)."""
    out = report_errors([h["test_error"] for h in history], median_of)
    raw = report_errors([h["test_error_raw"] for h in history], median_of)
    out.update({f"{k}_raw": v for k, v in raw.items()})
    if history and "val_error" in history[0]:
        val = report_errors([h["val_error"] for h in history], median_of)
        out.update({"val_error": val["error"], "val_error_last": val["error_last"],
                    "val_error_best": val["error_best"]})
    return out


def write_run_artifacts(out: Path, cfg, history: list[dict], conf: np.ndarray,
                        class_names: list[str] | None = None) -> list[Path]:
    """Write the run's report files into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    n = conf.shape[0]
    names = list(class_names) if class_names is not None and len(class_names) == n else [str(i) for i in range(n)]
    (config := out / "config.yaml").write_text(cfg.to_yaml())
    return [config, *_write_error_tables(out, conf, names), _plot_confusion(out / "confusion_matrix.png", cfg, conf, names),
            _plot_learning_curve(out / "learning_curve.png", cfg, history)]


def _write_error_tables(out: Path, conf: np.ndarray, names: list[str]) -> list[Path]:
    """confusion_matrix.csv (counts, rows = true class) and per_class_error.csv (in %)."""
    import pandas as pd   # lazy: only a finished run writes these
    p = out / "confusion_matrix.csv"
    pd.DataFrame(conf, index=pd.Index(names, name="true"), columns=names).to_csv(p)
    support = conf.sum(1)
    per_class = pd.DataFrame({"class": names, "n_test": support,
                              "error": 100.0 * (1 - np.diag(conf) / np.maximum(support, 1))})
    q = out / "per_class_error.csv"
    per_class.to_csv(q, index=False, float_format="%.2f")
    return [p, q]


def _pyplot():
    import matplotlib   # lazy: only a finished run draws; Agg, a file backend (no display)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plot_confusion(p: Path, cfg, conf: np.ndarray, names: list[str]) -> Path:
    """The row-normalised confusion matrix, counts written in each cell up to 20 classes."""
    plt, n = _pyplot(), conf.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * n, 1.0 + 0.5 * n) if n <= 20 else (12, 11))
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        ax.set_xticks(range(n), names, rotation=45, ha="right")
        ax.set_yticks(range(n), names)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{cfg.run_name}: test confusion (error {100 * (1 - np.trace(conf) / max(conf.sum(), 1)):.2f}%)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.savefig(p, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return p


def _plot_learning_curve(p: Path, cfg, history: list[dict]) -> Path:
    """Test error of the EMA and live models (and validation) per evaluation, with the window
    of the reporting rule shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["test_error_ema"] for h in history], label="test error (EMA model)")
    ax.plot(steps, [h["test_error_raw"] for h in history], label="test error (live model)", alpha=0.7)
    if history and "val_error_ema" in history[0]:
        ax.plot(steps, [h["val_error_ema"] for h in history], label="validation error (EMA)", ls="--")
    k = min(cfg.median_of, len(history))
    if k:
        ax.axvspan(steps[-k], steps[-1], color="grey", alpha=0.15, label=f"last {k} evals (median reported)")
    ax.set_xlabel("step")
    ax.set_ylabel("error (%)")
    ax.set_title(cfg.run_name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(p, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return p
