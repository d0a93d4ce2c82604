"""Tables, rank curves and summaries from run records, beside the paper's numbers.

For each experiment under ``out_dir`` this writes, into ``<results_dir>/<experiment>/``:

* ``table1.{md,csv,tex}``: the workshop paper's Table 1 shape, per method one row "average over
  ranks r_min..r_max" and one row "rank r_max"; MNLI is the mean of matched and mismatched
  accuracy, MRPC accuracy.
* ``table2.{md,csv,tex}``: the EACL paper's Table 2 shape, one row per rank 1..r_max and
  method, "mean ± std over seeds", the best rank per method and task in bold; MRPC F1, MNLI
  matched accuracy.
* ``rank_curve_<task>.{png,svg}``: metric vs rank per method (Table 2 metrics), ±std band,
  the paper's points overlaid.
* ``summary.{csv,md}``: per task and method, the normalised area under the rank curve and the
  smallest rank within ``tolerance`` points of the best rank.
* ``finding.{csv,md}``: per task, whether LoRA and DyLoRA show the paper's finding (LoRA loses
  more when truncated to r_min, DyLoRA's average over ranks is at least LoRA's, the two agree at
  r_max), on Table 1's metric.

Every table has, per method and row, an "ours" row and, where the paper prints the number, a
"paper" row and a "Δ" (ours − paper) row. Values are percent (×100) for metrics that come in
0..1. The CSVs are long ("tidy"): method, row, source, task, mean, std, n_seeds, best.
Runs that are unfinished, unreadable, superseded, short of ranks, or absent from the
task × method × seed grid are listed under "Missing or unfinished runs", never dropped silently.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dylora import paper  # noqa: E402
from dylora.errors import ConfigError  # noqa: E402
from dylora.records import DONE, RunRecord, iter_runs  # noqa: E402

GLUE = ("mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb")  # the paper's column order
NLG = ("e2e", "dart", "webnlg")
METHOD_ORDER = ("lora", "dylora", "dylora_frozen")
SOURCES = ("ours", "paper", "delta")
SOURCE_LABELS = {"ours": "ours", "paper": "paper", "delta": "Δ"}
AVG = "avg"

# Metrics that arrive as fractions in 0..1 and are shown as percent, like the paper (E2E BLEU,
# METEOR and ROUGE-L included: EACL Table 6 prints them x100). NIST, CIDEr and TER stay raw.
PERCENT = {"accuracy", "f1", "matthews_correlation", "pearson", "spearman", "bleu", "meteor", "rouge_l"}
# ...except DART/WebNLG BLEU, which dylora.metrics.nlg already returns on 0..100 (multi-bleu's scale).
ALREADY_PERCENT = {("dart", "bleu"), ("webnlg", "bleu")}
LOWER_IS_BETTER = {"ter"}
# A task without a fixed metric (synthetic, later tasks) uses the first of these it measured.
FALLBACK_METRICS = ("accuracy", "f1", "matthews_correlation", "pearson", "bleu")
CSV_COLUMNS = ["method", "row", "source", "task", "mean", "std", "n_seeds", "best"]


@dataclass(frozen=True)
class MetricSpec:
    metric: str
    splits: tuple[str, ...]  # several splits are averaged per seed and rank (MNLI m/mm)


def _acc(*splits: str) -> MetricSpec:
    return MetricSpec("accuracy", splits or ("validation",))


TABLE1_METRICS = {
    "mnli": _acc("validation_matched", "validation_mismatched"),
    "sst2": _acc(),
    "mrpc": _acc(),
    "cola": MetricSpec("matthews_correlation", ("validation",)),
    "qnli": _acc(),
    "qqp": _acc(),
    "rte": _acc(),
    "stsb": MetricSpec("pearson", ("validation",)),
}
TABLE2_METRICS = {**TABLE1_METRICS, "mnli": _acc("validation_matched"), "mrpc": MetricSpec("f1", ("validation",)),
                  # NLG: BLEU on the test set, WebNLG on all categories (the paper's number is "All")
                  "e2e": MetricSpec("bleu", ("test",)), "dart": MetricSpec("bleu", ("test",)),
                  "webnlg": MetricSpec("bleu", ("test_all",))}

# Where each task's paper numbers are: (paper_version, table).
TABLE1_PAPER = {t: (paper.WORKSHOP, "Table 1") for t in GLUE}
TABLE2_PAPER = {
    **{t: (paper.EACL, "Table 2") for t in GLUE},
    "e2e": (paper.EACL, "Table 6"),
    "dart": (paper.EACL, "Table 9"),
    "webnlg": (paper.EACL, "Table 9"),
}

# The paper's setup (Table 8 of the EACL paper), to name every departure from it.
PAPER_SETUP = {
    "glue": {"model.name": "roberta-base", "method.r_min": 1, "method.r_max": 8, "method.alpha": 16,
             "trainer.epochs": 30, "trainer.lr": 4e-4, "trainer.batch_size": 32, "seeds": 5, "model.max_length": 512},
    "nlg": {"model.name": "gpt2-medium", "method.r_min": 1, "method.r_max": 4, "method.alpha": 32,
            "trainer.epochs": 5, "trainer.lr": 2e-4, "trainer.batch_size": 8, "seeds": 3, "model.max_length": 512},
}
# Which update rule the paper's label means (EACL Tables 2 and 4).
PAPER_UPDATE_RULE = {"dylora": "all", "dylora_frozen": "frozen"}


# ---------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Issue:
    """A run the report could not use in full."""

    task: str
    method: str
    seed: int | None
    status: str  # unreadable | unfinished | corrupted | absent | superseded | incomplete
    detail: str


@dataclass
class Experiment:
    name: str
    runs: list[RunRecord]  # every record found, usable or not
    used: list[RunRecord]  # one finished run per (task, method, seed)
    issues: list[Issue]

    def metrics(self) -> pd.DataFrame:
        rows = [vars(m) for r in self.used for m in r.metrics]
        return pd.DataFrame(rows, columns=["task", "method", "seed", "rank", "split", "metric", "value"])

    def rank_range(self, task: str, method: str) -> tuple[int, int]:
        """(r_min, r_max) from the configs; a config without them falls back to 1 and the top rank."""
        runs = [r for r in self.used if r.task == task and r.method == method]
        r_min = min(int(_get(r.config, "method.r_min") or 1) for r in runs)
        r_max = max(int(_get(r.config, "method.r_max") or max((m.rank for m in r.metrics), default=1)) for r in runs)
        return r_min, r_max


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def metric_scale(task: str, metric: str) -> float:
    """Factor from the value a run records to the value shown (percent for 0..1 fractions)."""
    return 100.0 if metric in PERCENT and (task, metric) not in ALREADY_PERCENT else 1.0


def _experiment_of(record: RunRecord, root: Path) -> str:
    # An unreadable config.yaml names no experiment: place the run by its path, so it is listed.
    return record.experiment or record.path.relative_to(root).parts[0]


def load_experiments(out_dir: str | Path) -> dict[str, Experiment]:
    """Every experiment under ``out_dir`` (``<out_dir>/<experiment>/...``), by name."""
    root = Path(out_dir)
    if not root.is_dir():
        raise ConfigError(f"out_dir={out_dir} is not a directory; pass out_dir=DIR holding the run records")
    grouped: dict[str, list[RunRecord]] = {}
    for record in iter_runs(root):
        grouped.setdefault(_experiment_of(record, root), []).append(record)
    return {name: _experiment(name, runs, root) for name, runs in sorted(grouped.items())}


def _finished_at(record: RunRecord) -> float:
    return (record.path / DONE).stat().st_mtime


def _experiment(name: str, runs: list[RunRecord], root: Path) -> Experiment:
    issues = []
    by_key: dict[tuple[str, str, int], list[RunRecord]] = {}
    for r in runs:
        where = str(r.path.relative_to(root))
        if not (r.task and r.method and "seed" in r.config):
            why = "config.yaml lacks task.name, method.name or seed" if r.config else r.problem
            issues.append(Issue(r.task or "?", r.method or "?", None, "unreadable", f"{where}: {why}"))
        elif not r.done or r.problem:
            status = "corrupted" if (r.path / DONE).exists() else "unfinished"
            issues.append(Issue(r.task, r.method, r.seed, status, f"{where}: {r.problem or 'not done'}"))
        else:
            by_key.setdefault((r.task, r.method, r.seed), []).append(r)
    used = []
    for key, group in sorted(by_key.items()):
        group.sort(key=_finished_at)
        used.append(group[-1])
        for stale in group[:-1]:  # a re-run with another config: keep the newest, say so
            detail = f"{stale.path.relative_to(root)}: superseded by the newer {group[-1].path.name}"
            issues.append(Issue(*key, "superseded", detail))
    issues += _absent(runs, set(by_key))
    return Experiment(name, runs, used, issues)


def _absent(runs: list[RunRecord], finished: set[tuple[str, str, int]]) -> list[Issue]:
    """The grid is every task × method × seed seen in the experiment; report the holes."""
    known = [r for r in runs if r.task and r.method and "seed" in r.config]
    present = {(r.task, r.method, r.seed) for r in known} | finished
    return [
        Issue(t, m, s, "absent", "no run directory for this combination")
        for t in _task_order(r.task for r in known)
        for m in _method_order(r.method for r in known)
        for s in sorted({r.seed for r in known})
        if (t, m, s) not in present
    ]


def _task_order(tasks: Iterable[str]) -> list[str]:
    order = GLUE + NLG
    return sorted(set(tasks), key=lambda t: (order.index(t) if t in order else len(order), t))


def _method_order(methods: Iterable[str]) -> list[str]:
    return sorted(set(methods), key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))


# ---------------------------------------------------------------------------- scores


def metric_spec(task: str, specs: dict[str, MetricSpec], measured: pd.DataFrame) -> MetricSpec | None:
    """The table's metric for ``task``; for other tasks the first fallback metric it measured."""
    if task in specs:
        return specs[task]
    for metric in FALLBACK_METRICS:
        splits = sorted(measured.loc[measured["metric"] == metric, "split"].unique())
        if splits:
            return MetricSpec(metric, ("validation",) if "validation" in splits else (splits[0],))
    return None


def scores(exp: Experiment, specs: dict[str, MetricSpec]) -> tuple[pd.DataFrame, list[Issue]]:
    """One value per task, method, seed and rank (percent where the metric is a fraction).

    Also the runs short of a split or of a rank in 1..r_max, as issues.
    """
    metrics = exp.metrics()
    parts, issues = [], []
    for task in _task_order(r.task for r in exp.used):  # from the runs: one without metrics is reported
        measured = metrics[metrics["task"] == task]
        spec = metric_spec(task, specs, measured)
        if spec is None:
            issues.append(Issue(task, "*", None, "incomplete", f"none of {FALLBACK_METRICS} measured"))
            continue
        sel = measured[(measured["metric"] == spec.metric) & measured["split"].isin(spec.splits)]
        agg = sel.groupby(["method", "seed", "rank"], as_index=False)["value"].agg(["mean", "count"])
        whole = agg[agg["count"] == len(spec.splits)]  # a rank lacking a split (MNLI mm) is not averaged
        scale = metric_scale(task, spec.metric)
        parts.append(whole.assign(task=task, metric=spec.metric, value=whole["mean"] * scale))
        issues += _short_runs(exp, task, spec, whole)
    columns = ["task", "method", "seed", "rank", "metric", "value"]
    frame = pd.concat(parts)[columns] if parts else pd.DataFrame(columns=columns)
    return frame.reset_index(drop=True), issues


def _short_runs(exp: Experiment, task: str, spec: MetricSpec, whole: pd.DataFrame) -> list[Issue]:
    issues = []
    for r in (r for r in exp.used if r.task == task):
        got = set(whole.loc[(whole["method"] == r.method) & (whole["seed"] == r.seed), "rank"])
        r_max = int(_get(r.config, "method.r_max") or max(got, default=0))
        lacking = sorted(set(range(1, r_max + 1)) - got)
        if lacking:
            detail = f"{r.path.name}: no {spec.metric} on {'+'.join(spec.splits)} at ranks {lacking}"
            issues.append(Issue(task, r.method, r.seed, "incomplete", detail))
    return issues


# ---------------------------------------------------------------------------- tables


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
    name: str
    metrics: dict[str, MetricSpec]
    paper_sources: dict[str, tuple[str, str]]  # task -> (paper_version, table)
    rows: RowFn
    mark_best: bool
    # The workshop table records one metric per task ("task_default"), so it is looked up by task alone.
    paper_by_metric: bool


def _stats(per_seed: pd.Series) -> tuple[float, float]:
    # Sample std (ddof=1), as for "mean ± std over seeds"; undefined for one seed.
    std = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan
    return float(per_seed.mean()), std


def _ours_cells(exp: Experiment, sc: pd.DataFrame, rows: RowFn) -> list[dict[str, Any]]:
    cells = []
    for (task, method), g in sc.groupby(["task", "method"], sort=False):
        r_min, r_max = exp.rank_range(str(task), str(method))
        for key, label, paper_rank, per_seed in rows(g, r_min, r_max):
            mean, std = _stats(per_seed)
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
    sc, issues = scores(exp, spec.metrics)
    tasks = _task_order(sc["task"].unique())
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
    method_rank = {m: i for i, m in enumerate(_method_order(cells["method"].unique()))}
    task_rank = {t: i for i, t in enumerate(_task_order(cells["task"].unique()) + [AVG])}
    keys = dict(_m=cells["method"].map(method_rank), _s=cells["source"].map(SOURCES.index),
                _t=cells["task"].map(task_rank))
    ordered = cells.assign(**keys).sort_values(["_m", "key", "_s", "_t"], kind="stable")
    return ordered.drop(columns=list(keys)).astype({"n_seeds": "Int64"}).reset_index(drop=True)


def table1(exp: Experiment) -> Table:
    title = f"Table 1 ({exp.name}): average over ranks r_min..r_max and rank r_max"
    table = build_table(exp, TableSpec("table1", TABLE1_METRICS, TABLE1_PAPER, _table1_rows, False, False), title)
    table.notes = [
        "Metrics (workshop Table 1): MNLI mean of matched and mismatched accuracy, CoLA Matthews "
        "correlation, STS-B Pearson, all other tasks (MRPC included) accuracy; percent.",
        f"paper = {paper.WORKSHOP} Table 1 (one run per number, no std); Δ = ours − paper.",
    ] + _common_notes(exp)
    return table


def table2(exp: Experiment) -> Table:
    title = f"Table 2 ({exp.name}): every rank 1..r_max, mean ± std over seeds"
    table = build_table(exp, TableSpec("table2", TABLE2_METRICS, TABLE2_PAPER, _table2_rows, True, True), title)
    table.notes = [
        "Metrics (EACL Table 2): MNLI matched accuracy, MRPC F1, CoLA Matthews correlation, STS-B "
        "Pearson, all other tasks accuracy; percent. Bold: the best rank per method and task.",
        f"paper = {paper.EACL} Table 2 (mean ± std over 5 seeds); Δ = ours − paper.",
    ] + _common_notes(exp)
    return table


def _common_notes(exp: Experiment) -> list[str]:
    return [
        "ours = mean ± sample std (ddof=1) over seeds; Avg = mean over the tasks shown (blank when a "
        "task is missing). The paper's Avg is its printed one when all 8 GLUE tasks are shown, else "
        "recomputed over the tasks shown (EACL Table 2 prints LoRA rank-1 Avg 54.90; its tasks give 55.52).",
        *settings_notes(exp),
        *departures(exp),
    ]


# ---------------------------------------------------------------------------- NLG tables (EACL 6 and 9)


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
        sel = metrics[(metrics["task"] == col.task) & (metrics["split"] == col.split) & (metrics["metric"] == col.metric)]
        whole = sel.groupby(["method", "seed", "rank"], as_index=False)["value"].mean()
        parts.append(whole.assign(column=col.key, task=col.task, split=col.split, metric=col.metric,
                                  value=whole["value"] * metric_scale(col.task, col.metric)))
        issues += _short_runs(exp, col.task, MetricSpec(col.metric, (col.split,)), whole)
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()), issues


def _nlg_ours(exp: Experiment, sc: pd.DataFrame) -> list[dict[str, Any]]:
    cells = []
    for (column, method), g in sc.groupby(["column", "method"], sort=False):
        task, split, metric = g.iloc[0][["task", "split", "metric"]]
        _, r_max = exp.rank_range(str(task), str(method))
        for rank, at_rank in g[g["rank"] <= r_max].groupby("rank"):
            mean, std = _stats(at_rank.set_index("seed")["value"])
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
    ] + _common_notes(exp)[1:]
    return table


def _decoding_note(runs: list[RunRecord]) -> str:
    return (f"Decoding: beams {_values(runs, 'task.num_beams')}, length penalty {_values(runs, 'task.length_penalty')}, "
            f"no-repeat n-gram {_values(runs, 'task.no_repeat_ngram_size')} (generated tokens only), max new tokens "
            f"{_values(runs, 'task.max_new_tokens')}; label smoothing {_values(runs, 'trainer.label_smoothing')}, "
            f"warm-up steps {_values(runs, 'trainer.warmup_steps')}.")


def _nlg_sorted(cells: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    method_rank = {m: i for i, m in enumerate(_method_order(cells["method"].unique()))}
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
        for i, method in enumerate(_method_order(of_col["method"].unique())):
            mine = of_col[of_col["method"] == method]
            ours, theirs = mine[mine["source"] == "ours"], mine[mine["source"] == "paper"]
            label = paper.METHODS.get(method, method)
            ax.plot(ours["key"], ours["mean"], marker="o", color=f"C{i}", label=label)
            if not theirs.empty:
                ax.scatter(theirs["key"], theirs["mean"], marker="x", color=f"C{i}", label=f"{label} (paper)")
        ax.set(xlabel="rank b", title=table.labels.get(column, column))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="x-small")
    paths = [dest / f"rank_curves_{table.name}.{ext}" for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------- footnotes


def _values(runs: list[RunRecord], dotted: str) -> str:
    """A setting over the runs: "4", or "4 (cola 6, rte 2)" when some tasks' runs (per_task) differ."""
    found: dict[str, set[str]] = {}
    for r in runs:
        value = _get(r.config, dotted)
        if value is not None:
            found.setdefault(r.task, set()).add(str(value))
    if not found:
        return "unset"
    by_task = {task: "/".join(sorted(found[task])) for task in _task_order(found)}
    counts = Counter(by_task.values())
    common = max(sorted(counts), key=counts.__getitem__)  # the most tasks' value; ties: the smallest text
    others = [f"{task} {v}" for task, v in by_task.items() if v != common]
    return f"{common} ({', '.join(others)})" if others else common


def settings_notes(exp: Experiment) -> list[str]:
    """The settings that matter, as recorded in the configs of the runs used."""
    runs = exp.used
    seeds = sorted({r.seed for r in runs})
    lines = [
        f"Settings: model {_values(runs, 'model.name')}; preset {_values(runs, 'preset')}; "
        f"seeds {', '.join(map(str, seeds)) or 'none'} ({len(seeds)}); "
        f"epochs {_values(runs, 'trainer.epochs')}; max_steps {_values(runs, 'trainer.max_steps')}; "
        f"lr {_values(runs, 'trainer.lr')}; batch size {_values(runs, 'trainer.batch_size')}; "
        f"max_train_samples {_values(runs, 'data.max_train_samples')}; "
        f"max_eval_samples {_values(runs, 'data.max_eval_samples')}."
    ]
    for method in _method_order(r.method for r in runs):
        lines.append(_method_settings(method, [r for r in runs if r.method == method]))
    return lines


def _method_settings(method: str, runs: list[RunRecord]) -> str:
    text = (f"{paper.METHODS.get(method, method)}: r {_values(runs, 'method.r_min')}..{_values(runs, 'method.r_max')}, "
            f"alpha {_values(runs, 'method.alpha')}, scaling {_values(runs, 'method.scaling')}")
    if method == "lora":  # p_B, update rule and masking do not apply to plain LoRA
        return text + "."
    p_b = _values(runs, "method.distribution")
    if "geometric" in p_b:
        p_b += f" (p {_values(runs, 'method.geometric_p')})"
    return (text + f", p_B {p_b}, update rule {_values(runs, 'method.update_rule')}, "
            f"masking {_values(runs, 'method.masking')}.")


def _setup_for(task: str) -> dict[str, Any]:
    return PAPER_SETUP["nlg" if task in NLG else "glue"]


def _model_name(name: Any) -> str:
    return str(name).lower().rsplit("/", 1)[-1]  # "FacebookAI/roberta-base" is roberta-base


def departures(exp: Experiment) -> list[str]:
    """Every way the runs used differ from the paper's setup, one line each."""
    tasks_of: dict[str, set[str]] = {}
    for r in exp.used:
        for line in _run_departures(r):
            tasks_of.setdefault(line, set()).add(r.task)
    every_task = {r.task for r in exp.used}
    seeds = len({r.seed for r in exp.used})
    wanted = max((_setup_for(r.task)["seeds"] for r in exp.used), default=0)
    if seeds < wanted:
        tasks_of[f"{seeds} seed(s) (paper: {wanted})"] = every_task
    return [f"Departure from the paper{_for_tasks(tasks_of[line], every_task)}: {line}." for line in sorted(tasks_of)]


def _for_tasks(tasks: set[str], every_task: set[str]) -> str:
    """Nothing when a departure holds for every task, else the tasks it holds for: " (cola, rte)"."""
    return "" if tasks == every_task else f" ({', '.join(_task_order(tasks))})"


def _number(value: Any) -> float | None:
    """A config value as a number; None when unset or not numeric (YAML 1.1 reads 4e-4 as text)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _same(value: Any, expected: float) -> bool:
    number = _number(value)
    return number is not None and math.isclose(number, float(expected))


def _run_departures(r: RunRecord) -> Iterator[str]:
    setup, c = _setup_for(r.task), r.config
    if _model_name(_get(c, "model.name")) != setup["model.name"]:
        yield f"model {_get(c, 'model.name')} (paper: {setup['model.name']})"
    for key in ("method.r_min", "method.r_max", "method.alpha", "trainer.lr", "trainer.batch_size"):
        value = _get(c, key)
        if value is not None and not _same(value, setup[key]):
            yield f"{key} {value} (paper: {setup[key]})"
    epochs = _number(_get(c, "trainer.epochs"))
    if epochs is not None and epochs < setup["trainer.epochs"]:
        yield f"trainer.epochs {_get(c, 'trainer.epochs')} (paper: {setup['trainer.epochs']})"
    length = _number(_get(c, "model.max_length"))
    if length is not None and length < setup["model.max_length"]:  # longer inputs are truncated
        yield f"model.max_length {_get(c, 'model.max_length')} (paper: {setup['model.max_length']})"
    for key in ("trainer.max_steps", "data.max_train_samples", "data.max_eval_samples"):
        cap = _number(_get(c, key))
        if cap is not None and cap > 0:  # null or -1 means "no cap"
            yield f"{key} {_get(c, key)} caps training or evaluation (paper: no cap)"
    if _get(c, "trainer.group_by_length") is True:
        yield "trainer.group_by_length true: batches of similar length (paper: random batches)"
    if _get(c, "preset") != "paper":
        yield f"preset {_get(c, 'preset')} (paper: paper)"
    yield from _method_departures(r)


def _method_departures(r: RunRecord) -> Iterator[str]:
    c, method = r.config, r.method
    if method not in PAPER_UPDATE_RULE:
        return
    rule = _get(c, "method.update_rule")
    if rule is not None and rule != PAPER_UPDATE_RULE[method]:
        meant = PAPER_UPDATE_RULE[method]
        yield f"{method} with update_rule {rule} (the paper's {paper.METHODS[method]} means {meant})"
    if _get(c, "method.scaling") not in (None, "rank"):
        yield f"{method} scaling {_get(c, 'method.scaling')} (paper Eq. 7: alpha/b, scaling=rank)"
    if _get(c, "method.distribution") not in (None, "uniform"):
        yield f"{method} p_B {_get(c, 'method.distribution')} (paper default: uniform)"


# ---------------------------------------------------------------------------- rendering


def _fmt(mean: float, std: float, source: str) -> str:
    if not math.isfinite(mean):
        return "–"
    if source == "delta":
        return f"{mean:+.2f}"
    return f"{mean:.2f} ± {std:.2f}" if math.isfinite(std) else f"{mean:.2f}"


def _grid(table: Table) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Header and rows of (text, bold) cells, one row per method, row and source."""
    columns = table.tasks + ([AVG] if table.avg else [])
    header = ["Method", "Row", "Source"] + [table.labels.get(t, paper.TASKS.get(t, t)) for t in table.tasks]
    header += ["Avg"] if table.avg else []
    rows = []
    for (method, row, _key, source), g in table.cells.groupby(["method", "row", "key", "source"], sort=False):
        by_task = g.set_index(table.column_field)
        cells = [(paper.METHODS.get(method, method), False), (str(row), False), (SOURCE_LABELS[source], False)]
        for t in columns:
            if t in by_task.index:
                c = by_task.loc[t]
                cells.append((_fmt(c["mean"], c["std"], source), bool(c["best"])))
            else:
                cells.append(("–", False))
        rows.append(cells)
    return header, rows


def markdown_table(header: list[str], rows: list[list[tuple[str, bool]]]) -> str:
    def line(cells: list[str]) -> str:
        # One line per row: multi-line YAML errors are folded, pipes escaped.
        return "| " + " | ".join(" ".join(c.split()).replace("|", "\\|") for c in cells) + " |"
    body = [line([f"**{t}**" if b else t for t, b in r]) for r in rows]
    return "\n".join([line(header), line(["---"] * len(header))] + body) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def tex_escape(text: str) -> str:
    escaped = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    for char, tex in (("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("−", "$-$"), ("×", r"$\times$"), ("–", "--")):
        escaped = escaped.replace(char, tex)  # plain pdflatex has no glyphs for these
    return escaped


def latex_table(header: list[str], rows: list[list[tuple[str, bool]]], caption: str, notes: list[str]) -> str:
    def line(cells: list[tuple[str, bool]]) -> str:
        return " & ".join(rf"\textbf{{{tex_escape(t)}}}" if b else tex_escape(t) for t, b in cells) + r" \\"
    spec = "lll" + "r" * (len(header) - 3)
    return "\n".join([
        r"\begin{table}[ht]", r"\centering", rf"\caption{{{tex_escape(caption)}}}",
        rf"\begin{{tabular}}{{{spec}}}", r"\hline", line([(h, False) for h in header]), r"\hline",
        *(line(r) for r in rows), r"\hline", r"\end{tabular}",
        r"\par\footnotesize " + r" \par ".join(tex_escape(n) for n in notes), r"\end{table}", "",
    ])


def issues_markdown(issues: list[Issue]) -> str:
    head = "## Missing or unfinished runs\n\n"
    if not issues:
        return head + "None: every task × method × seed in the grid finished with all ranks.\n"
    rows = [[(i.task, False), (i.method, False), ("" if i.seed is None else str(i.seed), False),
             (i.status, False), (i.detail, False)] for i in issues]
    return head + markdown_table(["Task", "Method", "Seed", "Status", "Detail"], rows)


def _all_issues(exp: Experiment, extra: list[Issue]) -> list[Issue]:
    return list(dict.fromkeys(exp.issues + extra))  # de-duplicated, order kept


def write_table(table: Table, exp: Experiment, dest: Path) -> list[Path]:
    header, rows = _grid(table)
    notes = table.notes
    body = markdown_table(header, rows) if rows else "No finished run has metrics for this table.\n"
    md = f"# {table.title}\n\n{body}\n" + "".join(f"- {n}\n" for n in notes)
    md += "\n" + issues_markdown(_all_issues(exp, table.issues))
    paths = [dest / f"{table.name}.{ext}" for ext in ("md", "csv", "tex")]
    paths[0].write_text(md)
    table.cells[table.csv_columns].to_csv(paths[1], index=False)
    paths[2].write_text(latex_table(header, rows, table.title, notes))
    return paths


# ---------------------------------------------------------------------------- rank curves


def normalised_auc(ranks: Iterable[float], values: Iterable[float]) -> float:
    """Area under the rank curve (trapezoid rule) divided by the rank span.

    It is in the metric's units: a flat curve at v gives v, so curves over different rank ranges
    compare. The endpoints weigh half, unlike the plain mean over ranks (Table 1's avg row).
    One rank gives its value.
    """
    x, y = np.asarray(list(ranks), float), np.asarray(list(values), float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    if len(x) == 1:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


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
    sc, _ = scores(exp, TABLE2_METRICS)
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
    for task in _task_order(curves["task"].unique()):
        fig, ax = plt.subplots(figsize=(6, 4))
        of_task = curves[curves["task"] == task]
        for i, method in enumerate(_method_order(of_task["method"])):
            _plot_method(ax, of_task[of_task["method"] == method].sort_values("rank"), method, task, f"C{i}")
        metric = of_task["metric"].iloc[0]
        ax.set(xlabel="rank b", ylabel=f"{metric}{' (x100)' if metric_scale(task, metric) == 100 else ''}",
               title=f"{paper.TASKS.get(task, task)} ({exp.name})")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        for ext in ("png", "svg"):
            paths.append(dest / f"rank_curve_{task}.{ext}")
            fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    return paths


def _plot_method(ax: Any, c: pd.DataFrame, method: str, task: str, color: str) -> None:
    label = paper.METHODS.get(method, method)
    ax.plot(c["rank"], c["mean"], marker="o", color=color, label=f"{label} (n={int(c['count'].max())})")
    if (c["count"] > 1).any():
        std = c["std"].fillna(0)
        ax.fill_between(c["rank"], c["mean"] - std, c["mean"] + std, color=color, alpha=0.2)
    theirs = _paper_curve(method, task, c["metric"].iloc[0], c["rank"])
    if theirs:
        ax.scatter(list(theirs), list(theirs.values()), marker="x", color=color, label=f"{label} (paper)")


# ---------------------------------------------------------------------------- summary


SUMMARY_COLUMNS = ["task", "metric", "method", "n_seeds", "ranks", "best_rank", "best", "at_r_max", "auc",
                   "min_rank_within_tol", "tolerance", "paper_auc", "paper_min_rank_within_tol"]


def rank_summary(exp: Experiment, tolerance: float = 1.0) -> pd.DataFrame:
    """Per task and method, on the seed-mean rank curve (Table 2 metrics): best rank, value at
    r_max, normalised AUC, smallest rank within ``tolerance`` points of the best; the same for
    the paper's curve where it prints every rank shown."""
    curves = _curves(exp)
    rows = [
        _summary_row(curves[(curves["task"] == t) & (curves["method"] == m)].sort_values("rank"), tolerance)
        for t in _task_order(curves["task"])
        for m in _method_order(curves.loc[curves["task"] == t, "method"])
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
        min_rank_within_tol=min_rank_within(c["rank"], c["mean"], tolerance, lower), tolerance=tolerance,
        paper_auc=normalised_auc(theirs, theirs.values()) if full else math.nan,
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
        f"- min_rank_within_tol: the smallest rank within {tolerance:g} point(s) of the best rank's value.\n"
        f"- paper_*: the same on {paper.EACL}'s curve, where it prints every rank shown.\n\n"
    )
    md += issues_markdown(exp.issues)
    paths[1].write_text(md)
    return paths


# ---------------------------------------------------------------------------- the paper's finding


FINDING_COLUMNS = ["task", "metric", "r_min", "r_max", "n_seeds", "lora_drop", "dylora_drop", "drop_margin",
                   "lora_avg", "dylora_avg", "gap_at_r_max", "drop_ok", "avg_ok", "r_max_ok", "holds"]


def paper_finding(exp: Experiment, margin: float = 3.0, gap: float = 2.0) -> pd.DataFrame:
    """Per task with LoRA and DyLoRA runs, whether Table 1's metric (seed means) shows the paper's
    finding: LoRA's drop from r_max to r_min exceeds DyLoRA's by at least ``margin`` points
    (drop_ok), DyLoRA's average over ranks r_min..r_max is at least LoRA's (avg_ok), and at r_max
    the two are within ``gap`` points (r_max_ok)."""
    sc, _ = scores(exp, TABLE1_METRICS)
    rows = []
    for task in _task_order(sc["task"].unique()):
        of_task = sc[sc["task"] == task]
        if not {"lora", "dylora"} <= set(of_task["method"]):
            continue
        ranges = {exp.rank_range(task, m) for m in ("lora", "dylora")}
        if len(ranges) != 1:  # the two curves must span the same ranks to be compared
            continue
        r_min, r_max = ranges.pop()
        curve = {m: of_task[(of_task["method"] == m) & of_task["rank"].between(r_min, r_max)]
                 .groupby("rank")["value"].mean() for m in ("lora", "dylora")}
        if any(not {r_min, r_max} <= set(c.index) for c in curve.values()):
            continue
        drop = {m: c[r_max] - c[r_min] for m, c in curve.items()}
        avg = {m: float(c.mean()) for m, c in curve.items()}
        row = dict(task=task, metric=str(of_task["metric"].iloc[0]), r_min=r_min, r_max=r_max,
                   n_seeds=int(of_task["seed"].nunique()), lora_drop=drop["lora"], dylora_drop=drop["dylora"],
                   drop_margin=drop["lora"] - drop["dylora"], lora_avg=avg["lora"], dylora_avg=avg["dylora"],
                   gap_at_r_max=curve["dylora"][r_max] - curve["lora"][r_max])
        row.update(drop_ok=row["drop_margin"] >= margin, avg_ok=avg["dylora"] >= avg["lora"],
                   r_max_ok=abs(row["gap_at_r_max"]) <= gap)
        row["holds"] = row["drop_ok"] and row["avg_ok"] and row["r_max_ok"]
        rows.append(row)
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


def _finding_cell(column: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:+.2f}" if column in ("lora_drop", "dylora_drop", "drop_margin", "gap_at_r_max") else f"{value:.2f}"
    return str(value)


def write_finding(exp: Experiment, dest: Path, margin: float = 3.0, gap: float = 2.0) -> list[Path]:
    finding = paper_finding(exp, margin, gap)
    paths = [dest / "finding.csv", dest / "finding.md"]
    finding.to_csv(paths[0], index=False)
    md = f"# The paper's finding, task by task ({exp.name})\n\n"
    if finding.empty:
        md += "No task has finished LoRA and DyLoRA runs over the same ranks.\n"
    else:
        text = [[(_finding_cell(col, v), False) for col, v in zip(FINDING_COLUMNS, r)]
                for r in finding.astype(object).itertuples(index=False)]
        md += markdown_table(FINDING_COLUMNS, text)
        held = int(finding["holds"].sum())
        md += f"\nThe finding holds on {held} of {len(finding)} task(s).\n"
    unpaired = sorted({r.task for r in exp.used} - set(finding["task"]))
    if unpaired:
        md += f"\nNot compared (no finished LoRA and DyLoRA runs over the same ranks): {', '.join(unpaired)}.\n"
    md += (
        "\n- Table 1's metric, mean over seeds, in points (percent).\n"
        "- drop = value at r_max − value at r_min; drop_margin = lora_drop − dylora_drop; "
        "gap_at_r_max = DyLoRA − LoRA at r_max; avg = mean over ranks r_min..r_max.\n"
        f"- holds: drop_margin >= {margin:g} (LoRA loses more when truncated), dylora_avg >= lora_avg, "
        f"and |gap_at_r_max| <= {gap:g}.\n"
    )
    paths[1].write_text(md)
    return paths


# ---------------------------------------------------------------------------- entry point


def write_report(exp: Experiment, results_dir: str | Path, tolerance: float = 1.0) -> list[Path]:
    """Every table, plot and summary for one experiment, in ``<results_dir>/<experiment>/``."""
    dest = Path(results_dir) / exp.name
    dest.mkdir(parents=True, exist_ok=True)
    paths = write_table(table1(exp), exp, dest) + write_table(table2(exp), exp, dest)
    for table in nlg_tables(exp):
        paths += write_table(table, exp, dest) + plot_nlg_curves(table, dest)
    return paths + plot_rank_curves(exp, dest) + write_summary(exp, dest, tolerance) + write_finding(exp, dest)


def build_report(out_dir: str | Path, results_dir: str | Path, experiment: str | None = None,
                 tolerance: float = 1.0) -> dict[str, list[Path]]:
    """Report every experiment under ``out_dir`` (or only ``experiment``); the paths written, by experiment."""
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ConfigError(f"tolerance={tolerance} must be a finite number >= 0 (points of the metric)")
    experiments = load_experiments(out_dir)
    if experiment is not None:
        if experiment not in experiments:
            known = ", ".join(experiments) or "none"
            raise ConfigError(f"experiment={experiment} has no runs under {out_dir}; experiments found: {known}")
        experiments = {experiment: experiments[experiment]}
    if not experiments:
        raise ConfigError(f"no run records under out_dir={os.fspath(out_dir)}; train first or pass out_dir=DIR")
    return {name: write_report(exp, results_dir, tolerance) for name, exp in experiments.items()}
