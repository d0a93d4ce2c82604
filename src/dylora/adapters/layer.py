"""The adapted layer: a frozen base linear map plus a low-rank update truncatable to any rank.

At rank b the layer computes ``W0 x + s(b) * B[:, :b] @ A[:b] @ dropout(x)`` on each of its
output slices: one slice covering every output for a plain linear layer, or GPT-2's query and
value blocks inside the fused ``c_attn`` (as the LoRA paper adapts it), each slice with its
own A and B. Parameters are stacked per slice: ``lora_A`` is (slices, r_max, d_in) and
``lora_B`` is (slices, d_slice, r_max), so row i of A pairs with column i of B.

How rank b is taken from the r_max factors is the layer's ``truncation`` (evaluation only; training
always takes the prefix):

* ``prefix`` (the paper's): the first b rows of A and columns of B, scaled by s(b);
* ``svd``: the top-b singular triplets of each slice's full update s(r_max)·B·A, its best rank-b
  approximation (Eckart-Young), whatever order training left the rows in.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from dylora.adapters.config import AdapterConfig
from dylora.errors import ConfigError

TRUNCATIONS = ("prefix", "svd")


def check_truncation(truncation: str) -> None:
    if truncation not in TRUNCATIONS:
        raise ConfigError(f"truncation {truncation!r} is not one of {', '.join(TRUNCATIONS)}")


@torch.no_grad()
def svd_factors(a: torch.Tensor, b: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vh) of ``scale * b @ a`` for stacked slices (a: n x r x d_in, b: n x d_out x r), singular values
    descending, computed through QR of the thin factors: exact, and r x r instead of d_out x d_in."""
    qb, rb = torch.linalg.qr(b.double())  # n x d_out x r, n x r x r
    qa, ra = torch.linalg.qr(a.double().transpose(1, 2))  # n x d_in x r, n x r x r
    u, s, vh = torch.linalg.svd(rb @ ra.transpose(1, 2) * scale)
    return qb @ u, s, vh @ qa.transpose(1, 2)


def base_dims(base: nn.Module) -> tuple[int, int, bool]:
    """(d_in, d_out, fan_in_fan_out) of an nn.Linear or a GPT-2 Conv1D (weight stored d_in x d_out)."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features, False
    if isinstance(base, Conv1D):
        d_in, d_out = base.weight.shape
        return d_in, d_out, True
    raise ConfigError(f"cannot adapt a {type(base).__name__}: only nn.Linear and GPT-2 Conv1D are supported")


def _no_autocast(tensor: torch.Tensor) -> torch.autocast:
    """Merging computes in fp32 even when called inside an autocast region."""
    return torch.autocast(tensor.device.type, enabled=False)


class DyLoRALayer(nn.Module):
    """A frozen ``base`` layer with a dynamic low-rank adapter on ``out_slices`` of its output."""

    def __init__(self, base: nn.Module, config: AdapterConfig, out_slices: list[tuple[int, int]] | None = None):
        super().__init__()
        d_in, d_out, self.fan_in_fan_out = base_dims(base)
        self.base = base
        self.config = config
        self.out_slices = out_slices or [(0, d_out)]
        sizes = {hi - lo for lo, hi in self.out_slices}
        if len(sizes) != 1 or any(not 0 <= lo < hi <= d_out for lo, hi in self.out_slices):
            raise ConfigError(f"output slices {self.out_slices} must be equal-sized ranges inside 0..{d_out}")
        d_slice = sizes.pop()
        n = len(self.out_slices)
        device = base.weight.device  # the adapter is fp32 whatever the base's dtype (it trains)
        self.lora_A = nn.Parameter(torch.empty(n, config.r_max, d_in, device=device))
        self.lora_B = nn.Parameter(torch.zeros(n, d_slice, config.r_max, device=device))
        for a in self.lora_A:  # the LoRA code's init: A Kaiming-uniform(a=sqrt 5), B zero
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self._full_output = self.out_slices == [(0, d_out)]
        self.register_buffer(
            "_out_index", torch.cat([torch.arange(lo, hi) for lo, hi in self.out_slices]), persistent=False
        )
        self.rank = config.r_max
        self.truncation = "prefix"
        self.merged_rank: int | None = None
        self.off = False  # rank 0: the base alone (adapters_off)
        self._unmerged: torch.Tensor | None = None  # the base weight as it was before merge()

    # ------------------------------------------------------------------ rank and its factors

    def set_rank(self, rank: int) -> None:
        """Use the first ``rank`` rows of A and columns of B; a merged layer is re-merged at it."""
        self.config.check_rank(rank)
        if self.merged_rank is not None and self.merged_rank != rank:
            self.unmerge()
            self.rank = rank
            self.merge()
        self.rank = rank

    def set_truncation(self, truncation: str) -> None:
        """Take rank b by ``truncation`` (``prefix`` | ``svd``); a merged layer is re-merged by it."""
        check_truncation(truncation)
        merged = self.merged_rank is not None
        if merged and truncation != self.truncation:
            self.unmerge()
        self.truncation = truncation
        if merged:
            self.merge()

    def factors(self, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A', B', s), each slice's update at rank b under the layer's truncation being s * B' @ A' (A' is
        n x b x d_in, B' n x d_slice x b, fp32). For ``svd`` A' = V_b^T and B' = U_b S_b / s(b): s stays s(b),
        which a PEFT export's lora_alpha encodes."""
        b = self.rank if rank is None else rank
        scale = self.config.scale(b)
        if self.truncation == "prefix":
            return self.lora_A[:, :b], self.lora_B[:, :, :b], scale
        u, s, vh = svd_factors(self.lora_A, self.lora_B, self.config.scale(self.config.r_max))
        return vh[:, :b].float(), (u[:, :, :b] * s[:, None, :b] / scale).float(), scale

    def truncated(self, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(A[:, :b], B[:, :, :b]); with the frozen update rule only row/column b carries gradient."""
        b = self.rank if rank is None else rank
        a, bb = self.lora_A[:, :b], self.lora_B[:, :, :b]
        if self.config.method == "dylora" and self.config.update_rule == "frozen" and b > 1:
            # As the official code does: rows below b enter the forward pass detached.
            a = torch.cat([a[:, : b - 1].detach(), a[:, b - 1 :]], dim=1)
            bb = torch.cat([bb[:, :, : b - 1].detach(), bb[:, :, b - 1 :]], dim=2)
        return a, bb

    def trained_rows(self, rank: int | None = None) -> torch.Tensor:
        """Boolean mask over 0..r_max-1 of the rows that learn at ``rank`` (default: the current rank)."""
        rank = self.rank if rank is None else rank
        mask = torch.zeros(self.config.r_max, dtype=torch.bool, device=self.lora_A.device)
        if self.config.method == "dylora" and self.config.update_rule == "frozen":
            mask[rank - 1] = True
        else:
            mask[:rank] = True
        return mask

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged_rank is not None or self.off:
            return out
        if self.truncation == "prefix":
            a, b = self.truncated()
            scale = self.config.scale(self.rank)
        else:  # an evaluation: the SVD's factors carry no gradient
            a, b, scale = self.factors()
        h = self.dropout(x)
        if self._full_output:
            return out + (h @ a[0].T) @ b[0].T * scale
        z = h @ a.flatten(0, 1).T  # (..., slices * rank)
        z = z.unflatten(-1, (a.shape[0], a.shape[1]))  # (..., slices, rank)
        delta = torch.einsum("...sr,sor->...so", z, b).flatten(-2) * scale
        return out.index_add(-1, self._out_index, delta.to(out.dtype))

    # ------------------------------------------------------------------ merge

    def delta_weight(self, rank: int) -> torch.Tensor:
        """The update at rank b (s(b) * B[:, :b] @ A[:b] for the prefix) in fp32, laid out as the base weight
        (d_out x d_in, or d_in x d_out for Conv1D)."""
        a, b, scale = self.factors(rank)
        d_out = self.base.weight.shape[1] if self.fan_in_fan_out else self.base.weight.shape[0]
        delta = torch.zeros(d_out, a.shape[-1], dtype=a.dtype, device=a.device)
        with _no_autocast(a):
            delta[self._out_index] = (b @ a).flatten(0, 1) * scale
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def _merged_weight(self, weight: torch.Tensor, rank: int) -> torch.Tensor:
        """``weight`` + delta_weight(rank), summed in fp32 and cast once to the weight's dtype (a bf16
        weight keeps ~3 significant digits: adding the update in bf16 would round much of it away). A
        full-output layer (every BERT/RoBERTa target) does it in one fused addmm: no d_out x d_in
        temporary for the update (the rank sweep merges every layer at every rank)."""
        if not self._full_output:
            return (weight.float() + self.delta_weight(rank)).to(weight.dtype)
        a, b, scale = self.factors(rank)
        a, b = a[0], b[0]
        with _no_autocast(a):
            if self.fan_in_fan_out:
                return torch.addmm(weight.float(), a.T, b.T, alpha=scale).to(weight.dtype)
            return torch.addmm(weight.float(), b, a, alpha=scale).to(weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter at the current rank into the base weight (for fast evaluation). The weight
        as it was is kept, and ``unmerge`` restores it bit for bit (subtracting again would not be exact)."""
        if self.merged_rank is not None:
            return
        self._unmerged = self.base.weight.detach().clone()
        self.base.weight.copy_(self._merged_weight(self._unmerged, self.rank))
        self.merged_rank = self.rank

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put back the base weight exactly as it was before ``merge``."""
        if self.merged_rank is None:
            return
        self.base.weight.copy_(self._unmerged)
        self._unmerged = None
        self.merged_rank = None

    def extra_repr(self) -> str:
        return (f"rank={self.rank}, r_max={self.config.r_max}, truncation={self.truncation}, slices={self.out_slices}, "
                f"merged={self.merged_rank}")
