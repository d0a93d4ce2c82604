"""Saving adapters: the full dynamic adapter as safetensors, and a fixed rank as a PEFT adapter; reading
a plain PEFT LoRA adapter into our layers (for its rank curve).

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
from dataclasses import dataclass
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
    expected = adapter_state_dict(model)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        if keys != set(expected):
            raise RecordError(
                f"{path} does not fit this model: missing {sorted(set(expected) - keys)[:5]}, "
                f"unexpected {sorted(keys - set(expected))[:5]}"
            )
        wrong = [(k, tuple(f.get_slice(k).get_shape()), tuple(t.shape)) for k, t in expected.items()
                 if tuple(f.get_slice(k).get_shape()) != tuple(t.shape)]
        if wrong:  # the model is configured otherwise than the run that saved it (model.* overrides)
            key, saved, here = wrong[0]
            module, _, tensor = key.rpartition(".")
            raise ConfigError(f"{path} does not fit this model: module {module} has {tensor} of shape {list(here)} "
                              f"here but {list(saved)} in the adapter ({len(wrong)} of {len(expected)} tensors "
                              "differ); configure the model as the run that saved it was")
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


# ---------------------------------------------------------------------------- reading a PEFT LoRA adapter

PEFT_PREFIX = "base_model.model."


@dataclass
class PeftLora:
    """A standard PEFT LoRA adapter directory, read: its rank, alpha, the adapted modules' factors and the
    trained head (``modules_to_save``) weights, by module path in the base model."""

    r: int
    lora_alpha: float
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (lora_A r x d_in, lora_B d_out x r)
    head: dict[str, torch.Tensor]  # e.g. classifier.dense.weight -> tensor
    base_model_name_or_path: str | None


def read_peft_lora(directory: str | Path) -> PeftLora:
    """Read ``adapter_config.json`` and ``adapter_model.safetensors``; a variant that is not plain LoRA at
    one rank (DoRA, rsLoRA, per-module ranks, biases) is refused with its reason."""
    directory = Path(directory)
    config_path, weights_path = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ConfigError(f"{directory} is not a PEFT adapter directory: {path.name} is missing")
    config = json.loads(config_path.read_text())
    unsupported = [(config.get("peft_type") != "LORA", f"peft_type {config.get('peft_type')!r} is not LORA"),
                   (bool(config.get("use_dora")), "DoRA (use_dora) changes the update's form"),
                   (bool(config.get("use_rslora")), "rsLoRA (use_rslora) scales by alpha/sqrt(r)"),
                   (bool(config.get("rank_pattern")) or bool(config.get("alpha_pattern")),
                    "its modules have ranks or alphas of their own (rank_pattern/alpha_pattern)"),
                   (config.get("bias", "none") != "none" or bool(config.get("lora_bias")), "it trains biases")]
    reasons = [why for bad, why in unsupported if bad]
    if reasons:
        raise ConfigError(f"{directory}: a rank curve needs a plain LoRA adapter at one rank, but {'; '.join(reasons)}")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    head = {}
    with safe_open(str(weights_path), framework="pt") as f:
        for key in f.keys():
            name = key.removeprefix(PEFT_PREFIX)
            for part in ("lora_A", "lora_B"):
                if f".{part}." in name:
                    factors.setdefault(name.split(f".{part}.")[0], {})[part] = f.get_tensor(key)
                    break
            else:
                head[name.replace(".modules_to_save.default", "")] = f.get_tensor(key)
    incomplete = sorted(m for m, parts in factors.items() if len(parts) != 2)
    if not factors or incomplete:
        raise ConfigError(f"{weights_path} holds no lora_A/lora_B pair for {incomplete or 'any module'}")
    return PeftLora(int(config["r"]), float(config["lora_alpha"]),
                    {m: (parts["lora_A"], parts["lora_B"]) for m, parts in factors.items()}, head,
                    config.get("base_model_name_or_path"))


@torch.no_grad()
def load_peft_lora(model: nn.Module, adapter: PeftLora) -> None:
    """Copy a PEFT adapter's factors into ``model``'s adapters (added on exactly its modules, at r_max = its
    r) and its head weights into the head modules."""
    layers = dict(adapter_layers(model))
    if set(layers) != set(adapter.factors):
        raise ConfigError(f"the model's adapted modules {sorted(layers)[:3]}... are not the adapter's "
                          f"{sorted(adapter.factors)[:3]}...")
    for name, (a, b) in adapter.factors.items():
        layer = layers[name]
        if layer.out_slices != [(0, layer.lora_B.shape[1])] or layer.fan_in_fan_out:
            raise ConfigError(f"{name}: a PEFT adapter on a fused or Conv1D layer (GPT-2 c_attn) is not supported; "
                              "dylora adapts that layer's q and v blocks only")
        if layer.lora_A.shape[1:] != a.shape or layer.lora_B.shape[1:] != b.shape:
            raise ConfigError(f"{name}: the adapter's factors {tuple(a.shape)}, {tuple(b.shape)} do not fit the "
                              f"model's layer ({tuple(layer.lora_A.shape[1:])}, {tuple(layer.lora_B.shape[1:])}): "
                              "is it the adapter's base model?")
        layer.lora_A[0].copy_(a)
        layer.lora_B[0].copy_(b)
    heads = head_modules(model)
    expected = {f"{h}.{k}" for h in heads for k in model.get_submodule(h).state_dict()}
    if expected and not set(adapter.head) >= expected:
        raise ConfigError(f"the adapter holds no trained {', '.join(heads)} weights (modules_to_save): without the "
                          "head it was trained with, its scores would be a random head's")
    for h in heads:
        module = model.get_submodule(h)
        module.load_state_dict({k[len(h) + 1:]: v for k, v in adapter.head.items() if k.startswith(h + ".")})
