"""Rank curves per task (Table 2 metrics), and their summary: normalised AUC (over rank and over log2 rank),
smallest good rank."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from dylora.errors import ConfigError
from dylora.lab import paper
from dylora.lab.report.experiments import (
    LOWER_IS_BETTER,
    Experiment,
    method_label,
    method_order,
    metric_scale,
    task_order,
)
from dylora.lab.report.figures import plt, save_figure
from dylora.lab.report.render import issues_markdown, markdown_table
from dylora.lab.report.scoring import TABLE2_PAPER, scores
from dylora.sweep import normalised_auc


def min_rank_within(ranks: Iterable[int], values: Iterable[float], tolerance: float,
                    lower_is_better: bool = False) -> int:
    """The smallest rank whose value is within ``tolerance`` of the best value."""
    pairs = sorted(zip(ranks, values))
    if not pairs:
        raise ConfigError("min_rank_within needs at least one (rank, value) pair")
    best = min(v for _, v in pairs) if lower_is_better else max(v for _, v in pairs)
    ok = (lambda v: v <= best + tolerance) if lower_is_better else (lambda v: v >= best - tolerance)
    return next(int(r) for r, v in pairs if ok(v))


def _curves(exp: Experiment) -> pd.DataFrame:
    """Per task, method and rank 1..r_max: mean, std and count over seeds (Table 2 metrics)."""
    sc, _ = scores(exp, "table2")
    keep = [g[g["rank"] <= exp.rank_range(str(t), str(m))[1]]
            for (t, m), g in sc.groupby(["task", "method"], sort=False)]
    if not keep:
        return pd.DataFrame(columns=["task", "method", "metric", "rank", "mean", "std", "count"])
    sc = pd.concat(keep)
    return sc.groupby(["task", "method", "metric", "rank"], as_index=False)["value"].agg(["mean", "std", "count"])


def _paper_curve(method: str, task: str, metric: str, ranks: Iterable[int]) -> dict[int, float]:
    if task not in TABLE2_PAPER:
        return {}
    version, table = TABLE2_PAPER[task]
    points = {r: paper.paper_value(table, method, task, metric, r, version) for r in ranks}
    return {r: v for r, v in points.items() if v is not None}


def plot_rank_curves(exp: Experiment, dest: Path) -> list[Path]:
    """One figure per task: mean over seeds per method, ±std band, the paper's points as crosses."""
    curves, paths = _curves(exp), []
    for task in task_order(curves["task"].unique()):
        fig, ax = plt.subplots(figsize=(6, 4))
        of_task = curves[curves["task"] == task]
        for i, method in enumerate(method_order(of_task["method"])):
            _plot_method(ax, of_task[of_task["method"] == method].sort_values("rank"), method, task, f"C{i}")
        metric = of_task["metric"].iloc[0]
        ax.set(xlabel="rank b", ylabel=f"{metric}{' (x100)' if metric_scale(task, metric) == 100 else ''}",
               title=f"{paper.TASKS.get(task, task)} ({exp.name})")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        for ext in ("png", "svg"):
            paths.append(save_figure(fig, dest / f"rank_curve_{task}.{ext}"))
        plt.close(fig)
    return paths


def _plot_method(ax: Any, c: pd.DataFrame, method: str, task: str, color: str) -> None:
    label = method_label(method)
    ax.plot(c["rank"], c["mean"], marker="o", color=color, label=f"{label} (n={int(c['count'].max())})")
    if (c["count"] > 1).any():
        std = c["std"].fillna(0)
        ax.fill_between(c["rank"], c["mean"] - std, c["mean"] + std, color=color, alpha=0.2)
    theirs = _paper_curve(method, task, c["metric"].iloc[0], c["rank"])
    if theirs:
        ax.scatter(list(theirs), list(theirs.values()), marker="x", color=color, label=f"{label} (paper)")


# ---------------------------------------------------------------------------- summary


SUMMARY_COLUMNS = ["task", "metric", "method", "n_seeds", "ranks", "best_rank", "best", "at_r_max", "auc",
                   "auc_log2", "min_rank_within_tol", "tolerance", "paper_auc", "paper_auc_log2",
                   "paper_min_rank_within_tol"]


def rank_summary(exp: Experiment, tolerance: float = 1.0) -> pd.DataFrame:
    """Per task and method, on the seed-mean rank curve (Table 2 metrics): best rank, value at
    r_max, normalised AUC, smallest rank within ``tolerance`` points of the best; the same for
    the paper's curve where it prints every rank shown."""
    curves = _curves(exp)
    rows = [
        _summary_row(curves[(curves["task"] == t) & (curves["method"] == m)].sort_values("rank"), tolerance)
        for t in task_order(curves["task"])
        for m in method_order(curves.loc[curves["task"] == t, "method"])
    ]
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({"paper_min_rank_within_tol": "Int64"})


def _summary_row(c: pd.DataFrame, tolerance: float) -> dict[str, Any]:
    task, method, metric = (str(c[k].iloc[0]) for k in ("task", "method", "metric"))
    lower = metric in LOWER_IS_BETTER
    best_at = c.loc[c["mean"].idxmin() if lower else c["mean"].idxmax()]
    theirs = _paper_curve(method, task, metric, c["rank"])
    full = len(theirs) == len(c)  # the paper's AUC only over the same ranks
    return dict(
        task=task, metric=metric, method=method, n_seeds=int(c["count"].max()),
        ranks=f"{c['rank'].min()}..{c['rank'].max()}", best_rank=int(best_at["rank"]), best=best_at["mean"],
        at_r_max=c["mean"].iloc[-1], auc=normalised_auc(c["rank"], c["mean"]),
        auc_log2=normalised_auc(c["rank"], c["mean"], log2=True),
        min_rank_within_tol=min_rank_within(c["rank"], c["mean"], tolerance, lower), tolerance=tolerance,
        paper_auc=normalised_auc(theirs, theirs.values()) if full else math.nan,
        paper_auc_log2=normalised_auc(theirs, theirs.values(), log2=True) if full else math.nan,
        paper_min_rank_within_tol=min_rank_within(theirs, theirs.values(), tolerance, lower) if full else None,
    )


def write_summary(exp: Experiment, dest: Path, tolerance: float) -> list[Path]:
    summary = rank_summary(exp, tolerance)
    paths = [dest / "summary.csv", dest / "summary.md"]
    summary.to_csv(paths[0], index=False)
    text = [[("–" if pd.isna(v) else f"{v:.2f}" if isinstance(v, float) else str(v), False) for v in r]
            for r in summary.itertuples(index=False)]
    md = f"# Rank-curve summary ({exp.name})\n\n"
    md += markdown_table(SUMMARY_COLUMNS, text) if text else "No finished run has metrics.\n"
    md += (
        "\n- Curves: mean over seeds per rank 1..r_max, Table 2 metrics (percent where the metric is a fraction).\n"
        "- auc: trapezoid area under the curve divided by the rank span (a flat curve at v gives v).\n"
        "- auc_log2: the same over log2(rank), divided by log2(r_max / r_min): each doubling of the rank weighs "
        "alike, so low ranks count as much as high ones (AURAC, as MatryoshkaLoRA reports it).\n"
        f"- min_rank_within_tol: the smallest rank within {tolerance:g} point(s) of the best rank's value.\n"
        f"- paper_*: the same on {paper.EACL}'s curve, where it prints every rank shown.\n\n"
    )
    md += issues_markdown(exp.issues)
    paths[1].write_text(md)
    return paths
