"""Putting adapters into a model and acting on all of them at once."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from dylora.adapters.config import AdapterConfig
from dylora.adapters.layer import DyLoRALayer, check_truncation
from dylora.errors import ConfigError

# The paper adapts the attention query and value projections (Table 8); GPT-2 fuses q, k, v in
# ``c_attn``, where the LoRA paper adapts the q and v blocks only.
DEFAULT_TARGETS = {
    "roberta": ["query", "value"],
    "bert": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "mpnet": ["q", "v"],  # MPNet names its attention projections q, k, v, o
    "gpt2": ["c_attn"],
}
HEAD_NAMES = ("classifier", "score")  # sequence-classification heads of BERT/RoBERTa and GPT-2


def default_targets(model: nn.Module) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        raise ConfigError(
            f"no default target modules for model type {model_type!r}; set target_modules "
            f"(known defaults: {DEFAULT_TARGETS})"
        )
    return DEFAULT_TARGETS[model_type]


def default_head(model: nn.Module) -> list[str]:
    return [name for name in HEAD_NAMES if isinstance(getattr(model, name, None), nn.Module)]


def _out_slices(name: str, base: nn.Module) -> list[tuple[int, int]] | None:
    """GPT-2's fused c_attn (3 x d outputs) is adapted on its query and value blocks only."""
    if name.rsplit(".", 1)[-1] == "c_attn" and isinstance(base, Conv1D):
        d_in, d_out = base.weight.shape
        if d_out == 3 * d_in:
            return [(0, d_in), (2 * d_in, 3 * d_in)]
    return None


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, DyLoRALayer]]:
    for name, module in model.named_modules():
        if isinstance(module, DyLoRALayer):
            yield name, module


def adapter_config(model: nn.Module) -> AdapterConfig:
    for _, layer in adapter_layers(model):
        return layer.config
    raise ConfigError("this model has no DyLoRA adapters; call add_adapters(model, config) first")


def add_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Wrap the target layers of ``model`` in place, freeze every base weight, keep the head trainable."""
    if any(True for _ in adapter_layers(model)):
        raise ConfigError("this model already has adapters; add them once")
    targets = config.target_modules or default_targets(model)
    found = [(n, m) for n, m in model.named_modules() if n and _matches(n, targets)]
    adaptable = [(n, m) for n, m in found if isinstance(m, (nn.Linear, Conv1D))]
    if not adaptable:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))})
        raise ConfigError(f"target_modules={targets} match no nn.Linear or Conv1D layer; this model's are {linear}")
    unmatched = [t for t in targets if not any(_matches(n, [t]) for n, _ in adaptable)]
    if unmatched:
        raise ConfigError(f"target module(s) {unmatched} match no nn.Linear or Conv1D layer in this model")
    heads = default_head(model) if config.modules_to_save is None else list(config.modules_to_save)
    missing = [h for h in heads if _get(model, h) is None]
    if missing:
        raise ConfigError(f"modules_to_save {missing} are not modules of this model")

    model.requires_grad_(False)
    for name, base in adaptable:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, DyLoRALayer(base, config, _out_slices(name, base)))
    for head in heads:
        _get(model, head).requires_grad_(True)
    for _, layer in adapter_layers(model):
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    return model


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def head_modules(model: nn.Module) -> list[str]:
    """Names of the non-adapter modules that train (the task head)."""
    config = adapter_config(model)
    return default_head(model) if config.modules_to_save is None else list(config.modules_to_save)


Ranks = int | Mapping[str, int]  # one rank for every adapter, or one per adapter by module name


def module_ranks(model: nn.Module, rank: Ranks) -> dict[str, int]:
    """``rank`` as {module name: rank} over every adapter of ``model``, checked: a mapping must name each
    adapted module (``adapter_layers``' names) and no other, each rank in 1..r_max."""
    names = [name for name, _ in adapter_layers(model)]
    config = adapter_config(model)
    if not isinstance(rank, Mapping):
        config.check_rank(rank)
        return dict.fromkeys(names, rank)
    unknown, missing = sorted(set(rank) - set(names)), [n for n in names if n not in rank]
    if unknown or missing:
        raise ConfigError(f"per-module ranks must name every adapted module and no other: unknown {unknown[:3]}, "
                          f"missing {missing[:3]} (adapted modules: {names[0]}, ..., {names[-1]})")
    for value in rank.values():
        config.check_rank(value)
    return {name: rank[name] for name in names}


def set_rank(model: nn.Module, rank: Ranks) -> None:
    """Make every adapter in ``model`` use rank ``rank``, or each its own from a {module name: rank}
    mapping (re-merging merged ones at it)."""
    ranks = module_ranks(model, rank)
    for name, layer in adapter_layers(model):
        layer.set_rank(ranks[name])


def set_truncation(model: nn.Module, truncation: str) -> None:
    """Make every adapter take its rank by ``truncation``: ``prefix`` (the paper's) | ``svd``."""
    check_truncation(truncation)
    for _, layer in adapter_layers(model):
        layer.set_truncation(truncation)


def get_truncation(model: nn.Module) -> str:
    truncations = {layer.truncation for _, layer in adapter_layers(model)}
    if len(truncations) != 1:
        raise ConfigError(f"adapters disagree on their truncation: {sorted(truncations)}")
    return truncations.pop()


def get_rank(model: nn.Module) -> int:
    ranks = {layer.rank for _, layer in adapter_layers(model)}
    if len(ranks) != 1:
        raise ConfigError(f"adapters disagree on their rank: {sorted(ranks)}")
    return ranks.pop()


def merge(model: nn.Module, rank: Ranks | None = None) -> None:
    """Fold every adapter into its base weight at ``rank`` (one, or one per module; default: the current rank)."""
    if rank is not None:
        set_rank(model, rank)
    for _, layer in adapter_layers(model):
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.unmerge()


@contextmanager
def merged(model: nn.Module, rank: Ranks, truncation: str = "prefix") -> Iterator[nn.Module]:
    """Evaluate with weights merged at ``rank`` (one, or one per module), taken by ``truncation``; unmerged
    (at that rank, the prefix truncation back) on exit, whatever happens."""
    set_truncation(model, truncation)
    merge(model, rank)
    try:
        yield model
    finally:
        unmerge(model)
        set_truncation(model, "prefix")


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate "rank 0": every adapter off (its layer computes the base alone), the trained head on; on
    again on exit, whatever happens."""
    layers = [layer for _, layer in adapter_layers(model)]
    for layer in layers:
        layer.off = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.off = False


def trainable_parameters(model: nn.Module) -> dict[str, int]:
    """Counts of trainable parameters: adapter, head (everything else that trains), total."""
    adapter = sum(layer.lora_A.numel() + layer.lora_B.numel() for _, layer in adapter_layers(model))
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"adapter": adapter, "head": total - adapter, "total": total}


@contextmanager
def hold_untrained_rows(model: nn.Module, ranks: Sequence[Ranks] | None = None) -> Iterator[None]:
    """Around ``optimizer.step()``: with masking="update", rows that learn at none of ``ranks`` (default:
    the current rank; the summed loss trains at every rank of its sum; a per-module draw is one
    {module: b} mapping) are restored afterwards, so momentum and weight decay cannot move them (the
    paper's Eq. 10). With masking="gradient" (the official code's behaviour) it does nothing."""
    config = adapter_config(model)
    if config.method != "dylora" or config.masking != "update":
        yield
        return
    layers = dict(adapter_layers(model))
    per_module = [module_ranks(model, r) for r in ranks] if ranks else None
    saved = [(layer.lora_A.detach().clone(), layer.lora_B.detach().clone()) for layer in layers.values()]
    yield
    with torch.no_grad():
        for (name, layer), (a, b) in zip(layers.items(), saved):
            trained = [layer.trained_rows(r[name]) for r in per_module] if per_module else [layer.trained_rows()]
            keep = ~torch.stack(trained).any(dim=0)
            layer.lora_A[:, keep] = a[:, keep]
            layer.lora_B[:, :, keep] = b[:, :, keep]
