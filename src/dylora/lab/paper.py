"""The DyLoRA paper's published numbers, and the names that connect them to our configs.

``paper_results.csv`` (beside this module) is a copy of the project's reference table (every number printed in
the EACL 2023 paper, arXiv 2210.07558 v2, and the NeurIPS 2022 ENLSP workshop version's Table 1),
in long format: paper_version, table, model, method, task, metric, rank, value, notes. The
``paper_version``/``table``/``notes`` columns are kept so that every number carries its source.
Values are as printed (percent for GLUE), including the paper's own slips, which ``notes`` flags.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from dylora.errors import ConfigError, DataError

PAPER_CSV = Path(__file__).parent / "paper_results.csv"
COLUMNS = ("paper_version", "table", "model", "method", "task", "metric", "rank", "value", "notes")

EACL = "eacl2023_arxiv_v2"
WORKSHOP = "enlsp2022_workshop"

# Our config names -> the paper's labels.
TASKS = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "qqp": "QQP",
    "stsb": "STS-B",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
    "e2e": "E2E",
    "dart": "DART",
    "webnlg": "WebNLG",
}
METHODS = {"lora": "LoRA", "dylora": "DyLoRA", "dylora_frozen": "DyLoRA (Frozen)"}
# Metric names in metrics.jsonl -> the CSV's. Only CoLA's differs; the rest are listed so that
# an unknown name is caught rather than passed through.
METRICS = {
    "accuracy": "accuracy",
    "f1": "f1",
    "matthews_correlation": "matthews_corr",
    "pearson": "pearson",
    "spearman": "spearman",
    "bleu": "bleu",
    "nist": "nist",
    "meteor": "meteor",
    "rouge_l": "rouge_l",
    "cider": "cider",
    "ter": "ter",
}


@dataclass(frozen=True)
class PaperValue:
    """One printed number; ``std`` is the ± the paper printed beside it, when it printed one."""

    value: float
    std: float | None
    notes: str
    source: str  # "<paper_version> <table>"


# ---------------------------------------------------------------------------- name mapping


def _lookup(mapping: dict[str, str], name: str, kind: str) -> str:
    if name in mapping:
        return mapping[name]
    raise ConfigError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(mapping))}")


def _reverse(mapping: dict[str, str], label: str, kind: str) -> str:
    inverse = {v: k for k, v in mapping.items()}
    if label in inverse:
        return inverse[label]
    raise ConfigError(f"the paper has no {kind} labelled {label!r}; known: {', '.join(sorted(inverse))}")


def paper_task(task: str) -> str:
    """``sst2`` -> ``SST-2``."""
    return _lookup(TASKS, task, "task")


def our_task(label: str) -> str:
    """``SST-2`` -> ``sst2``."""
    return _reverse(TASKS, label, "task")


def paper_method(method: str) -> str:
    """``dylora_frozen`` -> ``DyLoRA (Frozen)``."""
    return _lookup(METHODS, method, "method")


def our_method(label: str) -> str:
    """``DyLoRA (Frozen)`` -> ``dylora_frozen``."""
    return _reverse(METHODS, label, "method")


def paper_metric(metric: str) -> str:
    """``matthews_correlation`` -> ``matthews_corr``."""
    return _lookup(METRICS, metric, "metric")


def our_metric(label: str) -> str:
    """``matthews_corr`` -> ``matthews_correlation``."""
    return _reverse(METRICS, label, "metric")


# ---------------------------------------------------------------------------- the table


@lru_cache(maxsize=1)
def _load() -> pd.DataFrame:
    # keep_default_na=False: "n/a" ranks and empty notes are text, not missing values.
    df = pd.read_csv(PAPER_CSV, dtype=str, keep_default_na=False)
    if tuple(df.columns) != COLUMNS:
        raise DataError(f"{PAPER_CSV} has columns {list(df.columns)}, expected {list(COLUMNS)}")
    values = pd.to_numeric(df["value"], errors="coerce")
    bad = df.index[values.isna() | ~values.map(math.isfinite)]
    if len(bad):
        raise DataError(f"{PAPER_CSV} rows {list(bad + 2)} have a non-numeric value; fix the file")
    return df.assign(value=values.astype(float))


def paper_results() -> pd.DataFrame:
    """Every published number (a copy: callers may filter or modify it freely)."""
    return _load().copy()


def _as_paper(mapping: dict[str, str], name: str) -> str:
    # Lenient on purpose: a name the paper never used (``synthetic``) simply finds no row.
    return mapping.get(name, name)


def _parse_std(notes: str) -> float | None:
    match = re.search(r"\bstd=([0-9.]+)", notes)
    return float(match.group(1)) if match else None


def _check_table(df: pd.DataFrame, table: str, paper_version: str) -> None:
    known = sorted(set(zip(df["paper_version"], df["table"])))
    if (paper_version, table) not in known:
        raise ConfigError(
            f"no table {table!r} in paper version {paper_version!r}; known: "
            + ", ".join(f"{v}/{t}" for v, t in known)
        )


def paper_entry(
    table: str,
    method: str,
    task: str,
    metric: str | None,
    rank: int | str,
    paper_version: str = EACL,
    variant: str | None = None,
) -> PaperValue | None:
    """The paper's number for one cell, or None where the paper prints none.

    Names may be ours (``sst2``, ``dylora_frozen``, ``matthews_correlation``) or the paper's.
    ``metric=None`` takes the table's one metric for the task: the workshop Table 1 records its
    per-task metric as ``task_default``, and Avg cells as ``avg_of_task_metrics``.
    ``rank`` is an int or a CSV rank label such as ``avg_1_8`` or ``best_of_1_8``. ``variant``: text the
    row's notes must contain, for variants told apart only there (Table 4's ``p_B=uniform``).
    """
    df = _load()
    _check_table(df, table, paper_version)
    hit = df[
        (df["paper_version"] == paper_version)
        & (df["table"] == table)
        & (df["method"] == _as_paper(METHODS, method))
        & (df["task"] == _as_paper(TASKS, task))
        & (df["rank"] == str(rank))
    ]
    if metric is not None:
        hit = hit[hit["metric"] == _as_paper(METRICS, metric)]
    if variant is not None:
        hit = hit[hit["notes"].str.contains(variant, regex=False)]
    if len(hit) > 1:
        raise ConfigError(
            f"{paper_version}/{table} has {len(hit)} numbers for {method}/{task}/{metric}/rank {rank} "
            "(variants told apart only in notes, e.g. Table 4's p_B): pass variant= with text of the notes"
        )
    if hit.empty:
        return None
    row = hit.iloc[0]
    return PaperValue(float(row["value"]), _parse_std(row["notes"]), row["notes"], f"{paper_version} {table}")


def paper_value(
    table: str,
    method: str,
    task: str,
    metric: str | None,
    rank: int | str,
    paper_version: str = EACL,
    variant: str | None = None,
) -> float | None:
    """The paper's number for one cell (see ``paper_entry``), or None where it prints none."""
    entry = paper_entry(table, method, task, metric, rank, paper_version, variant)
    return None if entry is None else entry.value
