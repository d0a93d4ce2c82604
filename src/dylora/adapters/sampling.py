"""Which rank b each training step uses.

DyLoRA draws one b per optimisation step for the whole model (every layer, every
gradient-accumulation micro-batch of that step). The draw is a pure function of
(seed, step), so distributed processes agree without communicating and a resumed run draws
the same sequence. LoRA never samples: it trains at r_max. With ``loss="sum"`` nothing is drawn:
every step trains on every rank, its loss weighted by p_B(b) (``summed_ranks``). With
``sampling="per_module"`` each module draws its own b from p_B each step: the step's rank is a
{module: b} mapping.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from dylora.adapters.config import AdapterConfig
from dylora.errors import ConfigError


def rank_pmf(r_min: int, r_max: int, distribution: str = "uniform", geometric_p: float = 0.15) -> np.ndarray:
    """P(b) for b = r_min..r_max. Geometric: p(1-p)^(b-r_min), renormalised on [r_min, r_max]."""
    ranks = np.arange(r_min, r_max + 1)
    if distribution == "uniform":
        weights = np.ones(len(ranks))
    elif distribution == "geometric":
        weights = geometric_p * (1.0 - geometric_p) ** (ranks - r_min)
    else:
        raise ConfigError(f"distribution={distribution!r} is not one of uniform, geometric")
    return weights / weights.sum()


class RankSampler:
    """b for step ``step``, drawn from ``rank_pmf`` with a generator seeded by (seed, step)."""

    def __init__(self, r_min: int, r_max: int, distribution: str = "uniform", geometric_p: float = 0.15, seed: int = 0):
        if seed < 0:
            raise ConfigError(f"seed={seed} must be >= 0")
        self.ranks = np.arange(r_min, r_max + 1)
        self.pmf = rank_pmf(r_min, r_max, distribution, geometric_p)
        self.seed = seed

    def __call__(self, step: int) -> int:
        return int(self._generator(step).choice(self.ranks, p=self.pmf))

    def per_module(self, step: int, modules: Sequence[str]) -> dict[str, int]:
        """One independent b per module for ``step``, in the order ``modules`` are given."""
        draws = self._generator(step).choice(self.ranks, p=self.pmf, size=len(modules))
        return {name: int(b) for name, b in zip(modules, draws)}

    def _generator(self, step: int) -> np.random.Generator:
        if step < 0:
            raise ConfigError(f"step={step} must be >= 0")
        return np.random.default_rng([self.seed, step])


def rank_schedule(config: AdapterConfig, seed: int,
                  modules: Sequence[str] = ()) -> Callable[[int], int | dict[str, int]]:
    """The training rank for each optimisation step: sampled for DyLoRA, r_max for LoRA; with
    ``sampling="per_module"`` a {module: b} mapping over ``modules`` (the adapted modules' names)."""
    if config.method == "lora":
        return lambda step: config.r_max
    sampler = RankSampler(config.r_min, config.r_max, config.distribution, config.geometric_p, seed)
    if config.sampling == "per_module":
        if not modules:
            raise ConfigError("sampling=per_module needs the adapted modules' names: pass modules=")
        return lambda step: sampler.per_module(step, modules)
    return sampler


def summed_ranks(config: AdapterConfig) -> list[tuple[int, float]] | None:
    """With ``loss="sum"``, the (b, p_B(b)) each step's loss sums over; None when a step trains one rank."""
    if config.loss != "sum":
        return None
    pmf = rank_pmf(config.r_min, config.r_max, config.distribution, config.geometric_p)
    return [(b, float(p)) for b, p in zip(range(config.r_min, config.r_max + 1), pmf)]
