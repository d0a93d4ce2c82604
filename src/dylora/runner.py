"""One run: decide, build, train, sweep, seal, as ``_execute`` reads.

decide: a run whose record is complete is skipped; one asked for a truncation (``eval.truncation``) its
metrics lack is evaluated at it from its saved adapter, and its record completed, without training again.
What makes a record complete, and what becomes of one that is not, is ``dylora.record_life``'s.
build: the model, its task, the adapters, precision and dropout. train: from its checkpoint when an unfinished
run left one. sweep: every rank under each truncation, the first also at rank 0, with the predictions.
seal: the adapter, metrics, predictions, env and DONE.
Under torchrun every process trains on its slice of each batch; only the main process writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as torch_dist
from torch import nn

from dylora import record_life, records
from dylora.adapters import (
    adapter_layers,
    add_adapters,
    rank_schedule,
    save_adapter,
    summed_ranks,
    trainable_parameters,
)
from dylora.adapters.io import load_adapter, load_lora_weights
from dylora.dropout import use_fast_dropout
from dylora.errors import ConfigError, TrainingError
from dylora.models import load_model, load_tokenizer
from dylora.precision import cast_frozen, set_tf32
from dylora.record_life import Sweep, say
from dylora.record_life import finished as finished  # re-exported: the record's life moved to dylora.record_life
from dylora.spec import RunSpec
from dylora.sweep import rank_sweep
from dylora.tasks.registry import build_task, data_files, num_labels
from dylora.tracking import make_tracker
from dylora.train import Callbacks, Distributed, Placement, TrainResult, train


@contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` meanwhile (``trainer.threads``; None: left alone):
    a CPU's results follow the thread count, so a run that must reproduce committed numbers names it."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def execute(spec: RunSpec, progress: bool = True, load: Callable[[nn.Module], None] | None = None) -> Path:
    """Run ``spec`` (or skip it when its record is complete) and return its run directory. The main
    process holds the run's lock meanwhile: the same run started elsewhere waits, then skips. ``load``
    replaces training: it puts an adapter trained elsewhere into the model's adapters and head, and the
    record holds that adapter's rank curves (train_steps 0; ``dylora-adapter-curve``)."""
    run_dir = records.run_dir_for(spec.out_dir, spec.config)
    dist = _init_distributed()
    with pinned_threads(spec.trainer.threads), record_life.held(run_dir, writer=dist.is_main):
        return _execute(spec, run_dir, dist, progress, load)


def _execute(spec: RunSpec, run_dir: Path, dist: Distributed, progress: bool,
             load: Callable[[nn.Module], None] | None) -> Path:
    # decide: only the main process reads the data's fingerprint and the record (and moves a bad one aside)
    fingerprint = records.data_fingerprint(data_files(spec)) if dist.is_main else {}
    decision = _from_main(record_life.decide(run_dir, fingerprint, spec.truncations) if dist.is_main else None, dist)
    if decision.complete:
        _complete(spec, run_dir, decision.lacks, dist, progress)
        return run_dir
    # build
    device = _device(spec.trainer.device, dist)
    model, data = build(spec, run_dir, device)
    if dist.is_main:
        record_life.start(run_dir, spec.config, fingerprint)
    tracker = make_tracker(spec.logger, spec.config, run_dir, run_dir.name, spec.experiment) if dist.is_main else None
    try:
        # train
        where = Placement(device, dist, _ddp(model, device, dist))
        callbacks = Callbacks(progress, tracker.log_step if tracker else None)
        result, schedules = _train(spec, model, data, run_dir, where, callbacks, load)
        if not dist.is_main:
            return run_dir
        save_adapter(model, run_dir / records.ADAPTER)  # the seal's first file, as trained: before the sweep merges it
        # sweep
        sweep = _sweep(spec, model, data, spec.truncations, tracker, progress)
        # seal
        record_life.seal(run_dir, sweep, _env(spec, model, device, dist, result, sweep.seconds, schedules))
        return run_dir
    finally:
        if tracker is not None:
            tracker.finish()
        if dist.world > 1:
            torch_dist.barrier()


# ---------------------------------------------------------------------------- decide: a complete record


def _complete(spec: RunSpec, run_dir: Path, lacks: list[str], dist: Distributed, progress: bool) -> None:
    """A complete record: skipped, or evaluated at the truncations it ``lacks`` (on the main process only)."""
    if not lacks:
        say(f"skip: {run_dir} is already complete")
    elif dist.is_main:
        say(f"evaluating the finished {run_dir} at truncation {', '.join(lacks)}")
        _evaluate_again(spec, run_dir, lacks, _device(spec.trainer.device, dist), progress)


def _evaluate_again(spec: RunSpec, run_dir: Path, truncations: list[str], device, progress: bool) -> None:
    """Sweep the finished run's saved adapter under ``truncations`` (no rank 0: the record has it) and seal
    the record again with the new rows."""
    model, data = load_finished(spec, run_dir, device, outputs=True)
    tracker = make_tracker(spec.logger, spec.config, run_dir, run_dir.name, spec.experiment)
    try:
        sweep = _sweep(spec, model, data, truncations, tracker, progress, rank_zero=False)
    finally:
        tracker.finish()
    record_life.seal_again(run_dir, truncations, sweep)


# ---------------------------------------------------------------------------- build


def build(spec: RunSpec, run_dir: Path | None, device):
    """(model with fresh adapters, its task's data), on ``device`` at the run's precision and dropout;
    ``run_dir``: where evaluation writes its texts (None: nowhere)."""
    model, data = _model_and_task(spec, device, run_dir)
    torch.manual_seed(spec.seed)  # the adapters' initial A depends on the run seed only
    add_adapters(model, spec.adapter)
    if spec.trainer.init_from:
        _init_from(spec, model)
    cast_frozen(model, spec.model.dtype)
    if spec.trainer.fast_dropout:
        use_fast_dropout(model)
    model.to(device)
    set_tf32(spec.trainer.tf32)
    return model, data


def load_finished(spec: RunSpec, run_dir: Path, device, outputs: bool = False):
    """(model with the run's trained adapter and head, its task's data) for the finished run ``spec`` made
    in ``run_dir``; ``outputs``: evaluation writes its texts (NLG) into the record, as the run's own did."""
    model, data = _model_and_task(spec, device, run_dir if outputs else None)
    load_adapter(model, run_dir / records.ADAPTER)
    cast_frozen(model, spec.model.dtype)
    model.to(device)
    set_tf32(spec.trainer.tf32)
    return model, data


def _model_and_task(spec: RunSpec, device, outputs: Path | None):
    """(the base model with its head, its task's data); ``outputs``: where evaluation writes its texts."""
    torch.manual_seed(spec.seed)
    tokenizer = load_tokenizer(spec.model)
    model = load_model(spec.model, tokenizer, num_labels(spec))
    return model, build_task(spec, model, tokenizer, device, outputs)


def _init_from(spec: RunSpec, model) -> None:
    """Start from the finished adapter of task ``init_from`` (same experiment, method, seed): the
    official scripts' MNLI initialisation. Only A and B are taken; the head is the task's own."""
    source_root = Path(spec.out_dir) / spec.experiment / spec.trainer.init_from / spec.method_name
    candidates = sorted(p for p in source_root.glob(f"seed{spec.seed}-*") if (p / records.DONE).exists())
    if not candidates:
        raise ConfigError(
            f"trainer.init_from={spec.trainer.init_from!r}: no finished run under {source_root} for seed {spec.seed}; "
            f"run task={spec.trainer.init_from} first (same experiment, method and seed)"
        )
    path = candidates[-1] / records.ADAPTER
    load_lora_weights(model, path)
    say(f"initialised the adapters from {path}")


# ---------------------------------------------------------------------------- train


def _train(spec: RunSpec, model, data, run_dir: Path, where: Placement, callbacks: Callbacks,
           load: Callable[[nn.Module], None] | None) -> tuple[TrainResult, list[str]]:
    """Train (or ``load`` an adapter trained elsewhere): the result, and each process's digest of its rank
    sequence, which must all agree."""
    if load is None:
        schedule = rank_schedule(spec.adapter, spec.seed, [name for name, _ in adapter_layers(model)])
        result = train(model, data, spec.trainer, schedule, spec.seed, where,
                       run_dir / records.CHECKPOINT, callbacks, summed_ranks(spec.adapter))
    else:
        load(model)
        result = TrainResult(steps=0, seconds=0.0)
    schedules = _gather(_digest(result.ranks), where.dist)
    if len(set(schedules)) > 1:
        raise TrainingError(f"the processes trained with different rank sequences (sha256 {schedules}); "
                            "every process must run the same configuration and seed")
    return result, schedules


def _digest(ranks: list[int]) -> str:
    return hashlib.sha256(json.dumps(ranks).encode()).hexdigest()


# ---------------------------------------------------------------------------- sweep


def _sweep(spec: RunSpec, model, data, truncations: list[str], tracker, progress: bool,
           rank_zero: bool = True) -> Sweep:
    """The rank sweep under each truncation, the first also at rank 0 (the adapter off) when ``rank_zero``."""
    metric_rows, seconds, predictions = [], {}, {}
    for truncation in truncations:

        def evaluate(model, rank: int) -> dict[str, dict[str, float]]:
            if data.predict is None:  # NLG: its texts go to outputs/
                return data.evaluate(model, rank)
            results = {}
            for split, (predicted, labels) in data.predict(model).items():
                predictions[records.prediction_key(truncation, rank, split)] = predicted
                predictions[records.labels_key(split)] = labels
                results[split] = data.score(predicted, labels)
            return results

        ranks = [0, *spec.eval_ranks] if rank_zero and truncation == truncations[0] else spec.eval_ranks
        start = time.perf_counter()
        rows = list(rank_sweep(model, ranks, evaluate, progress, spec.trainer.precision, truncation))
        seconds[truncation] = time.perf_counter() - start
        metric_rows += [records.MetricRow(spec.task.name, spec.method_name, spec.seed, rank, split, metric, value,
                                          truncation) for rank, split, metric, value in rows]
        tracker.log_rank_curve(rows, truncation)
    return Sweep(metric_rows, seconds, predictions)


# ---------------------------------------------------------------------------- seal: env.json


def loss_ends(losses: list[float]) -> dict[str, float]:
    """The training loss's mean over the first and the last tenth of the steps (at least one step each): whether
    a run learned, read from training alone."""
    if not losses:
        return {}
    k = max(1, len(losses) // 10)
    return {"train_loss_start": sum(losses[:k]) / k, "train_loss_end": sum(losses[-k:]) / k}


def _env(spec: RunSpec, model, device, dist: Distributed, result: TrainResult, sweep_seconds: dict[str, float],
         schedules: list[str]) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {
        "packages": {p: v(p) for p in ("dylora", "torch", "transformers", "datasets", "peft", "hydra-core", "wandb")},
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "world_size": dist.world,
        "torch_threads": torch.get_num_threads(),
        # the numerics: autocast dtype, the frozen base's dtype, TF32 matmuls
        "precision": {"autocast": spec.trainer.precision, "base_dtype": spec.model.dtype, "tf32": spec.trainer.tf32},
        "trainable_parameters": trainable_parameters(model),
        "train_seconds": result.seconds,
        "train_steps": result.steps,
        **loss_ends(result.losses),
        "rank_sequence_sha256": schedules,  # one per process: sha256 of the JSON list of b per step
        "sweep_seconds": sum(sweep_seconds.values()),  # every truncation's rank sweep
        "sweep_seconds_by_truncation": sweep_seconds,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------- the processes and the device


def _init_distributed() -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if not torch_dist.is_initialized():
        if torch.cuda.is_available():  # NCCL collectives use the current device: one GPU per process
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch_dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(rank=torch_dist.get_rank(), world=torch_dist.get_world_size())


def _from_main(value, dist: Distributed):
    """The main process's ``value``, in every process."""
    if dist.world == 1:
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value, dist: Distributed) -> list:
    """``value`` of every process, in process order."""
    if dist.world == 1:
        return [value]
    values = [None] * dist.world
    torch_dist.all_gather_object(values, value)
    return values


def _device(choice: str, dist: Distributed) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():  # checked here: a plan may be made elsewhere
        raise ConfigError(f"trainer.device={choice} but PyTorch sees no CUDA device here; use trainer.device=auto "
                          "(the GPU when there is one) or trainer.device=cpu")
    if choice == "cuda" and dist.world > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(choice)


def _ddp(model, device, dist: Distributed):
    if dist.world == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
