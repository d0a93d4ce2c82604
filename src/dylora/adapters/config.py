"""AdapterConfig: every choice of the method in one validated place.

Where the DyLoRA paper and its official code differ, each behaviour is an option and the
default is stated (see ../shared/reference/dylora_paper_setup.md, sections 3, 4 and 9):

* ``scaling``: ``"rank"`` (default) scales the rank-b product by alpha/b, as the paper's
  Eq. 7 and, effectively, the official code do (alpha/r_max times sqrt(r_max/b) twice);
  ``"r_max"`` scales it by alpha/r_max at every rank. Both methods use the same rule, so
  truncated LoRA is scaled exactly as DyLoRA is.
* ``distribution``: ``"uniform"`` (default) on [r_min, r_max], or the ablation's
  ``"geometric"``: P(b) proportional to p(1-p)^(b-r_min), renormalised on [r_min, r_max].
* ``update_rule``: ``"all"`` (default, the paper's headline "DyLoRA") trains rows/columns
  1..b; ``"frozen"`` (the paper's "DyLoRA (Frozen)", what the official code always runs)
  trains only row/column b.
* ``loss``: ``"sampled"`` (default, the paper's Eq. 9) trains each step at one sampled b;
  ``"sum"`` (nested dropout's expected loss, the paper's Table 7) trains every step on
  sum over b in [r_min, r_max] of p_B(b) L_b: one forward and backward per rank.
* ``sampling``: ``"global"`` (default, the paper's) draws one b per step for every module;
  ``"per_module"`` lets each module draw its own b each step (as kohya-ss and LyCORIS do), an
  ablation for adapters whose modules are later given ranks of their own.
* ``masking``: how rows that must not learn are kept out. ``"gradient"`` (default) zeroes
  their gradient, as the official code does (AdamW momentum and weight decay still move
  them); ``"update"`` restores them after every optimizer step, so they stay exactly still,
  as the paper's Eq. 10 says.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from dylora.errors import ConfigError

METHODS = ("lora", "dylora")
SCALINGS = ("rank", "r_max")
DISTRIBUTIONS = ("uniform", "geometric")
UPDATE_RULES = ("all", "frozen")
MASKINGS = ("gradient", "update")
LOSSES = ("sampled", "sum")
SAMPLINGS = ("global", "per_module")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")


@dataclass
class AdapterConfig:
    """Configuration of LoRA / DyLoRA adapters (see the module docstring for the choices)."""

    method: str = "dylora"
    r_max: int = 8
    r_min: int = 1
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: the model family's default (query/value, c_attn q/v)
    modules_to_save: list[str] | None = None  # None: the task head if the model has one
    scaling: str = "rank"
    distribution: str = "uniform"
    geometric_p: float = 0.15
    update_rule: str = "all"
    masking: str = "gradient"
    loss: str = "sampled"
    sampling: str = "global"

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("scaling", self.scaling, SCALINGS)
        _choice("distribution", self.distribution, DISTRIBUTIONS)
        _choice("update_rule", self.update_rule, UPDATE_RULES)
        _choice("masking", self.masking, MASKINGS)
        _choice("loss", self.loss, LOSSES)
        _choice("sampling", self.sampling, SAMPLINGS)
        if self.sampling == "per_module" and (self.method == "lora" or self.loss == "sum"):
            raise ConfigError("sampling=per_module draws a rank per module each step: it needs method=dylora with "
                              f"loss=sampled (got method={self.method}, loss={self.loss}); use sampling=global")
        if self.loss == "sum" and self.method == "lora":
            raise ConfigError("loss=sum sums DyLoRA's loss over the ranks; LoRA trains at r_max only: "
                              "use method.loss=sampled, or method=dylora")
        for name in ("r_max", "r_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}: ranks are whole numbers >= 1")
        if self.r_min > self.r_max:
            raise ConfigError(f"r_min={self.r_min} is larger than r_max={self.r_max}; set r_min <= r_max")
        if not self.alpha > 0:
            raise ConfigError(f"alpha={self.alpha!r} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout!r} must be in [0, 1)")
        if not 0.0 < self.geometric_p < 1.0:
            raise ConfigError(f"geometric_p={self.geometric_p!r} must be in (0, 1)")
        if self.target_modules is not None and len(self.target_modules) == 0:
            raise ConfigError("target_modules=[] adapts nothing; name at least one module or leave it unset")

    def scale(self, rank: int) -> float:
        """The factor s(b) multiplying B[:, :b] @ A[:b] at rank b."""
        self.check_rank(rank)
        return self.alpha / (rank if self.scaling == "rank" else self.r_max)

    def check_rank(self, rank: int) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= self.r_max:
            raise ConfigError(f"rank {rank!r} is outside 1..r_max={self.r_max}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AdapterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown adapter option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
