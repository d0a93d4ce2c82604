"""The DyLoRA method as a library: config, layer, injection, rank sampling, saving and PEFT export."""

from dylora.adapters.config import AdapterConfig
from dylora.adapters.io import export_peft, load_adapter, read_adapter_config, save_adapter
from dylora.adapters.layer import TRUNCATIONS, DyLoRALayer
from dylora.adapters.model import (
    adapter_config,
    adapter_layers,
    adapters_off,
    add_adapters,
    get_rank,
    get_truncation,
    hold_untrained_rows,
    merge,
    merged,
    set_rank,
    set_truncation,
    trainable_parameters,
    unmerge,
)
from dylora.adapters.sampling import RankSampler, rank_pmf, rank_schedule, summed_ranks

__all__ = [
    "AdapterConfig",
    "TRUNCATIONS",
    "DyLoRALayer",
    "RankSampler",
    "adapter_config",
    "adapter_layers",
    "adapters_off",
    "add_adapters",
    "export_peft",
    "get_rank",
    "get_truncation",
    "hold_untrained_rows",
    "load_adapter",
    "merge",
    "merged",
    "rank_pmf",
    "rank_schedule",
    "read_adapter_config",
    "save_adapter",
    "set_rank",
    "set_truncation",
    "summed_ranks",
    "trainable_parameters",
    "unmerge",
]
