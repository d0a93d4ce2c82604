"""Saving adapters: the full dynamic adapter as safetensors, and a fixed rank as a PEFT adapter.

The dynamic file holds every adapter's A and B at r_max, the trainable head, and the
AdapterConfig as JSON metadata; it is read back with safetensors alone (nothing is unpickled).

A PEFT export at rank b is a standard LoRA adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``). PEFT's scale is lora_alpha / r, so lora_alpha is chosen to give
our s(b). GPT-2's q/v-only ``c_attn`` becomes one rank-2b adapter on the whole ``c_attn`` whose
A stacks [A_q; A_v] and whose B is block-diagonal over the q and v output blocks (zero on k):
exactly our update, with lora_alpha = 2 * s(b) * b. An export with ``truncation="svd"`` writes each
module's top-b singular triplets as its factors, at the same lora_alpha. An export at a rank per module
({module: b}) writes PEFT's ``rank_pattern`` and ``alpha_pattern``, so each module keeps its own scale.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from dylora.adapters.config import AdapterConfig
from dylora.adapters.layer import DyLoRALayer
from dylora.adapters.model import (
    Ranks,
    adapter_config,
    adapter_layers,
    add_adapters,
    head_modules,
    module_ranks,
    set_truncation,
)
from dylora.errors import ConfigError, RecordError
from dylora.records import atomic_write_bytes

FORMAT = "dylora-adapter-v1"


def _head_state(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for head in head_modules(model):
        for name, tensor in model.get_submodule(head).state_dict().items():
            state[f"{head}.{name}"] = tensor
    return state


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter's lora_A/lora_B (at r_max) and the trainable head, by module path."""
    state = {}
    for name, layer in adapter_layers(model):
        state[f"{name}.lora_A"] = layer.lora_A
        state[f"{name}.lora_B"] = layer.lora_B
    state.update(_head_state(model))
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically, its bytes a function of its contents alone: safetensors
    writes the metadata in a per-process hash order (identical runs would differ, and so would their
    checksums), so the header's metadata is put in sorted key order (same length, same offsets)."""
    data = safetensors.torch.save(tensors, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    ordered = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode().ljust(size, b" ")
    if len(ordered) != size:  # never seen: then the library's own bytes, rather than a file it cannot read
        ordered = data[8 : 8 + size]
    atomic_write_bytes(path, data[:8] + ordered + data[8 + size :])


def save_adapter(model: nn.Module, path: str | Path) -> None:
    """Write the full dynamic adapter to one safetensors file (atomically)."""
    metadata = {"format": FORMAT, "config": json.dumps(adapter_config(model).to_dict())}
    save_safetensors(adapter_state_dict(model), path, metadata)


def read_adapter_config(path: str | Path) -> AdapterConfig:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise RecordError(f"{path} is not a readable safetensors file ({e})") from e
    if metadata.get("format") != FORMAT:
        raise RecordError(f"{path} is not a DyLoRA adapter file (format {metadata.get('format')!r})")
    return AdapterConfig.from_dict(json.loads(metadata["config"]))


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a dynamic adapter into ``model``, adding the adapters first if it has none."""
    config = read_adapter_config(path)
    if not any(True for _ in adapter_layers(model)):
        add_adapters(model, config)
    elif adapter_config(model).to_dict() != config.to_dict():
        raise ConfigError(f"{path} was saved with {config}, but the model's adapters use {adapter_config(model)}")
    expected = adapter_state_dict(model).keys()
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        if keys != set(expected):
            raise RecordError(
                f"{path} does not fit this model: missing {sorted(set(expected) - keys)[:5]}, "
                f"unexpected {sorted(keys - set(expected))[:5]}"
            )
        _copy_lora(model, f.get_tensor)
        with torch.no_grad():
            for head in head_modules(model):
                module = model.get_submodule(head)
                module.load_state_dict({k[len(head) + 1 :]: f.get_tensor(k) for k in keys if k.startswith(head + ".")})
    return model


@torch.no_grad()
def _copy_lora(model: nn.Module, get_tensor) -> None:
    for name, layer in adapter_layers(model):
        layer.lora_A.copy_(get_tensor(f"{name}.lora_A"))
        layer.lora_B.copy_(get_tensor(f"{name}.lora_B"))


def load_lora_weights(model: nn.Module, path: str | Path) -> None:
    """Copy only A and B from a dynamic adapter file into ``model``'s adapters (not the head):
    to start one task from another's adapter."""
    if read_adapter_config(path).r_max != adapter_config(model).r_max:
        raise ConfigError(f"{path} has r_max {read_adapter_config(path).r_max}, "
                          f"this model's adapters {adapter_config(model).r_max}")
    with safe_open(str(path), framework="pt") as f:
        _copy_lora(model, f.get_tensor)


# ---------------------------------------------------------------------------- PEFT


def _base_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every adapter layer replaced by its (unmerged) base layer."""
    clone = copy.deepcopy(model)
    for name, layer in list(adapter_layers(clone)):
        layer.unmerge()
        parent_name, _, child = name.rpartition(".")
        setattr(clone.get_submodule(parent_name) if parent_name else clone, child, layer.base)
    return clone


def _task_type(model: nn.Module) -> str | None:
    cls = type(model).__name__
    if cls.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if cls.endswith("LMHeadModel") or cls.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    return None


def peft_lora_config(model: nn.Module, rank: Ranks, base_model_name_or_path: str | None = None):
    """The peft.LoraConfig whose adapters equal ours truncated to ``rank`` (one, or one per module: then the
    most common rank is ``r`` and every module's own rank and alpha are in ``rank_pattern``/``alpha_pattern``,
    keyed by its escaped full name, which PEFT matches as a regular expression)."""
    from peft import LoraConfig

    config = adapter_config(model)
    ranks = module_ranks(model, rank)
    layers = dict(adapter_layers(model))
    slices = {len(layer.out_slices) for layer in layers.values()}
    fan = {layer.fan_in_fan_out for layer in layers.values()}
    if len(slices) != 1 or len(fan) != 1:
        raise ConfigError("PEFT export needs every adapted layer to be of one kind (all Linear or all GPT-2 c_attn)")
    n = slices.pop()
    common = Counter(ranks.values()).most_common(1)[0][0]
    others = {name: b for name, b in ranks.items() if b != common}
    return LoraConfig(
        r=n * common,
        lora_alpha=config.scale(common) * n * common,  # PEFT scales by lora_alpha / r
        rank_pattern={re.escape(name): n * b for name, b in others.items()},
        alpha_pattern={re.escape(name): config.scale(b) * n * b for name, b in others.items()},
        lora_dropout=config.dropout,
        target_modules=sorted(layers),
        fan_in_fan_out=fan.pop(),
        modules_to_save=head_modules(model) or None,
        task_type=_task_type(model),
        bias="none",
        base_model_name_or_path=base_model_name_or_path or getattr(model.config, "_name_or_path", None) or None,
    )


def _peft_weights(layer: DyLoRALayer, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's lora_A (n*b x d_in) and lora_B (d_out x n*b) for a layer at rank b (its truncation's factors)."""
    a, b, _ = layer.factors(rank)
    a, b = a.detach(), b.detach()
    n = a.shape[0]
    d_out = layer.base.weight.shape[1] if layer.fan_in_fan_out else layer.base.weight.shape[0]
    big_b = a.new_zeros(d_out, n * rank)
    for s, (lo, hi) in enumerate(layer.out_slices):
        big_b[lo:hi, s * rank : (s + 1) * rank] = b[s]
    return a.flatten(0, 1), big_b


def export_peft(model: nn.Module, rank: Ranks, out_dir: str | Path, base_model_name_or_path: str | None = None,
                truncation: str = "prefix") -> Path:
    """Write a standard PEFT LoRA adapter directory equal to our adapter at ``rank`` (one, or {module: b}),
    taken by ``truncation`` (``prefix`` | ``svd``), head included."""
    from peft import get_peft_model

    ranks = module_ranks(model, rank)
    lora_config = peft_lora_config(model, ranks, base_model_name_or_path)
    peft_model = get_peft_model(_base_copy(model), lora_config)
    layers = dict(adapter_layers(model))
    before = {layer.truncation for layer in layers.values()}.pop()
    set_truncation(model, truncation)
    try:
        with torch.no_grad():
            for name, layer in layers.items():
                target = peft_model.base_model.model.get_submodule(name)
                a, b = _peft_weights(layer, ranks[name])
                target.lora_A["default"].weight.copy_(a)
                target.lora_B["default"].weight.copy_(b)
    finally:
        set_truncation(model, before)
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir))
    return out_dir
