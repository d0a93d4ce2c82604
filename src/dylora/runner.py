"""One run: build the model and task, train once, evaluate every rank, write the run record.

A run whose record is complete is skipped; an unfinished one resumes from its checkpoint. A complete
one asked for a truncation (``eval.truncation``) its metrics lack is evaluated at it from its saved
adapter, and its record completed, without training again.
Under torchrun every process trains on its slice of each batch; only the main process writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as torch_dist
from torch import nn

from dylora import records
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
from dylora.errors import ConfigError, DataError, RecordError, TrainingError
from dylora.models import load_model, load_tokenizer
from dylora.precision import cast_frozen, set_tf32
from dylora.spec import RunSpec
from dylora.sweep import rank_sweep
from dylora.tasks.registry import build_task, data_files, num_labels
from dylora.tracking import make_tracker
from dylora.train import Callbacks, Distributed, Placement, TrainResult, train


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def finished(run_dir: Path, data: dict[str, str]) -> bool:
    """True when the record is complete and was made from ``data`` (a data fingerprint). A corrupted
    record, or one whose data has changed since, is moved aside (reported, kept, never used); a record
    set aside as stale whose data matches ``data`` again is taken back instead of training again. A data
    file that is missing while a record exists is an error, and nothing is moved."""
    missing = sorted(path for path, digest in data.items() if digest == records.MISSING)
    if missing and (run_dir.exists() or records.set_aside(run_dir, "stale")):
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"data file {missing[0]}{more} is missing: put it back, or point data.glue_dir= / "
                        f"data.nlg_dir= to the folder that holds it; the record {run_dir} is left as it is")
    try:
        done = records.verify_done(run_dir)
    except RecordError as e:
        say(f"warning: {e}\nmoved it to {_move_aside(run_dir, 'corrupt')}; running it again")
        done = False
    changed = records.changed_data(run_dir, data) if done else []
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        say(f"data changed since {run_dir} ran ({changed[0]}{more}): running it again; the old record is kept "
            f"in {_move_aside(run_dir, 'stale')}")
    elif done:
        return True
    return _take_back(run_dir, data)


def _take_back(run_dir: Path, data: dict[str, str]) -> bool:
    """Put back the newest record set aside as stale that was made from ``data``; whether there was one. An
    unfinished run in its place (trained from other data) is moved aside first."""
    kept = next((aside for aside in records.set_aside(run_dir, "stale") if records.made_from(aside, data)), None)
    if kept is None:
        return False
    if run_dir.exists():
        say(f"moved the unfinished {run_dir} to {_move_aside(run_dir, 'unfinished')}")
    kept.rename(run_dir)
    say(f"the data of {run_dir} is again what its record {kept.name} was made from: took that record back "
        "instead of training again")
    return True


def _move_aside(run_dir: Path, why: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = run_dir.with_name(f"{run_dir.name}.{why}-{stamp}")
    n = 1
    while aside.exists():  # twice in one second: never onto an earlier one
        n += 1
        aside = run_dir.with_name(f"{run_dir.name}.{why}-{stamp}-{n}")
    run_dir.rename(aside)
    return aside


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
    with pinned_threads(spec.trainer.threads):
        if not dist.is_main:
            return _execute(spec, run_dir, dist, progress, load)
        with records.run_lock(run_dir, lambda: say(f"waiting: {run_dir} is being run by another process")):
            return _execute(spec, run_dir, dist, progress, load)


def _execute(spec: RunSpec, run_dir: Path, dist: Distributed, progress: bool,
             load: Callable[[nn.Module], None] | None) -> Path:
    # only the main process reads the data's fingerprint and moves a bad or stale record aside
    fingerprint = records.data_fingerprint(data_files(spec)) if dist.is_main else {}
    if _from_main(finished(run_dir, fingerprint) if dist.is_main else None, dist):
        missing = _from_main(_missing_truncations(run_dir, spec) if dist.is_main else None, dist)
        if not missing:
            say(f"skip: {run_dir} is already complete")
        elif dist.is_main:  # evaluation runs on the main process only
            say(f"evaluating the finished {run_dir} at truncation {', '.join(missing)}")
            _evaluate_finished(spec, run_dir, missing, _device(spec.trainer.device, dist), progress)
        return run_dir
    device = _device(spec.trainer.device, dist)
    torch.manual_seed(spec.seed)
    tokenizer = load_tokenizer(spec.model)
    model = load_model(spec.model, tokenizer, num_labels(spec))
    data = build_task(spec, model, tokenizer, device, run_dir)
    torch.manual_seed(spec.seed)  # the adapters' initial A depends on the run seed only
    add_adapters(model, spec.adapter)
    if spec.trainer.init_from:
        _init_from(spec, model)
    cast_frozen(model, spec.model.dtype)
    if spec.trainer.fast_dropout:
        use_fast_dropout(model)
    model.to(device)
    set_tf32(spec.trainer.tf32)
    if dist.is_main:
        records.write_config(run_dir, spec.config)
        records.write_data(run_dir, fingerprint)
    tracker = make_tracker(spec.logger, spec.config, run_dir, run_dir.name, spec.experiment) if dist.is_main else None
    try:
        where = Placement(device, dist, _ddp(model, device, dist))
        callbacks = Callbacks(progress, tracker.log_step if tracker else None)
        if load is None:
            schedule = rank_schedule(spec.adapter, spec.seed, [name for name, _ in adapter_layers(model)])
            result = train(model, data, spec.trainer, schedule, spec.seed, where,
                           run_dir / records.CHECKPOINT, callbacks, summed_ranks(spec.adapter))
        else:
            load(model)
            result = TrainResult(steps=0, seconds=0.0)
        schedules = _gather(_digest(result.ranks), dist)
        if len(set(schedules)) > 1:
            raise TrainingError(f"the processes trained with different rank sequences (sha256 {schedules}); "
                                "every process must run the same configuration and seed")
        if not dist.is_main:
            return run_dir
        save_adapter(model, run_dir / records.ADAPTER)
        metric_rows, seconds, predictions = _sweeps(spec, model, data, spec.truncations, tracker, progress)
        records.write_metrics(run_dir, metric_rows)
        if predictions:
            records.write_predictions(run_dir, predictions)
        records.write_env(run_dir, _env(spec, model, device, dist, result, seconds, schedules))
        records.mark_done(run_dir)
        shutil.rmtree(run_dir / records.CHECKPOINT, ignore_errors=True)
        say(f"done: {run_dir}")
        return run_dir
    finally:
        if tracker is not None:
            tracker.finish()
        if dist.world > 1:
            torch_dist.barrier()


def _sweeps(spec: RunSpec, model, data, truncations: list[str], tracker, progress: bool, rank_zero: bool = True
            ) -> tuple[list[records.MetricRow], dict[str, float], dict]:
    """The rank sweep under each truncation, the first also at rank 0 (the adapter off) when ``rank_zero``:
    its metric rows, its seconds by truncation, and each row's prediction (classification tasks; arrays by
    ``records.prediction_key``, with the labels)."""
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
    return metric_rows, seconds, predictions


def _missing_truncations(run_dir: Path, spec: RunSpec) -> list[str]:
    """The truncations ``spec`` asks for that the finished run's metrics lack."""
    have = {row.truncation for row in records.read_metrics(run_dir)}
    return [t for t in spec.truncations if t not in have]


def _evaluate_finished(spec: RunSpec, run_dir: Path, truncations: list[str], device, progress: bool) -> None:
    """Sweep the finished run's saved adapter under ``truncations`` and add the rows to its record: the
    metrics, the sweep's seconds in env.json, eval.truncation in config.yaml (every truncation it now has),
    and DONE over the whole record again."""
    model, data = load_finished(spec, run_dir, device, outputs=True)
    tracker = make_tracker(spec.logger, spec.config, run_dir, run_dir.name, spec.experiment)
    try:
        rows, seconds, predictions = _sweeps(spec, model, data, truncations, tracker, progress, rank_zero=False)
    finally:
        tracker.finish()
    if predictions and (run_dir / records.PREDICTIONS).exists():  # a record made before predictions had none
        records.write_predictions(run_dir, records.read_predictions(run_dir) | predictions)
    old = records.read_metrics(run_dir)
    env = records.read_env(run_dir)
    by_truncation = env.get("sweep_seconds_by_truncation") or {"prefix": env.get("sweep_seconds", 0.0)}
    env["sweep_seconds_by_truncation"] = {**by_truncation, **seconds}
    env["sweep_seconds"] = sum(env["sweep_seconds_by_truncation"].values())
    config = records.read_config(run_dir)
    done = list(dict.fromkeys([*(row.truncation for row in old), *truncations]))
    config["eval"] = {**(config.get("eval") or {}), "truncation": done if len(done) > 1 else done[0]}
    records.write_metrics(run_dir, old + rows)
    records.write_env(run_dir, env)
    records.write_config(run_dir, config)
    records.mark_done(run_dir)
    say(f"done: {run_dir} (now evaluated at truncation {', '.join(done)})")


def load_finished(spec: RunSpec, run_dir: Path, device, outputs: bool = False):
    """(model with the run's trained adapter and head, its task's data) for the finished run ``spec`` made
    in ``run_dir``; ``outputs``: evaluation writes its texts (NLG) into the record, as the run's own did."""
    torch.manual_seed(spec.seed)
    tokenizer = load_tokenizer(spec.model)
    model = load_model(spec.model, tokenizer, num_labels(spec))
    data = build_task(spec, model, tokenizer, device, run_dir if outputs else None)
    load_adapter(model, run_dir / records.ADAPTER)
    cast_frozen(model, spec.model.dtype)
    model.to(device)
    set_tf32(spec.trainer.tf32)
    return model, data


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


def _digest(ranks: list[int]) -> str:
    return hashlib.sha256(json.dumps(ranks).encode()).hexdigest()


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


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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
