"""From a RunSpec to what training and evaluation need: tokenised splits, a collator, a scorer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from sklearn.metrics import accuracy_score
from torch import nn
from transformers import DataCollatorWithPadding

from dylora.errors import ConfigError
from dylora.spec import RunSpec
from dylora.sweep import predict


@dataclass
class TaskData:
    train: list[dict]
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    evaluate: Callable[[nn.Module, int], dict[str, dict[str, float]]]  # (model at rank b, b) -> {split: {metric: value}}
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # (logits, labels); None: the model's


def classification_evaluator(evals: dict[str, list[dict]], collate, score, batch_size: int, device) -> Callable:
    """Evaluate by logits: ``score(logits, labels)`` on every split."""

    def evaluate(model: nn.Module, rank: int) -> dict[str, dict[str, float]]:
        return {split: score(*predict(model, rows, collate, batch_size, device)) for split, rows in evals.items()}

    return evaluate


def num_labels(spec: RunSpec) -> int | None:
    """The classifier's outputs; None for text generation (a causal LM has no head to size)."""
    if spec.task.kind == "nlg":
        return None
    if spec.task.kind == "glue":
        from dylora.tasks.glue import get_task

        return get_task(spec.task.name).num_labels
    if spec.task.kind == "synthetic":
        return spec.task.num_labels
    raise ConfigError(f"task kind {spec.task.kind!r} has no labels")


def build_task(spec: RunSpec, base: nn.Module, tokenizer, device, run_dir: Path | None = None) -> TaskData:
    """The task's data. ``base`` is the model before adapters (the synthetic task's teacher needs it);
    ``run_dir`` receives what evaluation writes besides metrics (NLG outputs per rank)."""
    if spec.task.kind == "nlg":
        from dylora.tasks.nlg_task import build_nlg

        return build_nlg(spec, tokenizer, run_dir)
    if spec.trainer.label_smoothing:
        raise ConfigError(
            f"trainer.label_smoothing={spec.trainer.label_smoothing} applies to nlg tasks only; "
            f"set it to 0 for task={spec.task.name}"
        )
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    if spec.task.kind == "glue":
        return _glue(spec, tokenizer, collate, device)
    if spec.task.kind == "synthetic":
        return _synthetic(spec, base, tokenizer, collate, device)
    raise ConfigError(f"task kind {spec.task.kind!r} is not supported by this runner yet")


def _rows(dataset, limit: int | None = None) -> list[dict]:
    rows = dataset.to_list()
    return rows if limit is None else rows[:limit]


def _glue(spec: RunSpec, tokenizer, collate, device) -> TaskData:
    from dylora.metrics.glue import glue_metrics, logits_to_predictions
    from dylora.tasks.glue import load_glue, tokenize_glue

    name = spec.task.name
    splits = load_glue(name, spec.data.glue_dir, spec.data.max_train_samples, spec.data.max_eval_samples)
    tokenized = {split: _rows(tokenize_glue(ds, tokenizer, spec.model.max_length)) for split, ds in splits.items()}
    train = tokenized.pop("train")

    def score(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return glue_metrics(name, logits_to_predictions(name, logits), labels.numpy())

    return TaskData(train, collate, classification_evaluator(tokenized, collate, score, spec.trainer.eval_batch_size, device))


def _synthetic(spec: RunSpec, base: nn.Module, tokenizer, collate, device) -> TaskData:
    from dylora.tasks.synthetic import make_synthetic

    t = spec.task
    splits = make_synthetic(
        base, tokenizer, spec.adapter.target_modules, teacher_rank=t.teacher_rank, teacher_strength=t.teacher_strength,
        seq_len=t.seq_len, n_train=t.n_train, n_eval=t.n_eval, keep=t.keep,
    )

    def score(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return {"accuracy": float(accuracy_score(labels.numpy(), logits.argmax(dim=-1).numpy()))}

    evals = {"validation": _rows(splits["validation"], spec.data.max_eval_samples)}
    evaluate = classification_evaluator(evals, collate, score, spec.trainer.eval_batch_size, device)
    return TaskData(_rows(splits["train"], spec.data.max_train_samples), collate, evaluate)
