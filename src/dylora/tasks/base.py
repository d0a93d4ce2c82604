"""What a task kind is, and the shapes every kind shares.

A kind (GLUE, NLG, synthetic, ...) is one ``TaskKind``: the options it reads from ``task.*``,
the model family it needs, its classifier's size, its builder, and which metric the paper's
tables show for its tasks. ``dylora.tasks`` registers each kind once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from dylora.sweep import predict

if TYPE_CHECKING:
    from dylora.spec import RunSpec, TaskSpec

# (model at rank b, b) -> {split: {metric: value}}
Evaluate = Callable[[nn.Module, int], dict[str, dict[str, float]]]


@dataclass
class TaskData:
    """What training and the rank sweep need from a task."""

    train: list[dict]
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    evaluate: Evaluate
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # (logits, labels); None: the model's
    selection: list[dict] | None = None  # training rows held out of training (data.selection_rows)
    # classification: model -> {split: (predictions, labels)} in row order (class ids, or scores for a
    # regression), and score(predictions, labels) -> {metric: value}; evaluate is the two together
    predict: Callable[[nn.Module], dict[str, tuple[np.ndarray, np.ndarray]]] | None = None
    score: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None


@dataclass(frozen=True)
class TableMetric:
    """The metric a table shows for a task; several splits are averaged per seed and rank (MNLI m/mm)."""

    metric: str
    splits: tuple[str, ...]


@dataclass(frozen=True)
class TaskKind:
    name: str
    family: str  # the model family its tasks need: "encoder" (a classifier) | "decoder" (a causal LM)
    options: type  # a dataclass of the kind's ``task.*`` options, validated in its __post_init__
    num_labels: Callable[[TaskSpec], int | None]  # the classifier's outputs; None for text generation
    # (spec, base model before adapters, tokenizer, device, run directory or None) -> TaskData
    build: Callable[[RunSpec, nn.Module, Any, Any, Path | None], TaskData]
    # (task name, "table1" | "table2") -> the metric the paper's table shows; None: not this kind's
    # task, or no table metric (the report then uses the first metric measured)
    table_metric: Callable[[str, str], TableMetric | None] = lambda task, table: None
    # spec -> the local files a run reads (none for hub or generated data): their content hashes go
    # into the record, so a finished run whose data changed is run again
    data_files: Callable[[RunSpec], list[Path]] = lambda spec: []


@dataclass(frozen=True)
class NoOptions:
    """A kind whose tasks take no ``task.*`` options beyond name and kind."""


def classification_data(train: list[dict], evals: dict[str, list[dict]], tokenizer, to_predictions, score,
                        batch_size: int, device, pad_to: int | None = None) -> TaskData:
    """A classification task's data: rows padded per batch (to a multiple of ``pad_to`` when given), every
    split of ``evals`` predicted by ``to_predictions(logits)`` and scored by ``score(predictions, labels)``."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to, return_tensors="pt")

    def predictions(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for split, rows in evals.items():
            logits, labels = predict(model, rows, collate, batch_size, device)
            out[split] = (np.asarray(to_predictions(logits)), labels.numpy())
        return out

    def evaluate(model: nn.Module, rank: int) -> dict[str, dict[str, float]]:
        return {split: score(*both) for split, both in predictions(model).items()}

    return TaskData(train, collate, evaluate, predict=predictions, score=score)


def rows(dataset, limit: int | None = None) -> list[dict]:
    """A datasets split as a list of row dicts, the first ``limit`` of them."""
    out = dataset.to_list()
    return out if limit is None else out[:limit]
