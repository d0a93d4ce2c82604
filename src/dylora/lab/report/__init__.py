"""Tables, rank curves and summaries from run records, beside the paper's numbers.

For each experiment under ``out_dir`` this writes, into ``<results_dir>/<experiment>/``:

* ``table1.{md,csv,tex}``: the workshop paper's Table 1 shape, per method one row "average over
  ranks r_min..r_max" and one row "rank r_max"; MNLI is the mean of matched and mismatched
  accuracy, MRPC accuracy.
* ``table2.{md,csv,tex}``: the EACL paper's Table 2 shape, one row per rank 1..r_max and
  method, "mean ± std over seeds", the best rank per method and task in bold; MRPC F1, MNLI
  matched accuracy.
* ``table4.{md,csv,tex}`` (experiments with the p_B ablation's methods, ``dylora_geometric`` or
  ``dylora_frozen_geometric``): EACL Table 4, each p_B x update-rule variant at rank 1 and r_max.
* ``table7.{md,csv,tex}`` (experiments with ``dylora_sum``): EACL Table 7, the average over ranks
  and the measured training time of one sampled rank per step against the summed loss.
* ``rank_curve_<task>.{png,svg}``: metric vs rank per method (Table 2 metrics), ±std band,
  the paper's points overlaid.
* ``summary.{csv,md}``: per task and method, the normalised area under the rank curve and the
  smallest rank within ``tolerance`` points of the best rank.
* ``finding.{csv,md}``: per task, whether LoRA and DyLoRA show the paper's finding (LoRA loses
  more when truncated to r_min, DyLoRA's average over ranks is at least LoRA's, the two agree at
  r_max), on Table 1's metric.

A rank search's experiment (``dylora.lab.search_cost``: LoRA trained at each rank alone) gets its
own tables instead: ``search_cost_<task>_r<r_max>.*``, EACL Tables 1 and 5 (``table1_eacl.*``,
``table5.*``) and ``finding.md`` (``dylora.lab.search_tables``).

Every table has, per method and row, an "ours" row and, where the paper prints the number, a
"paper" row and a "Δ" (ours − paper) row. Values are percent (×100) for metrics that come in
0..1. The CSVs are long ("tidy"): method, row, source, task, mean, std, n_seeds, best.
Runs that are unfinished, unreadable, superseded, short of ranks, or absent from the
task × method × seed grid are listed under "Missing or unfinished runs", never dropped silently.

The package, one module per concern (each imports only those above it):

* ``figures``: matplotlib for files only, saved byte-reproducibly.
* ``experiments``: run records grouped into experiments, issues, the shared constants.
* ``scoring``: each table's metric per task, and one value per task, method, seed and rank.
* ``notes``: footnotes, the settings used and every departure from the paper's setup.
* ``tables``: Tables 1 and 2 (ours, paper and Δ cells, Avg, best rank).
* ``nlg``: the NLG tables (EACL Tables 6 and 9) and their rank curves.
* ``render``: Markdown, CSV and LaTeX files, the list of missing or unfinished runs.
* ``curves``: rank curves per task and their summary.
* ``finding``: the paper's finding, task by task.

This module holds the entry points, ``build_report`` and ``write_report``, and the names
callers use from the others.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path

from dylora.errors import ConfigError, check_folder_name
from dylora.lab.report.curves import min_rank_within, normalised_auc, plot_rank_curves, rank_summary, write_summary
from dylora.lab.report.experiments import CSV_COLUMNS, Experiment, Issue, load_experiments
from dylora.lab.report.finding import paper_finding, write_finding
from dylora.lab.report.nlg import nlg_tables, plot_nlg_curves
from dylora.lab.report.render import write_table
from dylora.lab.report.scoring import scores
from dylora.lab.report.tables import table1, table2, table4, table4_findings, table7, table7_findings

__all__ = [
    "CSV_COLUMNS", "Experiment", "Issue", "REPORT_FILE", "build_report", "load_experiments", "min_rank_within",
    "normalised_auc", "paper_finding", "rank_summary", "report_files", "scores", "select_experiments", "table1",
    "table2", "table4", "table7", "write_finding", "write_report",
]


# the files a report writes, by name: one an earlier report wrote that this one does not is removed, and
# anything else in the folder (records/, CALIBRATION.md, ...) is left alone
REPORT_FILE = re.compile(r"(table\d+\w*|rank_curves?_[\w.-]+|summary|finding)\.(md|csv|tex|png|svg)"
                         r"|search_cost_\w+\.(md|csv|json)")


def report_files(dest: str | Path) -> list[Path]:
    """The files of the report in ``dest`` (``REPORT_FILE``'s names), none when there is none."""
    dest = Path(dest)
    return sorted(p for p in dest.iterdir() if p.is_file() and REPORT_FILE.fullmatch(p.name)) if dest.is_dir() else []


def write_report(exp: Experiment, results_dir: str | Path, tolerance: float = 1.0) -> list[Path]:
    """Every table, plot and summary for one experiment, in ``<results_dir>/<experiment>/``, written whole into a
    temporary folder first and then moved in: a report that fails leaves the earlier one as it was, and a
    file the earlier one had that this one does not produce (a task's plot) is removed. When no run of the
    experiment has metrics, an earlier report is kept as it is and nothing is written (an empty list)."""
    name = check_folder_name("experiment", exp.name)
    for run in exp.used:  # task names become file names (rank_curve_<task>.png)
        check_folder_name("task.name", run.task)
    results_dir = Path(results_dir)
    dest = results_dir / name
    earlier = report_files(dest)
    if earlier and not any(r.metrics for r in exp.used):
        return []
    results_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=results_dir, prefix=f".{name}.report-"))
    try:
        written = [p.relative_to(staging) for p in dict.fromkeys(_write_report(exp, staging, tolerance))]
        if earlier and not written:
            return []
        for path in written:
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / path, dest / path)
        for path in earlier:
            if path.relative_to(dest) not in written:  # an earlier report's file this one no longer produces
                path.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [dest / path for path in written]


def _write_report(exp: Experiment, dest: Path, tolerance: float) -> list[Path]:
    if exp.is_search:
        from dylora.lab.search_tables import report_search  # it builds on this package: imported late

        return report_search(exp, dest)
    paths = write_table(table1(exp), exp, dest) + write_table(table2(exp), exp, dest)
    methods, ablations = {r.method for r in exp.used}, []
    if methods & {"dylora_geometric", "dylora_frozen_geometric"}:  # the p_B ablation's runs
        paths += write_table(table := table4(exp), exp, dest)
        ablations += table4_findings(table)
    if "dylora_sum" in methods:  # the summed-loss comparison's runs
        paths += write_table(table := table7(exp), exp, dest)
        ablations += table7_findings(table)
    for table in nlg_tables(exp):
        paths += write_table(table, exp, dest) + plot_nlg_curves(table, dest)
    return (paths + plot_rank_curves(exp, dest) + write_summary(exp, dest, tolerance)
            + write_finding(exp, dest, ablations=ablations))


def build_report(out_dir: str | Path, results_dir: str | Path, experiment: str | None = None,
                 tolerance: float = 1.0) -> dict[str, list[Path]]:
    """Report every experiment under ``out_dir`` (or only ``experiment``); the paths written, by experiment."""
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ConfigError(f"tolerance={tolerance} must be a finite number >= 0 (points of the metric)")
    return {name: write_report(exp, results_dir, tolerance)
            for name, exp in select_experiments(out_dir, experiment).items()}


def select_experiments(out_dir: str | Path, experiment: str | None = None) -> dict[str, Experiment]:
    """The experiments under ``out_dir`` (only ``experiment`` when given), read and checked."""
    experiments = load_experiments(out_dir)
    if experiment is not None:
        if experiment not in experiments:
            known = ", ".join(experiments) or "none"
            raise ConfigError(f"experiment={experiment} has no runs under {out_dir}; experiments found: {known}")
        experiments = {experiment: experiments[experiment]}
    if not experiments:
        raise ConfigError(f"no run records under out_dir={os.fspath(out_dir)}; train first or pass out_dir=DIR")
    return experiments
