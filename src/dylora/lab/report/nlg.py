"""NLG tables (EACL Tables 6 and 9): a column per task, split and metric; and their rank curves."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dylora.lab import paper
from dylora.lab.report.experiments import (
    LOWER_IS_BETTER,
    SOURCES,
    Experiment,
    Issue,
    method_label,
    method_order,
    metric_scale,
)
from dylora.lab.report.figures import plt, save_figure
from dylora.lab.report.notes import setting_values
from dylora.lab.report.scoring import short_runs
from dylora.lab.report.tables import Table, common_notes, seed_stats
from dylora.records import RunRecord
from dylora.tasks.base import TableMetric


@dataclass(frozen=True)
class NLGColumn:
    task: str
    split: str
    metric: str

    @property
    def key(self) -> str:
        return f"{self.task}/{self.split}/{self.metric}"


_E2E = [NLGColumn("e2e", "test", m) for m in ("bleu", "nist", "meteor", "rouge_l", "cider")]
_DART_WEBNLG = (
    [NLGColumn("dart", "test", m) for m in ("bleu", "meteor", "ter")]
    + [NLGColumn("webnlg", "test_all", m) for m in ("bleu", "meteor", "ter")]
    + [NLGColumn("webnlg", f"test_{s}", m) for s in ("seen", "unseen") for m in ("bleu", "ter")]
)
# name, the paper's table, columns; the paper's WebNLG number is the "All" test set (setup doc §7).
NLG_TABLES = (("table6", "Table 6", _E2E), ("table9", "Table 9", _DART_WEBNLG))
PAPER_SPLITS = {"test", "test_all"}
NLG_CSV_COLUMNS = ["method", "row", "source", "task", "split", "metric", "mean", "std", "n_seeds", "best"]
_METRIC_LABELS = {"bleu": "BLEU", "nist": "NIST", "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr",
                  "ter": "TER"}


def _column_label(col: NLGColumn) -> str:
    subset = col.split.removeprefix("test_") if col.split.startswith("test_") else ""
    return " ".join(x for x in (paper.TASKS.get(col.task, col.task), subset, _METRIC_LABELS[col.metric]) if x)


def nlg_scores(exp: Experiment, columns: list[NLGColumn]) -> tuple[pd.DataFrame, list[Issue]]:
    """One shown value per column, method, seed and rank (see ``metric_scale``); runs short of a rank as issues."""
    metrics, parts, issues = exp.metrics(), [], []
    run_tasks = {r.task for r in exp.used}
    for col in (c for c in columns if c.task in run_tasks):
        sel = metrics[(metrics["task"] == col.task) & (metrics["split"] == col.split)
                      & (metrics["metric"] == col.metric)]
        whole = sel.groupby(["method", "seed", "rank"], as_index=False)["value"].mean()
        parts.append(whole.assign(column=col.key, task=col.task, split=col.split, metric=col.metric,
                                  value=whole["value"] * metric_scale(col.task, col.metric)))
        issues += short_runs(exp, col.task, TableMetric(col.metric, (col.split,)), whole)
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()), issues


def _nlg_ours(exp: Experiment, sc: pd.DataFrame) -> list[dict[str, Any]]:
    cells = []
    for (column, method), g in sc.groupby(["column", "method"], sort=False):
        task, split, metric = g.iloc[0][["task", "split", "metric"]]
        _, r_max = exp.rank_range(str(task), str(method))
        for rank, at_rank in g[g["rank"] <= r_max].groupby("rank"):
            mean, std = seed_stats(at_rank.set_index("seed")["value"])
            cells.append(dict(method=method, row=str(rank), key=int(rank), paper_rank=str(rank), source="ours",
                              column=column, task=task, split=split, metric=metric, mean=mean, std=std,
                              n_seeds=len(at_rank)))
    return cells


def _nlg_paper(ours: pd.DataFrame, table: str) -> list[dict[str, Any]]:
    cells = []
    for c in ours[ours["split"].isin(PAPER_SPLITS)].to_dict("records"):
        entry = paper.paper_entry(table, c["method"], c["task"], c["metric"], c["paper_rank"], paper.EACL)
        if entry is not None:
            std = math.nan if entry.std is None else entry.std
            cells.append(dict(c, source="paper", mean=entry.value, std=std, n_seeds=math.nan))
    return cells


def _nlg_best(cells: pd.DataFrame) -> pd.DataFrame:
    """best=True on the ours row with the best mean per method and column (lower for TER)."""
    cells = cells.assign(best=False)
    ours = cells[(cells["source"] == "ours") & cells["mean"].notna()].sort_values("key")
    for (_, column), g in ours.groupby(["method", "column"]):
        lower = g["metric"].iloc[0] in LOWER_IS_BETTER
        cells.loc[g["mean"].idxmin() if lower else g["mean"].idxmax(), "best"] = True
    return cells


def nlg_table(exp: Experiment, name: str, paper_table: str, columns: list[NLGColumn]) -> Table:
    """EACL Table 6/9 shape: a row per rank and method, a column per task, split and metric."""
    sc, issues = nlg_scores(exp, columns)
    title = f"{paper_table} shape ({exp.name}): every rank 1..r_max, mean ± std over seeds"
    shown = [c for c in columns if not sc.empty and c.key in set(sc["column"])]
    table = Table(name, title, pd.DataFrame(columns=NLG_CSV_COLUMNS + ["key", "column"]), [c.key for c in shown],
                  issues=issues, column_field="column", labels={c.key: _column_label(c) for c in shown}, avg=False,
                  csv_columns=NLG_CSV_COLUMNS)
    if shown:
        ours = pd.DataFrame(_nlg_ours(exp, sc))
        theirs = pd.DataFrame(_nlg_paper(ours, paper_table))
        on = ["method", "row", "key", "paper_rank", "column"]
        cells = [ours, theirs]
        if not theirs.empty:
            both = ours.merge(theirs[on + ["mean"]], on=on, suffixes=("", "_paper"))
            cells.append(both.assign(source="delta", mean=both["mean"] - both["mean_paper"], std=math.nan,
                                     n_seeds=math.nan).drop(columns="mean_paper"))
        table.cells = _nlg_sorted(_nlg_best(pd.concat(cells, ignore_index=True)), [c.key for c in shown])
    table.notes = [
        "Scales: E2E BLEU, METEOR and ROUGE-L, and every METEOR, x100 (they are recorded in 0..1); DART/WebNLG "
        "BLEU as recorded (0..100, multi-bleu); NIST, CIDEr and TER raw (TER lower is better). Bold: best rank.",
        f"paper = {paper.EACL} {paper_table} (LoRA: one run trained at r_max, no std; DyLoRA: mean ± std over "
        "seeds); Δ = ours − paper. The paper's WebNLG number is compared with our all-categories test set; "
        "it prints no METEOR for DART/WebNLG and no seen/unseen split.",
        "ours = mean ± sample std (ddof=1) over seeds. " + _decoding_note(exp.used),
    ] + common_notes(exp)[1:]
    return table


def _decoding_note(runs: list[RunRecord]) -> str:
    return (f"Decoding: beams {setting_values(runs, 'task.num_beams')}, "
            f"length penalty {setting_values(runs, 'task.length_penalty')}, "
            f"no-repeat n-gram {setting_values(runs, 'task.no_repeat_ngram_size')} (generated tokens only), "
            f"max new tokens {setting_values(runs, 'task.max_new_tokens')}; "
            f"label smoothing {setting_values(runs, 'trainer.label_smoothing')}, "
            f"warm-up steps {setting_values(runs, 'trainer.warmup_steps')}.")


def _nlg_sorted(cells: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    method_rank = {m: i for i, m in enumerate(method_order(cells["method"].unique()))}
    keys = dict(_m=cells["method"].map(method_rank), _s=cells["source"].map(SOURCES.index),
                _c=cells["column"].map(order.index))
    ordered = cells.assign(**keys).sort_values(["_m", "key", "_s", "_c"], kind="stable")
    return ordered.drop(columns=list(keys)).astype({"n_seeds": "Int64"}).reset_index(drop=True)


def nlg_tables(exp: Experiment) -> list[Table]:
    """Table 6 when the experiment has E2E runs, Table 9 when it has DART or WebNLG runs."""
    tasks = {r.task for r in exp.used}
    return [nlg_table(exp, name, table, cols) for name, table, cols in NLG_TABLES
            if tasks & {c.task for c in cols}]


def plot_nlg_curves(table: Table, dest: Path) -> list[Path]:
    """One figure per NLG table: a panel per column, metric vs rank per method, the paper's points as crosses."""
    if not table.tasks:
        return []
    n = len(table.tasks)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, column in zip(axes[0], table.tasks):
        of_col = table.cells[table.cells["column"] == column]
        for i, method in enumerate(method_order(of_col["method"].unique())):
            mine = of_col[of_col["method"] == method]
            ours, theirs = mine[mine["source"] == "ours"], mine[mine["source"] == "paper"]
            label = method_label(method)
            ax.plot(ours["key"], ours["mean"], marker="o", color=f"C{i}", label=label)
            if not theirs.empty:
                ax.scatter(theirs["key"], theirs["mean"], marker="x", color=f"C{i}", label=f"{label} (paper)")
        ax.set(xlabel="rank b", title=table.labels.get(column, column))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="x-small")
    paths = [dest / f"rank_curves_{table.name}.{ext}" for ext in ("png", "svg")]
    for path in paths:
        save_figure(fig, path)
    plt.close(fig)
    return paths
