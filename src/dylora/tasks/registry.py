"""Task kinds, each registered once: adding a kind is its own module and one line in KINDS.

The package's modules never import this one (it imports them all), so any of them can be
imported on its own."""

from __future__ import annotations

from dylora.errors import ConfigError, DataError
from dylora.tasks import glue, nlg_task, synthetic
from dylora.tasks.base import TableMetric, TaskData, TaskKind

KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (glue.KIND, nlg_task.KIND, synthetic.KIND)}

__all__ = ["KINDS", "build_task", "data_files", "num_labels", "table_metric", "task_kind"]


def task_kind(name: str) -> TaskKind:
    if name not in KINDS:
        raise ConfigError(f"task.kind={name!r} is not one of {tuple(KINDS)}")
    return KINDS[name]


def table_metric(task: str, table: str) -> TableMetric | None:
    """The metric the paper's ``table`` ("table1": the workshop Table 1, "table2": EACL Table 2)
    shows for ``task``; None where no kind defines one."""
    return next((m for kind in KINDS.values() if (m := kind.table_metric(task, table)) is not None), None)


def num_labels(spec) -> int | None:
    """The classifier's outputs for ``spec``'s task (a RunSpec); None for text generation."""
    return task_kind(spec.task.kind).num_labels(spec.task)


def data_files(spec) -> list:
    """The local files ``spec``'s run reads (a RunSpec); none for hub or generated data."""
    return task_kind(spec.task.kind).data_files(spec)


def build_task(spec, base, tokenizer, device, run_dir=None) -> TaskData:
    """The task's data. ``base`` is the model before adapters (the synthetic task's teacher needs it);
    ``run_dir`` receives what evaluation writes besides metrics (NLG outputs per rank). With
    ``data.selection_rows`` = N the last N training rows are held out as ``selection``. Training data
    with no rows is an error, whatever the kind (it would "finish" having learnt nothing)."""
    data = task_kind(spec.task.kind).build(spec, base, tokenizer, device, run_dir)
    held = spec.data.selection_rows
    if held:  # the last rows, so that training keeps the order (and max_train_samples' choice) of the rest
        if held >= len(data.train):
            raise ConfigError(f"data.selection_rows={held} holds out every one of the {len(data.train)} training rows; "
                              "hold out fewer (a few hundred are enough to choose ranks)")
        data.train, data.selection = data.train[:-held], data.train[-held:]
    if not data.train:
        source = spec.data.glue_dir or spec.data.nlg_dir or "the Hugging Face hub"
        raise DataError(f"task {spec.task.name} has no training rows (read from {source}); check its training "
                        "file (empty, or a header alone?)")
    return data
