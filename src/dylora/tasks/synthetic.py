"""A classification task generated offline, built so that fitting it needs an adaptation of real rank.

A *teacher* is the base model plus a hidden update of rank ``teacher_rank`` on every matrix the
student adapts: ``Delta W = sum_i sigma_i u_i v_i^T`` with orthonormal u, v and strengths
``sigma_i = strength * ||W0||_2 * 2^(-i/2)`` (decaying, as the spectra of real fine-tuning
updates do). Labels are the teacher's predictions on random token sequences, made balanced by
centring each class's logit on its median; only the ``keep`` fraction the teacher is most sure
of (largest gap between its two best classes) is kept, so labels are learnable rather than
noise near the boundary. The base model alone is near chance; a rank-r student
can at best recover the teacher's r strongest directions, so accuracy grows with rank, and an
adapter trained only at full rank loses it when truncated.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from torch import nn

from dylora.adapters import AdapterConfig, adapter_layers, add_adapters
from dylora.errors import ConfigError
from dylora.precision import pad_multiple
from dylora.tasks.base import TaskData, TaskKind, classification_data, rows

DATA_SEED = 1234  # the task is the same for every run seed


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=gen))
    return q[:rows, :cols] if rows >= cols else q[:cols, :rows].T


@torch.no_grad()
def make_teacher(base: nn.Module, target_modules: list[str] | None, rank: int, strength: float) -> nn.Module:
    """A copy of ``base`` with a hidden rank-``rank`` update on every targeted matrix."""
    teacher = copy.deepcopy(base).eval()
    add_adapters(teacher, AdapterConfig(method="lora", r_max=rank, alpha=rank, target_modules=target_modules,
                                        modules_to_save=[]))
    gen = torch.Generator().manual_seed(DATA_SEED)
    sigma = torch.tensor([2.0 ** (-i / 2) for i in range(rank)])
    for _, layer in adapter_layers(teacher):
        w_norm = torch.linalg.matrix_norm(layer.base.weight.float(), ord=2)
        d_in, d_slice = layer.lora_A.shape[-1], layer.lora_B.shape[1]
        for s in range(layer.lora_A.shape[0]):
            layer.lora_A[s] = _orthonormal(rank, d_in, gen) * (strength * w_norm * sigma)[:, None]
            layer.lora_B[s] = _orthonormal(d_slice, rank, gen)
    return teacher  # alpha = rank: scale 1, so Delta W = B @ A exactly


def random_inputs(n: int, seq_len: int, tokenizer, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random sequences ``[CLS] w_1 .. w_{seq_len-2} [SEP]`` over the tokenizer's ordinary tokens."""
    special = set(tokenizer.all_special_ids)
    vocab = torch.tensor([i for i in range(min(len(tokenizer), 5000)) if i not in special])
    words = vocab[torch.randint(len(vocab), (n, seq_len - 2), generator=gen)]
    cls = torch.full((n, 1), tokenizer.cls_token_id)
    sep = torch.full((n, 1), tokenizer.sep_token_id)
    input_ids = torch.cat([cls, words, sep], dim=1)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


@torch.no_grad()
def teacher_labels(teacher: nn.Module, inputs: dict[str, torch.Tensor],
                   batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(label, confidence): argmax of the median-centred logits, and its gap to the runner-up."""
    n = len(inputs["input_ids"])
    logits = torch.cat([teacher(**{k: v[i : i + batch_size] for k, v in inputs.items()}).logits
                        for i in range(0, n, batch_size)])
    top2 = (logits - logits.median(dim=0).values).topk(2, dim=-1)
    return top2.indices[:, 0], top2.values[:, 0] - top2.values[:, 1]


def make_synthetic(
    base: nn.Module, tokenizer, target_modules: list[str] | None, *, teacher_rank: int, teacher_strength: float,
    seq_len: int, n_train: int, n_eval: int, keep: float = 1.0,
) -> dict[str, datasets.Dataset]:
    """``train`` and ``validation`` splits (input_ids, attention_mask, labels) labelled by the teacher."""
    if not 0 < keep <= 1:
        raise ConfigError(f"task.keep={keep!r} must be in (0, 1]")
    teacher = make_teacher(base, target_modules, teacher_rank, teacher_strength)
    gen = torch.Generator().manual_seed(DATA_SEED)
    n = n_train + n_eval
    inputs = random_inputs(math.ceil(n / keep), seq_len, tokenizer, gen)
    labels, confidence = teacher_labels(teacher, inputs)
    chosen = confidence.argsort(descending=True)[:n].sort().values  # the most confident, in draw order
    columns = {k: v[chosen].tolist() for k, v in inputs.items()} | {"labels": labels[chosen].tolist()}
    full = datasets.Dataset.from_dict(columns)
    return {"train": full.select(range(n_train)), "validation": full.select(range(n_train, n_train + n_eval))}


# ---------------------------------------------------------------------------- the task kind


@dataclass(frozen=True)
class SyntheticOptions:
    """``task.*`` of the synthetic task (conf/task/synthetic.yaml says what each one does)."""

    num_labels: int = 2
    teacher_rank: int = 8
    teacher_strength: float = 1.0
    seq_len: int = 16
    n_train: int = 2000
    n_eval: int = 1000
    keep: float = 1.0


def build(spec, base, tokenizer, device, run_dir=None) -> TaskData:
    """The teacher's splits; ``base`` is the model before adapters, which the teacher copies."""
    from sklearn.metrics import accuracy_score

    t = spec.task.options
    splits = make_synthetic(
        base, tokenizer, spec.adapter.target_modules, teacher_rank=t.teacher_rank, teacher_strength=t.teacher_strength,
        seq_len=t.seq_len, n_train=t.n_train, n_eval=t.n_eval, keep=t.keep,
    )
    def score(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {"accuracy": float(accuracy_score(labels, predictions))}

    evals = {"validation": rows(splits["validation"], spec.data.max_eval_samples)}
    return classification_data(rows(splits["train"], spec.data.max_train_samples), evals, tokenizer,
                               lambda logits: logits.argmax(dim=-1).numpy(), score, spec.trainer.eval_batch_size,
                               device,
                               pad_multiple(spec.trainer.precision, torch.device(device).type))


KIND = TaskKind("synthetic", "encoder", SyntheticOptions, lambda task: task.options.num_labels, build)
