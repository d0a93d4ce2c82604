"""Evaluation at every rank: merge the adapter at rank b, run the evaluation sets, unmerge.

Merged weights make each evaluation cost one forward pass of the base model, whatever b is.
Evaluation runs under the same autocast as training (``precision``).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from dylora.adapters import adapters_off, merged
from dylora.precision import autocast
from dylora.progress import bar as progress_bar


@torch.no_grad()
def predict(model: nn.Module, dataset: Sequence[dict], collate: Callable, batch_size: int,
            device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) over ``dataset``, in order. Batches take the rows shortest first, so each pads
    to lengths alike (the rank sweep runs every split r_max times); the outputs return to dataset order."""
    model.eval()
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
    logits, labels = [], []
    for start in range(0, len(order), batch_size):
        batch = collate([dataset[i] for i in order[start:start + batch_size]])
        labels.append(batch.pop("labels"))
        logits.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    back = torch.argsort(torch.tensor(order))
    return torch.cat(logits)[back], torch.cat(labels)[back]


def rank_sweep(
    model: nn.Module,
    ranks: list[int],
    evaluate: Callable[[nn.Module, int], dict[str, dict[str, float]]],
    progress: bool = True,
    precision: str = "fp32",
    truncation: str = "prefix",
) -> Iterator[tuple[int, str, str, float]]:
    """Yield (rank, split, metric, value) for every rank, taken by ``truncation`` (``prefix`` | ``svd``); rank 0
    is the adapter off (the base with the trained head). ``evaluate(model, rank)`` returns {split: {metric: value}}."""
    device = next(model.parameters()).device
    desc = "rank sweep" if truncation == "prefix" else f"rank sweep ({truncation})"
    for rank in progress_bar(ranks, desc=desc, enabled=progress):
        with adapters_off(model) if rank == 0 else merged(model, rank, truncation), autocast(precision, device):
            results = evaluate(model, rank)
        for split, values in results.items():
            for metric, value in values.items():
                yield rank, split, metric, value


def normalised_auc(ranks: Iterable[float], values: Iterable[float], log2: bool = False) -> float:
    """Area under the rank curve (trapezoid rule) divided by the span of its axis: rank, or with ``log2``
    log2(rank), the span then log2(r_max / r_min).

    It is in the metric's units: a flat curve at v gives v, so curves over different rank ranges
    compare. The endpoints weigh half, unlike the plain mean over ranks (Table 1's avg row). On the
    log2 axis each doubling of the rank weighs alike. One rank gives its value.
    """
    x, y = np.asarray(list(ranks), float), np.asarray(list(values), float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    if log2:
        x = np.log2(x)
    if len(x) == 1:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))
