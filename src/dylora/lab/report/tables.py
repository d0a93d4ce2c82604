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
    method_label,
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
    # (task, method) whose every seed scores one value at every rank: the adapter changes nothing there
    flat: dict[tuple[str, str], float] = field(default_factory=dict)


# A row function yields, per (task, method) group: (sort key, row label, the paper's rank label, value per seed).
RowFn = Callable[[pd.DataFrame, int, int], Iterator[tuple[int, str, str, pd.Series]]]
ROW_KEY = ["method", "row", "key", "paper_rank"]


@dataclass(frozen=True)
class TableSpec:
    name: str  # file stem
    paper_sources: dict[str, tuple[str, str]]  # task -> (paper_version, table)
    rows: RowFn
    mark_best: bool
    # The workshop table records one metric per task ("task_default"), so it is looked up by task alone.
    paper_by_metric: bool
    metrics: str = "table2"  # which table's metric the task definitions give: "table1" | "table2"
    # our method -> (the paper's method, text of its notes) where the paper tells variants apart in notes
    paper_methods: dict[str, tuple[str, str]] = field(default_factory=dict)
    printed_avg_over: tuple[str, ...] = GLUE  # the tasks the paper's printed Avg covers


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
            method, variant = spec.paper_methods.get(row.method, (row.method, None))
            entry = paper.paper_entry(table, method, task, metric, row.paper_rank, version, variant)
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


def _avg_cells(cells: pd.DataFrame, tasks: list[str], printed: Callable[[str, str], float | None],
               printed_over: tuple[str, ...]):
    """Avg over the table's tasks (blank when one is missing); the paper's printed Avg when the
    table shows exactly the tasks it was printed for; and Δ of the two."""
    out = []
    for (*key, source), g in cells[cells["source"] != "delta"].groupby(ROW_KEY + ["source"], sort=False):
        means = g.set_index("task")["mean"].reindex(tasks)
        value = float(means.mean()) if means.notna().all() else math.nan
        as_printed = printed(key[0], key[3]) if source == "paper" and set(tasks) == set(printed_over) else None
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
    sc, issues = scores(exp, spec.metrics)
    tasks = task_order(sc["task"].unique())
    metric_of = dict(zip(sc["task"], sc["metric"]))
    ours = pd.DataFrame(_ours_cells(exp, sc, spec.rows))
    if ours.empty:
        return Table(spec.name, title, pd.DataFrame(columns=CSV_COLUMNS + ["key", "paper_rank"]), [], issues=issues)
    theirs = pd.DataFrame(_paper_cells(ours, spec, metric_of))
    cells = pd.concat([ours, theirs, pd.DataFrame(_delta_cells(ours, theirs))], ignore_index=True)
    cells = pd.concat([cells, _avg_cells(cells, tasks, _printed_avg(spec), spec.printed_avg_over)], ignore_index=True)
    cells = _mark_best(cells, metric_of) if spec.mark_best else cells.assign(best=False)
    return Table(spec.name, title, _sorted(cells), tasks, issues=issues)


def _printed_avg(spec: TableSpec) -> Callable[[str, str], float | None]:
    version, table = spec.paper_sources[spec.printed_avg_over[0]]  # used only when all those tasks are shown

    def printed(method: str, paper_rank: str) -> float | None:
        name, variant = spec.paper_methods.get(method, (method, None))
        return paper.paper_value(table, name, "Avg", None, paper_rank, version, variant)
    return printed


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
    table = build_table(exp, TableSpec("table1", TABLE1_PAPER, _table1_rows, False, False, "table1"), title)
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


# Table 4's rows: p_B x update rule, as our methods; the paper tells p_B apart in its notes only
TABLE4_METHODS = {
    "dylora": ("DyLoRA", "p_B=uniform"),
    "dylora_frozen": ("DyLoRA (Frozen)", "p_B=uniform"),
    "dylora_geometric": ("DyLoRA", "p_B=geometric"),
    "dylora_frozen_geometric": ("DyLoRA (Frozen)", "p_B=geometric"),
}
TABLE4_TASKS = ("sst2", "mrpc", "cola", "qnli", "rte", "stsb")


def _table4_rows(g: pd.DataFrame, r_min: int, r_max: int) -> Iterator[tuple[int, str, str, pd.Series]]:
    for rank in sorted({r_min, r_max}):
        at_rank = g[g["rank"] == rank]
        if not at_rank.empty:
            yield rank, f"rank {rank}", str(rank), at_rank.set_index("seed")["value"]


def table4(exp: Experiment) -> Table:
    """The p_B and update-rule ablation: each variant at ranks r_min and r_max (the paper: 1 and 8)."""
    variants = Experiment(exp.name, exp.runs, [r for r in exp.used if r.method in TABLE4_METHODS], exp.issues)
    spec = TableSpec("table4", {t: (paper.EACL, "Table 4") for t in TABLE4_TASKS}, _table4_rows, False, True,
                     paper_methods=TABLE4_METHODS, printed_avg_over=TABLE4_TASKS)
    table = build_table(variants, spec, f"Table 4 ({exp.name}): p_B and the update rule at ranks 1 and r_max")
    table.notes = [
        "Rows: p_B uniform (DyLoRA, DyLoRA (Frozen)) or geometric with p = 0.15, x rows 1..b learn "
        "(DyLoRA) or row b only (Frozen); each evaluated at rank 1 and at r_max. Metrics as EACL Table 2; "
        "percent.",
        f"paper = {paper.EACL} Table 4 (mean ± std over 5 seeds); its Avg is over its six tasks (SST-2, "
        "MRPC, CoLA, QNLI, RTE, STS-B), printed here only when all six are shown; Δ = ours − paper.",
    ] + common_notes(variants)
    return table


# Table 7's rows: our methods -> the paper's labels for them
TABLE7_METHODS = {
    "dylora": "DyLoRA (individual loss L_DY_b, Eq. 9)",
    "dylora_sum": "DyLoRA (nested-dropout summation loss sum_b p_B(b) L_DY_b)",
}


def table7(exp: Experiment) -> Table:
    """One sampled rank per step vs the summed loss: the average over ranks and the measured training time."""
    runs = Experiment(exp.name, exp.runs, [r for r in exp.used if r.method in TABLE7_METHODS], exp.issues)
    sc, issues = scores(runs, "table2")
    cells, flat = [], {}
    for (task, method), g in sc.groupby(["task", "method"], sort=False):
        r_min, r_max = runs.rank_range(str(task), str(method))
        seconds = {r.seed: float(r.env["train_seconds"]) for r in runs.used
                   if (r.task, r.method) == (task, method) and "train_seconds" in r.env}
        swept = g[g["rank"].between(r_min, r_max)]
        if (swept.groupby("seed")["value"].nunique() == 1).all():
            flat[(str(task), str(method))] = float(swept["value"].mean())
        rows = [(f"avg {r_min}..{r_max}", f"avg_{r_min}_{r_max}", swept.groupby("seed")["value"].mean()),
                ("training s", f"rmax_{r_max}", pd.Series(seconds, dtype=float))]
        for key, (label, paper_rank, per_seed) in enumerate(rows):
            base = dict(method=method, row=label, key=key, paper_rank=paper_rank, task=task, best=False)
            mean, std = seed_stats(per_seed) if len(per_seed) else (math.nan, math.nan)
            cells.append(dict(base, source="ours", mean=mean, std=std, n_seeds=len(per_seed)))
            entry = paper.paper_entry("Table 7", TABLE7_METHODS[method], str(task), None, paper_rank, paper.EACL)
            if entry is not None:
                cells.append(dict(base, source="paper", mean=entry.value, std=math.nan, n_seeds=math.nan))
                if key == 0:  # seconds on 7 V100s and on this machine are not comparable
                    cells.append(dict(base, source="delta", mean=mean - entry.value, std=math.nan, n_seeds=math.nan))
    frame = pd.DataFrame(cells, columns=CSV_COLUMNS + ["key", "paper_rank"])
    table = Table("table7", f"Table 7 ({exp.name}): one sampled rank per step vs the summed loss",
                  _sorted(frame) if cells else frame, task_order(sc["task"].unique()), issues=issues, avg=False,
                  flat=flat)
    table.notes = [
        "Rows: the average of the EACL Table 2 metric over ranks r_min..r_max (percent), and the measured "
        "training time in seconds (train_seconds in env.json; the rank sweep excluded).",
        *_time_ratio(frame),
        f"paper = {paper.EACL} Table 7 (CoLA, 7 GPUs, fewer epochs than its main runs, one number each); "
        "Δ only for the metric: the paper's seconds are another machine's.",
    ] + common_notes(runs)
    return table


def _cell(cells: pd.DataFrame, method: str, row_start: str, source: str, task: str) -> float:
    """The mean of one cell (its row named by how it starts); nan where the table has none."""
    hit = cells[(cells["method"] == method) & cells["row"].astype(str).str.startswith(row_start)
                & (cells["source"] == source) & (cells["task"] == task)]
    return float(hit["mean"].iloc[0]) if len(hit) == 1 else math.nan


def _time_ratio(cells: pd.DataFrame) -> list[str]:
    lines = []
    for task in dict.fromkeys(cells["task"]):
        ours, theirs = (_cell(cells, "dylora_sum", "training", s, task) / _cell(cells, "dylora", "training", s, task)
                        for s in ("ours", "paper"))
        if math.isfinite(ours):
            paper_part = f"; paper {theirs:.2f}x" if math.isfinite(theirs) else ""
            lines.append(f"Training time, summed / sampled loss, {paper.TASKS.get(task, task)}: ours {ours:.2f}x"
                         f"{paper_part}.")
    return lines


RESOLUTION = 1.0  # points: with one seed a smaller difference is not resolved either way


def verdict(difference: float) -> str:
    """A one-seed verdict on a claim that ``difference`` (points) is positive."""
    if not math.isfinite(difference):
        return "not measured"
    if abs(difference) < RESOLUTION:
        return f"not resolved (under {RESOLUTION:g} point)"
    return "shown" if difference > 0 else "not shown"


def table4_findings(table: Table) -> list[str]:
    """The paper's Table 4 reading: training rows 1..b beats training row b only, at rank 1 and r_max."""
    lines, cells = [], table.cells
    for row in dict.fromkeys(cells["row"]):
        ours, theirs = (_cell(cells, "dylora", row, s, AVG) - _cell(cells, "dylora_frozen", row, s, AVG)
                        for s in ("ours", "paper"))
        paper_part = f"paper {theirs:+.2f} over its tasks shown" if math.isfinite(theirs) else "paper: not shown"
        lines.append(f"Table 4, {row}: DyLoRA (rows 1..b) scores above DyLoRA (Frozen) on the average, uniform "
                     f"p_B ({paper_part}): ours {ours:+.2f}: {verdict(ours)}.")
    return lines


def table7_findings(table: Table) -> list[str]:
    """The paper's Table 7 reading: the summed loss scores higher, at about 1.8x the training time."""
    cells, lines = table.cells, []
    for task in table.tasks:
        gain, ratio = ({s: _cell(cells, "dylora_sum", "avg", s, task) - _cell(cells, "dylora", "avg", s, task)
                        for s in ("ours", "paper")},
                       {s: _cell(cells, "dylora_sum", "training", s, task) / _cell(cells, "dylora", "training", s, task)
                        for s in ("ours", "paper")})

        def times(source: str) -> str:
            return f"{ratio[source]:.2f}x the training time" if math.isfinite(ratio[source]) else "time not measured"

        paper_part = f"paper {gain['paper']:+.2f} at {times('paper')}" if math.isfinite(gain["paper"]) else \
            "paper: not shown"
        flat = [f"{method_label(m)} scores {table.flat[(task, m)]:.2f} at every rank" for m in TABLE7_METHODS
                if (task, m) in table.flat]
        # a run whose adapter changes nothing at any rank did not learn the task: no loss is compared there
        said = f"not resolved ({'; '.join(flat)}: that run did not learn the task)" if flat else verdict(gain["ours"])
        lines.append(f"Table 7, {paper.TASKS.get(task, task)}: the summed loss scores higher on the average over "
                     f"ranks ({paper_part}): ours {gain['ours']:+.2f} at {times('ours')}: {said}.")
    return lines


def common_notes(exp: Experiment) -> list[str]:
    return [
        "ours = mean ± sample std (ddof=1) over seeds; Avg = mean over the tasks shown (blank when a "
        "task is missing). The paper's Avg is its printed one when all 8 GLUE tasks are shown, else "
        "recomputed over the tasks shown (EACL Table 2 prints LoRA rank-1 Avg 54.90; its tasks give 55.52).",
        *settings_notes(exp),
        *departures(exp),
    ]
