"""Numeric precision: PyTorch's own AMP around forward and loss, the frozen base's dtype, TF32.

``trainer.precision`` picks the autocast dtype of training, evaluation and the rank sweep
(``auto``: bf16 on a CUDA device that supports it, else fp32); fp16 adds a GradScaler.
Trainable parameters (adapters, head) and the optimizer state always stay fp32.
``model.dtype`` stores the frozen base weights in fp32 or bf16. ``auto`` choices are resolved
when the configuration is read, so the recorded (and hashed) configuration names what ran.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager

import torch
from torch import nn

from dylora.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BASE_DTYPES = ("fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_type(choice: str) -> str:
    """The device type ``trainer.device`` will resolve to ("auto": cuda when available)."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(choice).type
    except RuntimeError as e:
        raise ConfigError(f"trainer.device={choice!r} is not a device (e.g. auto, cpu, cuda, cuda:1)") from e


def resolve_precision(choice: str, device: str) -> str:
    """``choice`` with ``auto`` made concrete for ``device`` (a device type)."""
    if choice not in PRECISIONS:
        raise ConfigError(f"trainer.precision={choice!r} is not one of {', '.join(PRECISIONS)}")
    if choice != "auto":
        return choice
    return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def check_base_dtype(dtype: str, precision: str) -> None:
    if dtype not in BASE_DTYPES:
        raise ConfigError(f"model.dtype={dtype!r} is not one of {', '.join(BASE_DTYPES)}")
    if dtype == "bf16" and precision != "bf16":
        raise ConfigError(f"model.dtype=bf16 runs its frozen weights under bf16 autocast: set trainer.precision=bf16 "
                          f"(now {precision}) or model.dtype=fp32")


def autocast(precision: str, device: torch.device) -> ContextManager:
    """Autocast to ``precision`` on ``device``; fp32 runs without it."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 needs loss scaling (its gradients underflow); for every other precision the scaler is a no-op."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def set_tf32(enabled: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and cuDNN convolutions (CUDA only; nothing on a CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def cast_frozen(model: nn.Module, dtype: str) -> None:
    """Store every frozen parameter in ``dtype``; what trains (adapters, head) stays fp32."""
    target = DTYPES[dtype]
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(target)


def pad_multiple(precision: str, device: str) -> int | None:
    """Tensor cores want dimensions in multiples of 8: pad batches so under reduced precision on CUDA."""
    return 8 if precision != "fp32" and device == "cuda" else None
