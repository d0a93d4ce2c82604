"""Task kinds: one registration each, and what the report and the runner read from it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from dylora import records
from dylora.cli.compose import compose_config, compose_spec
from dylora.errors import ConfigError
from dylora.runner import execute
from dylora.spec import RunSpec
from dylora.tasks.base import TableMetric, TaskData, TaskKind, classification_data, rows
from dylora.tasks.glue import GLUE_TASKS
from dylora.tasks.registry import KINDS, num_labels, table_metric
from helpers import tiny_overrides


@dataclass(frozen=True)
class ParityOptions:
    n: int = 24
    length: int = 6


def build_parity(spec, base, tokenizer, device, run_dir=None) -> TaskData:
    """Random token sequences, labelled by the parity of their first token."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (spec.task.options.n, spec.task.options.length), generator=gen)
    data = [{"input_ids": row.tolist(), "labels": int(row[0]) % 2} for row in ids]

    def score(predictions, labels) -> dict[str, float]:
        return {"accuracy": float((predictions == labels).mean())}

    return classification_data(data, {"validation": data}, tokenizer, lambda logits: logits.argmax(-1).numpy(), score,
                               8, device)


PARITY = TaskKind("parity", "encoder", ParityOptions, lambda task: 2, build_parity)


def parity_config(tmp_path, **task) -> dict:
    config = compose_config(tiny_overrides(f"out_dir={tmp_path}"))
    return {**config, "task": {"name": "parity", "kind": "parity", **task}}


def test_a_kind_registered_in_one_line_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(KINDS, PARITY.name, PARITY)  # the one registry line a new kind adds
    spec = RunSpec.from_dict(parity_config(tmp_path, n=16))
    assert spec.task.options == ParityOptions(n=16) and num_labels(spec) == 2
    run = records.read_run(execute(spec, progress=False))
    assert run.done and run.task == "parity"
    assert {(m.rank, m.split, m.metric) for m in run.metrics} == {(b, "validation", "accuracy") for b in (0, 1, 2)}


def test_a_kinds_options_are_its_own(tmp_path, monkeypatch):
    monkeypatch.setitem(KINDS, PARITY.name, PARITY)
    with pytest.raises(ConfigError, match=r"unknown task option\(s\) \['num_beams'\]; known: \['length', 'n'\]"):
        RunSpec.from_dict(parity_config(tmp_path, num_beams=3))
    with pytest.raises(ConfigError, match=r"unknown task option\(s\) \['teacher_rank'\]"):
        compose_spec(tiny_overrides("task=sst2", "+task.teacher_rank=3"))  # a synthetic option on a GLUE task
    with pytest.raises(ConfigError, match=r"task.kind='nope' is not one of \('glue', 'nlg', 'synthetic', 'parity'\)"):
        RunSpec.from_dict(parity_config(tmp_path) | {"task": {"name": "x", "kind": "nope"}})


def test_the_tables_metrics_come_from_the_task_definitions():
    # the workshop Table 1: MNLI the mean of both dev sets, MRPC accuracy; EACL Table 2: MNLI matched, MRPC F1
    assert table_metric("mnli", "table1") == TableMetric("accuracy", ("validation_matched", "validation_mismatched"))
    assert table_metric("mnli", "table2") == TableMetric("accuracy", ("validation_matched",))
    assert table_metric("mrpc", "table1") == TableMetric("accuracy", ("validation",))
    assert table_metric("mrpc", "table2") == TableMetric("f1", ("validation",))
    for name, task in GLUE_TASKS.items():
        assert table_metric(name, "table2") == TableMetric(task.primary_metric, task.eval_splits[:1])
    assert table_metric("stsb", "table1") == TableMetric("pearson", ("validation",))
    assert table_metric("cola", "table1") == TableMetric("matthews_correlation", ("validation",))
    # NLG: EACL Tables 6 and 9 print test BLEU, WebNLG over all categories; no workshop Table 1
    assert table_metric("e2e", "table2") == TableMetric("bleu", ("test",))
    assert table_metric("webnlg", "table2") == TableMetric("bleu", ("test_all",))
    assert table_metric("e2e", "table1") is None and table_metric("synthetic", "table2") is None


def test_rows_caps_a_split():
    import datasets

    split = datasets.Dataset.from_dict({"x": [1, 2, 3]})
    assert rows(split) == [{"x": 1}, {"x": 2}, {"x": 3}] and rows(split, 2) == [{"x": 1}, {"x": 2}]
