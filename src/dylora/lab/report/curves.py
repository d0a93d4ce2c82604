"""Rank curves per task (Table 2 metrics), and their summary: normalised AUC (over rank and over log2 rank),
smallest good rank."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from dylora.errors import ConfigError
from dylora.lab import paper
from dylora.lab.report.evidence import curve_bands
from dylora.lab.report.experiments import (
    LOWER_IS_BETTER,
    SVD,
    Experiment,
    method_label,
    method_order,
    metric_range,
    metric_scale,
    task_order,
    trained_method,
)
from dylora.lab.report.figures import plt, save_figure
from dylora.lab.report.render import issues_markdown, markdown_table
from dylora.lab.report.scoring import TABLE2_PAPER, metric_spec, scores
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


BAND = "band: 90 % interval of the mean over seeds (seeds and dev rows)"
BAND_ONE_SEED = "band: 90 % interval over the dev rows (one seed: training noise not in it)"
NO_BAND = "no band: these runs kept no predictions"


def plot_rank_curves(exp: Experiment, dest: Path) -> list[Path]:
    """One figure per task, one panel per truncation (prefix; SVD where evaluated): each method's mean over
    seeds by rank, its 90 % interval as a band where its runs kept predictions, rank 0 (the adapter off) as
    a hollow square, the paper's points as black-edged crosses; the legend beside the panels."""
    curves, paths = _curves(exp), []
    off = _adapter_off(exp)
    for task in task_order(curves["task"].unique()):
        of_task = curves[curves["task"] == task]
        methods = method_order(of_task["method"])
        panels = [p for p in ("prefix", "svd") if any((SVD in m) == (p == "svd") for m in methods)]
        bands = curve_bands(exp, task)
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), sharey=True, squeeze=False)
        colors = {trained_method(m): f"C{i}" for i, m in enumerate(dict.fromkeys(map(trained_method, methods)))}
        for ax, panel in zip(axes[0], panels):
            in_panel = [m for m in methods if (SVD in m) == (panel == "svd")]
            for method in in_panel:
                c = of_task[of_task["method"] == method].sort_values("rank")
                _plot_method(ax, c, method, task, colors[trained_method(method)], bands, off.get((task, method)))
            ax.set(xlabel="rank b (0: adapter off)" if any((task, m) in off for m in in_panel) else "rank b",
                   title="prefix truncation (the paper's)" if panel == "prefix" else "SVD truncation")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        metric = of_task["metric"].iloc[0]
        axes[0][0].set_ylabel(f"{metric}{' (%)' if metric_scale(task, metric) == 100 else ''}")
        band = (BAND if of_task["count"].max() > 1 else BAND_ONE_SEED) if bands else NO_BAND
        fig.suptitle(f"{paper.TASKS.get(task, task)} ({exp.name}); {band}", fontsize="medium")
        handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels())}
        if any(t == task for t, _ in off):
            handles["adapter off (rank 0)"] = Line2D([], [], marker="s", markerfacecolor="none", color="grey",
                                                     linestyle="none")
        fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
        fig.tight_layout()
        for ext in ("png", "svg"):
            paths.append(save_figure(fig, dest / f"rank_curve_{task}.{ext}"))
        plt.close(fig)
    return paths


def _adapter_off(exp: Experiment) -> dict[tuple[str, str], float]:
    """(task, method) -> the mean over seeds of the rank-0 score (Table 2 metric), where recorded."""
    rows, measured = exp.metrics(adapter_off=True), exp.metrics()
    out = {}
    for (task, method), group in rows.groupby(["task", "method"]):
        spec = metric_spec(task, "table2", measured)
        sel = group[(group["metric"] == spec.metric) & group["split"].isin(spec.splits)] if spec else group[:0]
        if len(sel):
            per_seed = sel.groupby("seed")["value"].mean()
            out[(task, method)] = float(per_seed.mean()) * metric_scale(task, spec.metric)
    return out


def band_limits(band: list[Any], metric: str) -> tuple[list[float], list[float]] | None:
    """A curve's band (its intervals, rank by rank) as lower and upper limits within the metric's range, since
    the mean cannot leave it (a Pearson of 99 ± 3 is drawn up to 100); None when some rank has no interval."""
    if not band or any(b is None for b in band):
        return None
    lo, hi = metric_range(metric) or (-math.inf, math.inf)
    return [max(b.lo, lo) for b in band], [min(b.hi, hi) for b in band]


def _plot_method(ax: Any, c: pd.DataFrame, method: str, task: str, color: str,
                 bands: dict[tuple[str, int], Any], off: float | None) -> None:
    label = method_label(method)
    ax.plot(c["rank"], c["mean"], marker="o", color=color, label=f"{label} (n={int(c['count'].max())})")
    band = band_limits([bands.get((method, int(r))) for r in c["rank"]], c["metric"].iloc[0])
    if band is not None:
        ax.fill_between(c["rank"], *band, color=color, alpha=0.2)
    if off is not None:
        ax.plot([0], [off], marker="s", markerfacecolor="none", color=color, linestyle="none")
        ax.plot([0, int(c["rank"].min())], [off, float(c["mean"].iloc[0])], color=color, linestyle=":", alpha=0.6)
    theirs = _paper_curve(method, task, c["metric"].iloc[0], c["rank"])
    if theirs:
        ax.scatter(list(theirs), list(theirs.values()), marker="X", s=60, color=color, edgecolors="black",
                   linewidths=0.8, zorder=3, label=f"{label} (paper)")


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
