"""Tables 1 and 2: ours, the paper's and Δ cells per method, row and task, plus Avg."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pandas as pd

from dylora.lab import paper
from dylora.lab.report.experiments import (
    AVG,
    CSV_COLUMNS,
    GLUE,
    LOWER_IS_BETTER,
    SOURCES,
    Experiment,
    Issue,
    method_order,
    task_order,
)
from dylora.lab.report.notes import departures, settings_notes
from dylora.lab.report.scoring import TABLE1_PAPER, TABLE2_PAPER, scores


@dataclass
class Table:
    name: str  # file stem
    title: str
    cells: pd.DataFrame  # CSV_COLUMNS plus key (row order) and paper_rank
    tasks: list[str]  # column order, config names
    notes: list[str] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    # NLG tables (6, 9) have a column per task, split and metric, and no Avg
    column_field: str = "task"
    labels: dict[str, str] = field(default_factory=dict)  # column -> header
    avg: bool = True
    csv_columns: list[str] = field(default_factory=lambda: list(CSV_COLUMNS))


# A row function yields, per (task, method) group: (sort key, row label, the paper's rank label, value per seed).
RowFn = Callable[[pd.DataFrame, int, int], Iterator[tuple[int, str, str, pd.Series]]]
ROW_KEY = ["method", "row", "key", "paper_rank"]


@dataclass(frozen=True)
class TableSpec:
    name: str  # "table1" | "table2": also which table metric the task definitions give
    paper_sources: dict[str, tuple[str, str]]  # task -> (paper_version, table)
    rows: RowFn
    mark_best: bool
    # The workshop table records one metric per task ("task_default"), so it is looked up by task alone.
    paper_by_metric: bool


def seed_stats(per_seed: pd.Series) -> tuple[float, float]:
    # Sample std (ddof=1), as for "mean ± std over seeds"; undefined for one seed.
    std = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan
    return float(per_seed.mean()), std


def _ours_cells(exp: Experiment, sc: pd.DataFrame, rows: RowFn) -> list[dict[str, Any]]:
    cells = []
    for (task, method), g in sc.groupby(["task", "method"], sort=False):
        r_min, r_max = exp.rank_range(str(task), str(method))
        for key, label, paper_rank, per_seed in rows(g, r_min, r_max):
            mean, std = seed_stats(per_seed)
            cells.append(dict(method=method, row=label, key=key, paper_rank=paper_rank, source="ours",
                              task=task, mean=mean, std=std, n_seeds=len(per_seed)))
    return cells


def _table1_rows(g: pd.DataFrame, r_min: int, r_max: int) -> Iterator[tuple[int, str, str, pd.Series]]:
    inside = g[g["rank"].between(r_min, r_max)]
    yield 0, f"avg {r_min}..{r_max}", f"avg_{r_min}_{r_max}", inside.groupby("seed")["value"].mean()
    at_max = g[g["rank"] == r_max]
    if not at_max.empty:
        yield 1, f"rank {r_max}", str(r_max), at_max.set_index("seed")["value"]


def _table2_rows(g: pd.DataFrame, r_min: int, r_max: int) -> Iterator[tuple[int, str, str, pd.Series]]:
    for rank, at_rank in g[g["rank"] <= r_max].groupby("rank"):
        yield int(rank), str(rank), str(rank), at_rank.set_index("seed")["value"]


def _paper_cells(ours: pd.DataFrame, spec: TableSpec, metric_of: dict[str, str]) -> list[dict[str, Any]]:
    cells = []
    for row in ours[ROW_KEY].drop_duplicates().itertuples(index=False):
        for task in (t for t in ours["task"].unique() if t in spec.paper_sources):
            version, table = spec.paper_sources[task]
            metric = metric_of[task] if spec.paper_by_metric else None
            entry = paper.paper_entry(table, row.method, task, metric, row.paper_rank, version)
            if entry is not None:
                std = math.nan if entry.std is None else entry.std
                cells.append(dict(row._asdict(), source="paper", task=task, mean=entry.value, std=std,
                                  n_seeds=math.nan))
    return cells


def _delta_cells(ours: pd.DataFrame, theirs: pd.DataFrame) -> list[dict[str, Any]]:
    if theirs.empty:
        return []
    on = ROW_KEY + ["task"]
    both = ours.merge(theirs, on=on, suffixes=("", "_paper"))
    delta = both[on].assign(source="delta", mean=both["mean"] - both["mean_paper"], std=math.nan, n_seeds=math.nan)
    return delta.to_dict("records")


def _avg_cells(cells: pd.DataFrame, tasks: list[str], printed: Callable[[str, str], float | None]):
    """Avg over the table's tasks (blank when one is missing); the paper's printed Avg when the
    table shows exactly the 8 GLUE tasks it was printed for; and Δ of the two."""
    out = []
    for (*key, source), g in cells[cells["source"] != "delta"].groupby(ROW_KEY + ["source"], sort=False):
        means = g.set_index("task")["mean"].reindex(tasks)
        value = float(means.mean()) if means.notna().all() else math.nan
        as_printed = printed(key[0], key[3]) if source == "paper" and set(tasks) == set(GLUE) else None
        value = value if as_printed is None else as_printed
        out.append(dict(zip(ROW_KEY, key), source=source, task=AVG, mean=value, std=math.nan, n_seeds=math.nan))
    avg = pd.DataFrame(out)
    if avg.empty:
        return avg
    return pd.concat([avg, pd.DataFrame(_delta_cells(avg[avg["source"] == "ours"], avg[avg["source"] == "paper"]))])


def _mark_best(cells: pd.DataFrame, metric_of: dict[str, str]) -> pd.DataFrame:
    """best=True on the ours row with the best mean per method and task (first rank on ties)."""
    cells = cells.assign(best=False)
    ours = cells[(cells["source"] == "ours") & cells["mean"].notna()].sort_values("key")
    for (_, task), g in ours.groupby(["method", "task"]):
        lower = metric_of.get(str(task)) in LOWER_IS_BETTER
        cells.loc[g["mean"].idxmin() if lower else g["mean"].idxmax(), "best"] = True
    return cells


def build_table(exp: Experiment, spec: TableSpec, title: str) -> Table:
    """Ours, paper and Δ cells for every row and task, plus Avg; notes are left to the caller."""
    sc, issues = scores(exp, spec.name)
    tasks = task_order(sc["task"].unique())
    metric_of = dict(zip(sc["task"], sc["metric"]))
    ours = pd.DataFrame(_ours_cells(exp, sc, spec.rows))
    if ours.empty:
        return Table(spec.name, title, pd.DataFrame(columns=CSV_COLUMNS + ["key", "paper_rank"]), [], issues=issues)
    theirs = pd.DataFrame(_paper_cells(ours, spec, metric_of))
    cells = pd.concat([ours, theirs, pd.DataFrame(_delta_cells(ours, theirs))], ignore_index=True)
    cells = pd.concat([cells, _avg_cells(cells, tasks, _printed_avg(spec))], ignore_index=True)
    cells = _mark_best(cells, metric_of) if spec.mark_best else cells.assign(best=False)
    return Table(spec.name, title, _sorted(cells), tasks, issues=issues)


def _printed_avg(spec: TableSpec) -> Callable[[str, str], float | None]:
    version, table = spec.paper_sources["mnli"]  # the GLUE table; used only when all GLUE tasks are shown
    return lambda method, paper_rank: paper.paper_value(table, method, "Avg", None, paper_rank, version)


def _sorted(cells: pd.DataFrame) -> pd.DataFrame:
    """Methods, rows, then ours/paper/Δ, tasks in the paper's order with Avg last."""
    method_rank = {m: i for i, m in enumerate(method_order(cells["method"].unique()))}
    task_rank = {t: i for i, t in enumerate(task_order(cells["task"].unique()) + [AVG])}
    keys = dict(_m=cells["method"].map(method_rank), _s=cells["source"].map(SOURCES.index),
                _t=cells["task"].map(task_rank))
    ordered = cells.assign(**keys).sort_values(["_m", "key", "_s", "_t"], kind="stable")
    return ordered.drop(columns=list(keys)).astype({"n_seeds": "Int64"}).reset_index(drop=True)


def table1(exp: Experiment) -> Table:
    title = f"Table 1 ({exp.name}): average over ranks r_min..r_max and rank r_max"
    table = build_table(exp, TableSpec("table1", TABLE1_PAPER, _table1_rows, False, False), title)
    table.notes = [
        "Metrics (workshop Table 1): MNLI mean of matched and mismatched accuracy, CoLA Matthews "
        "correlation, STS-B Pearson, all other tasks (MRPC included) accuracy; percent.",
        f"paper = {paper.WORKSHOP} Table 1 (one run per number, no std); Δ = ours − paper.",
    ] + common_notes(exp)
    return table


def table2(exp: Experiment) -> Table:
    title = f"Table 2 ({exp.name}): every rank 1..r_max, mean ± std over seeds"
    table = build_table(exp, TableSpec("table2", TABLE2_PAPER, _table2_rows, True, True), title)
    table.notes = [
        "Metrics (EACL Table 2): MNLI matched accuracy, MRPC F1, CoLA Matthews correlation, STS-B "
        "Pearson, all other tasks accuracy; percent. Bold: the best rank per method and task.",
        f"paper = {paper.EACL} Table 2 (mean ± std over 5 seeds); Δ = ours − paper.",
    ] + common_notes(exp)
    return table


def common_notes(exp: Experiment) -> list[str]:
    return [
        "ours = mean ± sample std (ddof=1) over seeds; Avg = mean over the tasks shown (blank when a "
        "task is missing). The paper's Avg is its printed one when all 8 GLUE tasks are shown, else "
        "recomputed over the tasks shown (EACL Table 2 prints LoRA rank-1 Avg 54.90; its tasks give 55.52).",
        *settings_notes(exp),
        *departures(exp),
    ]
