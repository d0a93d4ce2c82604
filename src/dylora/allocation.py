"""A rank per module under a parameter budget, chosen on one trained DyLoRA adapter without training again.

A DyLoRA adapter works at every rank in every module, so spending a budget unevenly across modules
(HeteroLoRA, arXiv 2406.14956) needs no search over trainings, only evaluations:

1. ``profile``: the loss on a selection split with one module at rank b and every other at r_max,
   for each module and each b below r_max: modules x (r_max - r_min) evaluations, plus one at r_max.
2. ``allocate``: the ranks within the budget that minimise the profile's loss summed over modules
   (each module's effect taken alone, the profile's model): a multiple-choice knapsack, solved
   exactly by dynamic programming (a greedy step-up can spend the budget on small gains and miss a
   module's larger jump).

The selection split must never be the dev split a table reports (``dylora-allocate`` sees to it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from dylora.adapters import adapter_config, adapter_layers, merged
from dylora.errors import ConfigError
from dylora.precision import autocast
from dylora.progress import bar


def unit_costs(model: nn.Module) -> dict[str, int]:
    """Adapter parameters one rank costs in each module: a row of A and a column of B per output slice."""
    return {name: layer.lora_A.shape[0] * (layer.lora_A.shape[2] + layer.lora_B.shape[1])
            for name, layer in adapter_layers(model)}


@torch.no_grad()
def mean_loss(model: nn.Module, rows: Sequence[dict], collate: Callable, batch_size: int, device,
              loss_fn: Callable | None = None, precision: str = "fp32") -> float:
    """The loss over ``rows`` (the model's own with labels, or ``loss_fn(logits, labels)``), each batch
    weighted by its number of rows."""
    model.eval()
    total = 0.0
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(list(rows[start:start + batch_size])).items()}
        with autocast(precision, device):
            if loss_fn is None:
                loss = model(**batch).loss
            else:
                labels = batch.pop("labels")
                loss = loss_fn(model(**batch).logits, labels)
        total += float(loss) * min(batch_size, len(rows) - start)
    return total / len(rows)


@dataclass
class Profile:
    """The selection loss with one module at rank b and the others at r_max."""

    at_r_max: float
    loss: dict[str, dict[int, float]]  # module -> rank -> loss; r_max's is ``at_r_max``
    evaluations: int
    seconds: float


def profile(model: nn.Module, loss_at: Callable[[], float], truncation: str = "prefix",
            progress: bool = False) -> Profile:
    """Each module alone at each rank r_min..r_max-1, the rest at r_max: ``loss_at()`` under each."""
    config = adapter_config(model)
    names = [name for name, _ in adapter_layers(model)]
    start = time.perf_counter()
    full = dict.fromkeys(names, config.r_max)
    with merged(model, full, truncation):
        at_r_max = loss_at()
    loss = {}
    for name in bar(names, desc="profile (modules)", enabled=progress):
        loss[name] = {config.r_max: at_r_max}
        for b in range(config.r_min, config.r_max):
            with merged(model, {**full, name: b}, truncation):
                loss[name][b] = loss_at()
    evaluations = 1 + len(names) * (config.r_max - config.r_min)
    return Profile(at_r_max, loss, evaluations, time.perf_counter() - start)


def allocate(profile: Profile, costs: Mapping[str, int], budget: float, r_min: int = 1) -> dict[str, int]:
    """Ranks per module within ``budget`` adapter parameters that minimise the profile's loss summed over
    modules (each module's effect taken alone): exact, by dynamic programming over the budget in units of
    the costs' greatest common divisor (ties: the fewer parameters)."""
    unit = math.gcd(*costs.values())
    capacity = int(budget // unit)
    if sum(costs[m] * r_min for m in costs) > budget:
        raise ConfigError(f"a budget of {budget:g} adapter parameters is below every module at r_min={r_min} "
                          f"({sum(costs[m] * r_min for m in costs)}); raise the budget")
    best: dict[int, float] = {0: 0.0}  # units spent -> the least summed loss
    back: list[dict[int, tuple[int, int]]] = []  # per module: units spent -> (units before it, its rank)
    for module, by_rank in profile.loss.items():
        step: dict[int, float] = {}
        came: dict[int, tuple[int, int]] = {}
        for spent, loss in best.items():
            for b in (r for r in by_rank if r >= r_min):
                total = spent + costs[module] // unit * b
                if total <= capacity and (total not in step or loss + by_rank[b] < step[total]):
                    step[total], came[total] = loss + by_rank[b], (spent, b)
        best, back = step, [*back, came]
    spent = min(best, key=lambda units: (best[units], units))
    ranks = {}
    for module, came in zip(reversed(list(profile.loss)), reversed(back)):
        spent, ranks[module] = came[spent]
    return {module: ranks[module] for module in profile.loss}


def budget_of(average_rank: float, costs: Mapping[str, int]) -> float:
    """The adapter parameters every module at ``average_rank`` costs."""
    return average_rank * sum(costs.values())


def parameters(ranks: Mapping[str, int], costs: Mapping[str, int]) -> int:
    return sum(costs[m] * b for m, b in ranks.items())
