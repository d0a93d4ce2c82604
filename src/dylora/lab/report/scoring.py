"""Scores: one value per task, method, seed and rank on each table's metric."""

from __future__ import annotations

import pandas as pd

from dylora.lab import paper
from dylora.lab.report.experiments import (
    FALLBACK_METRICS,
    GLUE,
    Experiment,
    Issue,
    config_value,
    metric_scale,
    task_order,
)
from dylora.tasks.base import TableMetric
from dylora.tasks.registry import table_metric

# Where each task's paper numbers are: (paper_version, table).
TABLE1_PAPER = {t: (paper.WORKSHOP, "Table 1") for t in GLUE}
TABLE2_PAPER = {
    **{t: (paper.EACL, "Table 2") for t in GLUE},
    "e2e": (paper.EACL, "Table 6"),
    "dart": (paper.EACL, "Table 9"),
    "webnlg": (paper.EACL, "Table 9"),
}


def metric_spec(task: str, table: str, measured: pd.DataFrame) -> TableMetric | None:
    """The metric ``table`` ("table1" | "table2") shows for ``task``, as its task definition says;
    for a task without one, the first fallback metric it measured."""
    defined = table_metric(task, table)
    if defined is not None:
        return defined
    for metric in FALLBACK_METRICS:
        splits = sorted(measured.loc[measured["metric"] == metric, "split"].unique())
        if splits:
            return TableMetric(metric, ("validation",) if "validation" in splits else (splits[0],))
    return None


def scores(exp: Experiment, table: str) -> tuple[pd.DataFrame, list[Issue]]:
    """One value per task, method, seed and rank on ``table``'s metric (percent where the metric is
    a fraction).

    Also the runs short of a split or of a rank in 1..r_max, as issues.
    """
    metrics = exp.metrics()
    parts, issues = [], []
    for task in task_order(r.task for r in exp.used):  # from the runs: one without metrics is reported
        measured = metrics[metrics["task"] == task]
        spec = metric_spec(task, table, measured)
        if spec is None:
            issues.append(Issue(task, "*", None, "incomplete", f"none of {FALLBACK_METRICS} measured"))
            continue
        sel = measured[(measured["metric"] == spec.metric) & measured["split"].isin(spec.splits)]
        agg = sel.groupby(["method", "seed", "rank"], as_index=False)["value"].agg(["mean", "count"])
        whole = agg[agg["count"] == len(spec.splits)]  # a rank lacking a split (MNLI mm) is not averaged
        scale = metric_scale(task, spec.metric)
        parts.append(whole.assign(task=task, metric=spec.metric, value=whole["mean"] * scale))
        issues += short_runs(exp, task, spec, whole)
    columns = ["task", "method", "seed", "rank", "metric", "value"]
    frame = pd.concat(parts)[columns] if parts else pd.DataFrame(columns=columns)
    return frame.reset_index(drop=True), issues


def short_runs(exp: Experiment, task: str, spec: TableMetric, whole: pd.DataFrame) -> list[Issue]:
    issues = []
    for r in (r for r in exp.used if r.task == task):
        got = set(whole.loc[(whole["method"] == r.method) & (whole["seed"] == r.seed), "rank"])
        r_max = int(config_value(r.config, "method.r_max") or max(got, default=0))
        lacking = sorted(set(range(1, r_max + 1)) - got)
        if lacking:
            detail = f"{r.path.name}: no {spec.metric} on {'+'.join(spec.splits)} at ranks {lacking}"
            issues.append(Issue(task, r.method, r.seed, "incomplete", detail))
    return issues
