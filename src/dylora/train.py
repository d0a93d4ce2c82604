"""One training loop for every task, readable top to bottom.

Each optimisation step draws its rank b once (DyLoRA: ``rank_schedule``; LoRA: r_max) and uses
it for all of that step's micro-batches; with ``method.loss=sum`` a step instead backpropagates
the sum over every rank b of p_B(b) L_b (``summed_ranks``). The data order of epoch e is a
permutation seeded by (seed, e), so a run resumed from a checkpoint replays exactly the batches
it had not yet seen; with the RNG state restored too, a resumed run ends bit-identical to an
uninterrupted one.
Under torch.distributed each process takes its slice of every global batch. Forward and loss
run under ``trainer.precision``'s autocast; the step losses stay on the device and are read every
``READ_EVERY`` steps (and before each checkpoint), so no micro-batch waits for the host.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm
from transformers.trainer_pt_utils import get_length_grouped_indices

from dylora.adapters import adapter_config, hold_untrained_rows, set_rank
from dylora.adapters.io import adapter_state_dict, save_safetensors
from dylora.errors import TrainingError
from dylora.precision import autocast, grad_scaler, resolve_precision
from dylora.progress import bar as progress_bar
from dylora.records import atomic_write_json, sha256_file
from dylora.spec import TrainerSpec

if TYPE_CHECKING:
    from dylora.tasks.base import TaskData


@dataclass
class Distributed:
    """This process's place among ``world`` processes (1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class Placement:
    """Where training runs: the device and, under torch.distributed, this process's place and the
    DDP wrapper of the model (forward and backward go through it)."""

    device: torch.device
    dist: Distributed = field(default_factory=Distributed)
    ddp_model: nn.Module | None = None


@dataclass
class Callbacks:
    """What training tells the outside: a progress bar (main process only) and ``on_step(step, rank, loss)``."""

    progress: bool = True
    on_step: Callable[[int, int, float], None] | None = None


READ_EVERY = 10  # optimisation steps between reads of the losses (one host synchronisation each)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    ranks: list[int | list[int]] = field(default_factory=list)  # per step; a per-module draw lists each module's


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then linear decay to 0 at ``total`` (as HF's schedule)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def make_optimizer(model: nn.Module, trainer: TrainerSpec) -> torch.optim.AdamW:
    """AdamW on the trainable parameters; no weight decay on biases and LayerNorm (ndim < 2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": trainer.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=trainer.lr)


def total_steps(n_examples: int, trainer: TrainerSpec) -> tuple[int, int]:
    """(optimisation steps per epoch, total optimisation steps)."""
    per_epoch = max(1, math.ceil(n_examples / (trainer.batch_size * trainer.grad_accum)))
    total = trainer.max_steps or math.ceil(trainer.epochs * per_epoch)
    return per_epoch, total


def step_indices(n: int, step: int, per_epoch: int, trainer: TrainerSpec, seed: int,
                 lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Example indices of each micro-batch of global step ``step`` (whole batches, all processes).
    With ``lengths`` (``trainer.group_by_length``) the epoch's order groups similar lengths, as HF's Trainer."""
    epoch, pos = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    global_batch = trainer.batch_size * trainer.grad_accum
    if lengths is None:
        order = torch.randperm(n, generator=generator).tolist()
    else:
        order = get_length_grouped_indices(lengths, global_batch, generator=generator)
    start = pos * global_batch
    batches = [order[start + i * trainer.batch_size : start + (i + 1) * trainer.batch_size]
               for i in range(trainer.grad_accum)]
    return [b for b in batches if b]


def train(
    model: nn.Module,
    data: TaskData,
    trainer: TrainerSpec,
    schedule: Callable[[int], int],
    seed: int,
    where: Placement,
    checkpoint_dir: Path | None = None,
    callbacks: Callbacks = Callbacks(),
    summed: Sequence[tuple[int, float]] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data.train`` and return what happened. ``data.loss(logits,
    labels)``, when given, replaces the model's own loss (e.g. label smoothing). ``summed``: the
    (rank, weight) pairs every step's loss sums over, in place of ``schedule``'s one rank."""
    dataset, dist, device = data.train, where.dist, where.device
    forward = where.ddp_model or model
    optimizer = make_optimizer(model, trainer)
    precision = resolve_precision(trainer.precision, device.type)  # RunSpec resolved it; a bare TrainerSpec may not
    scaler = grad_scaler(precision, device)
    per_epoch, total = total_steps(len(dataset), trainer)
    lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))] if trainer.group_by_length else None
    warmup = trainer.warmup_steps if trainer.warmup_steps is not None else math.ceil(trainer.warmup_ratio * total)
    result = TrainResult(steps=0, seconds=0.0)
    if checkpoint_dir is not None:
        load_checkpoint(checkpoint_dir, model, optimizer, result, scaler)
    bar = progress_bar(total=total, initial=result.steps, desc="train", enabled=callbacks.progress and dist.is_main)
    pending: list[tuple[int, int, torch.Tensor]] = []  # (step, rank, loss on the device), not yet read
    start = time.perf_counter() - result.seconds
    model.train()
    while result.steps < total:
        step = result.steps
        terms = summed or [(schedule(step), 1.0)]
        rank = _step_rank(terms)
        for group in optimizer.param_groups:
            group["lr"] = trainer.lr * lr_factor(step, total, warmup)
        micro_batches = step_indices(len(dataset), step, per_epoch, trainer, seed, lengths)
        loss = torch.zeros((), device=device)
        for i, (b, weight) in enumerate(terms):
            set_rank(model, b)
            loss += weight * _accumulate(forward, dataset, data.collate, micro_batches, dist, device, precision,
                                         scaler, data.loss, weight, sync=i == len(terms) - 1)
        if trainer.max_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], trainer.max_grad_norm)
        with hold_untrained_rows(model, [b for b, _ in terms]):
            scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        result.steps, result.seconds = step + 1, time.perf_counter() - start
        pending.append((step, rank, loss))
        bar.update(1)
        at_checkpoint = result.steps % trainer.checkpoint_every == 0 or result.steps % per_epoch == 0
        # every process reads at the same steps, so all of them stop at the same one on a non-finite loss
        if at_checkpoint or result.steps % READ_EVERY == 0 or result.steps == total:
            _read_losses(pending, result, bar, callbacks, checkpoint_dir, trainer)
        if checkpoint_dir is not None and dist.is_main and at_checkpoint and result.steps < total:
            save_checkpoint(checkpoint_dir, model, optimizer, result, scaler)
    bar.close()
    set_rank(model, adapter_config(model).r_max)
    return result


def _step_rank(terms) -> int | list[int]:
    """The step's rank as recorded: its one b; r_max for the summed loss; each module's b, in module order,
    for a per-module draw."""
    if isinstance(terms[0][0], int):
        return max(b for b, _ in terms)
    return list(terms[0][0].values())


def _read_losses(pending: list[tuple[int, int, torch.Tensor]], result: TrainResult, bar, callbacks: Callbacks,
                 checkpoint_dir: Path | None, trainer: TrainerSpec) -> None:
    """Bring the pending step losses to the host (one synchronisation), record and report them; a
    non-finite loss stops training before anything after it is checkpointed."""
    values = torch.stack([loss for _, _, loss in pending]).tolist()
    for (step, rank, _), loss in zip(pending, values):
        if not math.isfinite(loss):
            raise TrainingError(
                f"the training loss became {loss} at step {step} (rank {rank}); lower trainer.lr (now {trainer.lr}) "
                f"or check the data. The last checkpoint is kept in {checkpoint_dir}"
            )
        result.losses.append(loss)
        result.ranks.append(rank)
        if callbacks.on_step is not None:
            callbacks.on_step(step, rank, loss)
    bar.set_postfix(loss=f"{values[-1]:.4f}", rank=pending[-1][1])
    pending.clear()


def _accumulate(forward, dataset, collate, micro_batches, dist: Distributed, device, precision: str,
                scaler: torch.amp.GradScaler, loss_fn=None, scale: float = 1.0, sync: bool = True) -> torch.Tensor:
    """Backward of ``scale`` x the loss over one step's micro-batches (this process's slice); returns the
    step's mean loss, unscaled, on the device. Forward and loss run under ``precision``'s autocast, backward
    outside it (PyTorch's AMP recipe). ``sync``: DDP all-reduces on the last micro-batch (else never)."""
    n_step = sum(len(b) for b in micro_batches)
    total_loss = torch.zeros((), device=device)
    for i, indices in enumerate(micro_batches):
        mine = indices[dist.rank :: dist.world]
        # DDP needs a backward from every process: a process with no example of this (short)
        # micro-batch runs one with weight 0.
        batch = {k: v.to(device) for k, v in collate([dataset[j] for j in mine or indices[:1]]).items()}
        # This slice's share of the global batch, times world because DDP averages over processes:
        # the gradient is then the global batch's mean whatever the split.
        weight = scale * len(mine) * dist.world / n_step
        last = sync and i == len(micro_batches) - 1
        with nullcontext() if last or not hasattr(forward, "no_sync") else forward.no_sync():  # one all-reduce per step
            with autocast(precision, device):
                if loss_fn is None:
                    loss = forward(**batch).loss
                else:
                    labels = batch.pop("labels")
                    loss = loss_fn(forward(**batch).logits, labels)
            scaler.scale(loss * weight).backward()
        total_loss += loss.detach().float() * (len(mine) / n_step)
    if dist.world > 1:  # the global batch's loss, so every process sees (and stops on) the same value
        torch.distributed.all_reduce(total_loss)
    return total_loss


# ---------------------------------------------------------------------------- checkpoints

STATE = "state-{step}.safetensors"
POINTER = "latest.json"


def save_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, result: TrainResult,
                    scaler: torch.amp.GradScaler | None = None) -> None:
    """Adapter, head, optimizer, loss scaler and RNG states (CPU and every CUDA device) as safetensors;
    ``latest.json`` (with its sha256) is switched to it only once it is fully written, so a kill at any
    moment leaves a usable checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in adapter_state_dict(model).items()}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors |= _rng_states()
    name = STATE.format(step=result.steps)
    meta = {"param_groups": json.dumps(opt["param_groups"]), "result": json.dumps(result.__dict__),
            "scaler": json.dumps(scaler.state_dict() if scaler is not None else {})}
    save_safetensors(tensors, directory / name, meta)  # atomic: a full disk leaves no half-written file
    atomic_write_json(directory / POINTER, {"file": name, "sha256": sha256_file(directory / name)})
    for old in directory.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink()


def checkpoint_step(directory: Path) -> int:
    """The step of the latest checkpoint in ``directory`` (0 when there is none), where a rerun resumes;
    from the pointer's file name alone (load_checkpoint checks the file)."""
    try:
        name = json.loads((directory / POINTER).read_text())["file"]
        prefix, suffix = STATE.split("{step}")
        return int(name.removeprefix(prefix).removesuffix(suffix))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0


def load_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, result: TrainResult,
                    scaler: torch.amp.GradScaler | None = None) -> bool:
    """Restore the latest checkpoint into model/optimizer/result/scaler; False when there is none usable.
    A checkpoint whose checksum does not match is reported and ignored (training starts over)."""
    pointer = directory / POINTER
    if not pointer.exists():
        return False
    try:
        info = json.loads(pointer.read_text())
        path = directory / info["file"]
        if sha256_file(path) != info["sha256"]:
            raise ValueError("checksum mismatch")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        tqdm.write(f"warning: checkpoint in {directory} is unusable ({e}); training starts from the beginning",
                   file=sys.stderr)
        return False
    state = adapter_state_dict(model)
    with torch.no_grad():
        params = dict(model.named_parameters()) | dict(model.named_buffers())
        for key in state:
            _param_for(model, key, params).copy_(tensors[f"model.{key}"])
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["param_groups"])})
    _set_rng_states(tensors)
    scaler_state = json.loads(meta.get("scaler", "{}"))
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)
    result.__dict__.update(json.loads(meta["result"]))
    tqdm.write(f"resuming from step {result.steps} ({path})", file=sys.stderr)
    return True


def _rng_states() -> dict[str, torch.Tensor]:
    """Every generator a run draws from: the CPU's, and each CUDA device's once CUDA is in use (dropout)."""
    states = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states |= {f"rng.cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}
    return states


def _set_rng_states(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))]
    if cuda:
        if not torch.cuda.is_available() or len(cuda) != torch.cuda.device_count():
            here = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise TrainingError(f"this checkpoint holds the RNG state of {len(cuda)} CUDA device(s), this machine has "
                                f"{here}: resume it where it ran")
        torch.cuda.set_rng_state_all(cuda)


def _param_for(model: nn.Module, key: str, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model tensor behind an ``adapter_state_dict`` key (adapters are stored by module path)."""
    if key.endswith(".lora_A") or key.endswith(".lora_B"):
        module, _, name = key.rpartition(".")
        return getattr(model.get_submodule(module), name)
    return params[key]
