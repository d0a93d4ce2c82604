"""Run records grouped into experiments; the constants every part of the report shares.

An experiment is every run under ``<out_dir>/<experiment>/``: the runs found, one finished run
used per (task, method, seed), and the issues (unreadable, unfinished, superseded, absent runs).
In a rank search's experiment (``dylora.lab.search_cost``: LoRA trained and evaluated at each rank
alone, DyLoRA at one or more r_max) a run is one per (task, method, seed) *and* r_max.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from dylora.errors import ConfigError
from dylora.lab import paper
from dylora.records import DONE, RunRecord, iter_runs

GLUE = ("mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb")  # the paper's column order
NLG = ("e2e", "dart", "webnlg")
METHOD_ORDER = ("lora", "dylora", "dylora_frozen", "dylora_geometric", "dylora_frozen_geometric", "dylora_sum",
                "dylora_per_module", "peft_lora")
# How the tables name a method: the paper's labels, and ours for the ablations' variants.
METHOD_LABELS = {**paper.METHODS, "dylora_geometric": "DyLoRA, geometric p_B",
                 "dylora_frozen_geometric": "DyLoRA (Frozen), geometric p_B", "dylora_sum": "DyLoRA, summed loss",
                 "dylora_per_module": "DyLoRA, rank drawn per module", "peft_lora": "PEFT LoRA adapter"}
# A run's rows under another truncation than the paper's prefix are a method of their own in the tables
# ("lora+svd": "LoRA + SVD"), placed after the method they were evaluated from.
SVD = "+svd"
SOURCES = ("ours", "paper", "delta")
SOURCE_LABELS = {"ours": "ours", "paper": "paper", "delta": "Δ"}
AVG = "avg"

# Metrics that arrive as fractions in 0..1 and are shown as percent, like the paper (E2E BLEU,
# METEOR and ROUGE-L included: EACL Table 6 prints them x100). NIST, CIDEr and TER stay raw.
PERCENT = {"accuracy", "f1", "matthews_correlation", "pearson", "spearman", "bleu", "meteor", "rouge_l"}
# ...except DART/WebNLG BLEU, which dylora.metrics.nlg already returns on 0..100 (multi-bleu's scale).
ALREADY_PERCENT = {("dart", "bleu"), ("webnlg", "bleu")}
CORRELATIONS = {"matthews_correlation", "pearson", "spearman"}  # the percent metrics that go down to -100
LOWER_IS_BETTER = {"ter"}
# A task without a fixed metric (synthetic, later tasks) uses the first of these it measured.
FALLBACK_METRICS = ("accuracy", "f1", "matthews_correlation", "pearson", "bleu")
CSV_COLUMNS = ["method", "row", "source", "task", "mean", "std", "n_seeds", "best"]


@dataclass(frozen=True)
class Issue:
    """A run the report could not use in full."""

    task: str
    method: str
    seed: int | None
    status: str  # unreadable | unfinished | corrupted | absent | superseded | incomplete | unused
    detail: str


@dataclass
class Experiment:
    name: str
    runs: list[RunRecord]  # every record found, usable or not
    used: list[RunRecord]  # one finished run per (task, method, seed), and per rank for a search's
    issues: list[Issue]
    root: Path | None = None  # the out_dir the records were read from

    @property
    def is_search(self) -> bool:
        """A rank search's runs (``dylora.lab.search_cost``), reported as its tables, not as rank sweeps."""
        return any(search_rank(r) is not None for r in self.used)

    def metrics(self, adapter_off: bool = False) -> pd.DataFrame:
        """Every metric row of the runs used at ranks 1.. (with ``adapter_off``: the rank-0 rows instead, the
        adapter off); a row under the SVD truncation as the method ``<method>+svd``."""
        rows = [{**vars(m), "method": m.method if m.truncation == "prefix" else f"{m.method}+{m.truncation}"}
                for r in self.used for m in r.metrics if (m.rank == 0) == adapter_off]
        return pd.DataFrame(rows, columns=["task", "method", "seed", "rank", "split", "metric", "value"])

    def runs_of(self, task: str, method: str) -> list[RunRecord]:
        """``task``'s finished runs of ``method`` (``<method>+svd``: its trained method's)."""
        return [r for r in self.used if r.task == task and r.method == trained_method(method)]

    def seeds(self, task: str, method: str) -> list[int]:
        """The seeds of ``task``'s finished runs of ``method``."""
        return sorted({r.seed for r in self.runs_of(task, method)})

    def rank_range(self, task: str, method: str) -> tuple[int, int]:
        """(r_min, r_max) from the configs; a config without them falls back to 1 and the top rank."""
        runs = self.runs_of(task, method)
        r_min = min(int(config_value(r.config, "method.r_min") or 1) for r in runs)
        r_max = max(int(config_value(r.config, "method.r_max") or max((m.rank for m in r.metrics), default=1))
                    for r in runs)
        return r_min, r_max


def search_rank(record: RunRecord) -> int | None:
    """The rank a LoRA run of a rank search was trained and evaluated at, alone; None for any other run."""
    r_max, ranks = config_value(record.config, "method.r_max"), config_value(record.config, "method.eval_ranks")
    return int(r_max) if record.method == "lora" and ranks == [r_max] else None


def trained_method(method: str) -> str:
    """The method a table's method was trained as: ``lora`` for ``lora+svd``."""
    return method.removesuffix(SVD)


def config_value(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def metric_scale(task: str, metric: str) -> float:
    """Factor from the value a run records to the value shown (percent for 0..1 fractions)."""
    return 100.0 if metric in PERCENT and (task, metric) not in ALREADY_PERCENT else 1.0


def metric_range(metric: str) -> tuple[float, float] | None:
    """The values a percent metric can take, as shown; None for an unbounded one (TER, CIDEr, NIST)."""
    if metric not in PERCENT:
        return None
    return (-100.0 if metric in CORRELATIONS else 0.0), 100.0


def _experiment_of(record: RunRecord, root: Path) -> str:
    # An unreadable config.yaml names no experiment: place the run by its path, so it is listed.
    return record.experiment or record.path.relative_to(root).parts[0]


def load_experiments(out_dir: str | Path) -> dict[str, Experiment]:
    """Every experiment under ``out_dir`` (``<out_dir>/<experiment>/...``), by name."""
    root = Path(out_dir)
    if not root.is_dir():
        raise ConfigError(f"out_dir={out_dir} is not a directory; pass out_dir=DIR holding the run records")
    grouped: dict[str, list[RunRecord]] = {}
    for record in iter_runs(root, weights=False):  # tables need the metrics; committed records may lack weights
        grouped.setdefault(_experiment_of(record, root), []).append(record)
    return {name: _experiment(name, runs, root) for name, runs in sorted(grouped.items())}


def _finished_at(record: RunRecord) -> float:
    return (record.path / DONE).stat().st_mtime


def _experiment(name: str, runs: list[RunRecord], root: Path) -> Experiment:
    issues = []
    search = any(search_rank(r) is not None for r in runs)
    by_key: dict[tuple[str, str, int, int | None], list[RunRecord]] = {}
    for r in runs:
        where = str(r.path.relative_to(root))
        if not (r.task and r.method and "seed" in r.config):
            why = "config.yaml lacks task.name, method.name or seed" if r.config else r.problem
            issues.append(Issue(r.task or "?", r.method or "?", None, "unreadable", f"{where}: {why}"))
        elif not r.done or r.problem:
            status = "corrupted" if (r.path / DONE).exists() else "unfinished"
            issues.append(Issue(r.task, r.method, r.seed, status, f"{where}: {r.problem or 'not done'}"))
        else:
            r_max = config_value(r.config, "method.r_max") if search else None
            by_key.setdefault((r.task, r.method, r.seed, r_max), []).append(r)
    used = []
    for key, group in sorted(by_key.items()):
        group.sort(key=_finished_at)
        used.append(group[-1])
        for stale in group[:-1]:  # a re-run with another config: keep the newest, say so
            detail = f"{stale.path.relative_to(root)}: superseded by the newer {group[-1].path.name}"
            issues.append(Issue(*key[:3], "superseded", detail))
    issues += _absent(runs, {key[:3] for key in by_key})
    return Experiment(name, runs, used, issues, root)


def _absent(runs: list[RunRecord], finished: set[tuple[str, str, int]]) -> list[Issue]:
    """The grid is every task × method × seed seen in the experiment; report the holes, one issue per task and
    method (its seed when one is missing, else the seeds in the detail)."""
    known = [r for r in runs if r.task and r.method and "seed" in r.config]
    present = {(r.task, r.method, r.seed) for r in known} | finished
    seeds = sorted({r.seed for r in known})
    issues = []
    for t in task_order(r.task for r in known):
        for m in method_order(r.method for r in known):
            holes = [s for s in seeds if (t, m, s) not in present]
            if len(holes) == 1:
                issues.append(Issue(t, m, holes[0], "absent", "no run directory for this combination"))
            elif holes:
                issues.append(Issue(t, m, None, "absent", f"no run directory for seeds {', '.join(map(str, holes))}"))
    return issues


def task_order(tasks: Iterable[str]) -> list[str]:
    order = GLUE + NLG
    return sorted(set(tasks), key=lambda t: (order.index(t) if t in order else len(order), t))


def method_order(methods: Iterable[str]) -> list[str]:
    def key(m: str) -> tuple:
        trained = trained_method(m)
        return (METHOD_ORDER.index(trained) if trained in METHOD_ORDER else 99, trained, m != trained)
    return sorted(set(methods), key=key)


def method_label(method: str) -> str:
    trained = trained_method(method)
    return METHOD_LABELS.get(trained, trained) + (" + SVD" if method != trained else "")
