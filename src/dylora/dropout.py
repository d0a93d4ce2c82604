"""A faster dropout for CPUs (``trainer.fast_dropout``): the same distribution, a cheaper random stream.

On a CPU, ``torch.nn.functional.dropout`` draws one Bernoulli variate per element (``bernoulli_``)
and then multiplies twice: on MiniLM-L6 it was a quarter of a bf16 training step, most of it on
the attention probabilities (batch x heads x length x length per layer). Here each element's keep
decision is one 16-bit word cut from 64-bit draws of the same generator (``torch.Generator``, so
checkpoints and resumption are unchanged) compared with a threshold, and the scaling is one
``where``. Each element is kept independently with probability 1 - p', where p' is p rounded to a
multiple of 2^-16 (0.1 becomes 0.1000061; 32-bit words, exact to 2^-32, made the step 4 % slower),
and kept elements are scaled by 1 / (1 - p').

BERT-like models hand attention dropout to their attention function, whose SDPA path runs
PyTorch's slow math kernel as soon as dropout is on: ``use_fast_dropout`` switches them to
``ATTENTION``, which computes the same softmax(q k^T s + mask) v with this dropout while training
and is plain SDPA otherwise. The random stream differs from torch's, so results differ from a
``fast_dropout=false`` run as another seed's would; the option is part of the run's configuration.
"""

from __future__ import annotations

import torch
from torch import nn

ATTENTION = "dylora_fast_dropout"  # the attention implementation use_fast_dropout selects
_WORD = 2**16


def keep_threshold(p: float) -> int:
    """Words (uniform on -2^15 .. 2^15-1) at or above this are kept: a share 1 - p' of them."""
    return round(p * _WORD) - 2**15


def effective_p(p: float) -> float:
    """p as applied: rounded to a multiple of 2^-16."""
    return round(p * _WORD) / _WORD


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean mask of ``shape``: each element True independently with probability 1 - p'."""
    n = 1
    for size in shape:
        n *= size
    # 64-bit draws (random64 % (2^64 - 1): one value of 2^64 twice as likely) cut into four 16-bit words
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    return words.view(torch.int16)[:n].view(shape) >= keep_threshold(p)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each element with probability p' and scale the rest by 1 / (1 - p')."""
    if not training or p == 0:
        return x
    if p == 1:
        return torch.zeros_like(x)
    keep = keep_mask(x.shape, p, x.device)
    return torch.where(keep, x * (1 / (1 - effective_p(p))), 0)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same place in the model) computed by ``dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              **kwargs) -> tuple[torch.Tensor, None]:
    """A transformers attention function: SDPA without dropout; with it, SDPA's maths (softmax of the
    scaled scores plus the mask, a boolean mask keeping the True entries) with ``dropout`` above."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # causal masking without a mask, and position biases, stay with SDPA (as transformers decides them)
    causal = attention_mask is None and kwargs.get("is_causal", getattr(module, "is_causal", True))
    if dropout == 0 or causal or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scale, key.transpose(-1, -2))  # the scale on q: L x d, not L x L
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # per batch, not per head: cheap to turn additive
            attention_mask = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device).masked_fill(
                ~attention_mask, torch.finfo(scores.dtype).min)
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    # dropout's 1 / (1 - p') applied to the output (L x d) rather than to the probabilities (L x L)
    kept = torch.where(keep_mask(probs.shape, dropout, probs.device), probs, 0)
    out = torch.matmul(kept, value) * (1 / (1 - effective_p(dropout)))
    return out.transpose(1, 2).contiguous(), None


def use_fast_dropout(model: nn.Module) -> int:
    """Compute every dropout of ``model`` by ``dropout``: each ``nn.Dropout`` module becomes a ``FastDropout``
    of the same p, and a model with pluggable attention (BERT, RoBERTa, GPT-2) uses ``ATTENTION``.
    Returns the number of modules replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace).train(child.training))
                replaced += 1
    if hasattr(model, "set_attn_implementation") and _pluggable_attention(model):
        _register()
        model.set_attn_implementation(ATTENTION)
    return replaced


def _pluggable_attention(model: nn.Module) -> bool:
    """True when the model dispatches attention through transformers' AttentionInterface (it then
    supports SDPA); MPNet, for one, computes its own, with ``nn.Dropout`` modules that are replaced."""
    implementation = getattr(model.config, "_attn_implementation", None)
    return bool(getattr(model, "_supports_sdpa", False)) and implementation == "sdpa"


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
