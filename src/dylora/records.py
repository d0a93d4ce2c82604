"""The run record: one directory per run, the only schema every reader and writer uses.

Layout of a run directory (``run_dir_for`` names it)::

    <out_dir>/<experiment>/<task>/<method>/seed<seed>-<hash8>/
        config.yaml           the resolved configuration
        metrics.jsonl         one MetricRow per line
        adapter.safetensors   the trained dynamic adapter (and trainable head)
        env.json              versions, git commit, device, parameter counts, timings
        data.json             sha256 of each local data file the run read (a run whose data changed is redone)
        predictions.safetensors  classification: every dev row's prediction at each truncation and rank (class
                              ids, or regression scores; rank 0 is the adapter off) and the labels, in row order
        outputs/              what evaluation writes besides metrics (NLG: the text at each rank)
        checkpoint/           training state while the run is unfinished
        DONE                  written last: its format and the sha256 of every other file of the record
                              (format 1, before dylora 0.1's records rework: metrics.jsonl and the adapter only)

Every file is written atomically (temporary file, fsync, rename), so a run killed at any
moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml

from dylora.errors import RecordError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
ADAPTER = "adapter.safetensors"
ENV = "env.json"
DATA = "data.json"
PREDICTIONS = "predictions.safetensors"
DONE = "DONE"
CHECKPOINT = "checkpoint"
DONE_FORMAT = 2
# not part of the record: training state, a tracker's own files (W&B writes a config.yaml of its own)
NOT_RECORD = (CHECKPOINT, "wandb")
RUN_NAME = re.compile(r"seed\d+-[0-9a-f]{8}")  # run_dir_for's names; a moved-aside ``...corrupt-<time>`` is none

# Keys that only say where outputs go: they never change a result, so they are not hashed.
OUTPUT_KEYS = ("out_dir", "results_dir", "logger")
# Keys that say how a trained run is evaluated (``eval.truncation``): not the run's identity either, as a
# finished run asked for an evaluation it lacks does it from its saved adapter, without training again.
EVALUATION_KEYS = ("eval",)

# Options added after the first run records were written, each with the value that keeps the
# behaviour runs had before it existed. A config holding exactly that value hashes as if the
# option were absent, so adding an option never renames existing runs (the committed ones
# included); any other value, or a default changed away from it, changes the hash. Every new
# option goes here with its neutral value (a test recomposes the committed records to check).
HASH_NEUTRAL: dict[str, Any] = {
    "trainer.precision": "fp32",  # resolved from auto: fp32 on a CPU
    "trainer.tf32": False,  # resolved: false off CUDA
    "model.dtype": "fp32",
    "method.loss": "sampled",
    "method.sampling": "global",
    "data.selection_rows": None,
    "trainer.fast_dropout": False,
    "trainer.threads": None,  # torch's default thread count, as every run had before the option
}


@dataclass(frozen=True)
class MetricRow:
    """One number: ``task`` and ``method`` are config names (``sst2``, ``dylora_frozen``); ``truncation`` how
    rank b was taken (``prefix`` | ``svd``; a row written before the field existed is ``prefix``)."""

    task: str
    method: str
    seed: int
    rank: int
    split: str
    metric: str
    value: float
    truncation: str = "prefix"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MetricRow":
        names = [f.name for f in fields(cls) if f.name != "truncation"]
        missing = [n for n in names if n not in d]
        if missing:
            raise RecordError(f"metric row {d!r} lacks {missing}")
        row = cls(
            task=str(d["task"]),
            method=str(d["method"]),
            seed=int(d["seed"]),
            rank=int(d["rank"]),
            split=str(d["split"]),
            metric=str(d["metric"]),
            value=float(d["value"]),
            truncation=str(d.get("truncation", "prefix")),
        )
        return row


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` without its output and evaluation keys and without the
    options that hold their neutral value (``HASH_NEUTRAL``, dotted keys)."""
    kept = {k: v for k, v in config.items() if k not in OUTPUT_KEYS + EVALUATION_KEYS}
    for dotted, value in HASH_NEUTRAL.items():
        kept = _without(kept, dotted.split("."), value)
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _without(node: dict[str, Any], keys: list[str], neutral: Any) -> dict[str, Any]:
    """``node`` less the key at path ``keys`` when it holds ``neutral`` (a copy; ``node`` is left alone)."""
    head, rest = keys[0], keys[1:]
    if head not in node:
        return node
    if rest:
        child = node[head]
        return {**node, head: _without(child, rest, neutral)} if isinstance(child, dict) else node
    return {k: v for k, v in node.items() if k != head} if node[head] == neutral else node


def run_dir_for(out_dir: str | Path, config: dict[str, Any]) -> Path:
    """The run directory for a resolved config (needs experiment, task.name, method.name, seed)."""
    try:
        experiment = config["experiment"]
        task = config["task"]["name"]
        method = config["method"]["name"]
        seed = config["seed"]
    except (KeyError, TypeError) as e:
        raise RecordError(f"config lacks {e} needed to name its run directory") from e
    return Path(out_dir) / str(experiment) / str(task) / str(method) / f"seed{seed}-{config_hash(config)[:8]}"


@contextmanager
def run_lock(run_dir: str | Path, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold the run's lock: one writer per run folder. Another process holding it makes this wait
    (``on_wait`` is called first). The lock is the OS's (flock) on a hidden file beside the folder
    (a corrupted folder may be moved aside meanwhile): it is released when its holder exits, even
    by SIGKILL."""
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.with_name(f".{run_dir.name}.lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------- writers


def write_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / CONFIG, yaml.safe_dump(config, sort_keys=False))


def write_metrics(run_dir: str | Path, rows: Iterable[MetricRow]) -> None:
    """Write (replace) ``metrics.jsonl`` with ``rows``; NaN values are refused."""
    lines = []
    for row in rows:
        if not math.isfinite(row.value):
            raise RecordError(f"metric {row.metric} at rank {row.rank} is {row.value}, not a finite number")
        lines.append(json.dumps(asdict(row), sort_keys=False))
    atomic_write_text(Path(run_dir) / METRICS, "".join(line + "\n" for line in lines))


def prediction_key(truncation: str, rank: int, split: str) -> str:
    return f"{truncation}/rank{rank}/{split}"


def labels_key(split: str) -> str:
    return f"labels/{split}"


def write_predictions(run_dir: str | Path, arrays: dict[str, Any]) -> None:
    """Write (replace) ``predictions.safetensors``: arrays by ``prediction_key`` / ``labels_key``, class ids as
    int8 and scores as float32 (safetensors: byte-reproducible, no pickle)."""
    import numpy as np
    import torch
    from safetensors.torch import save

    def compact(values) -> torch.Tensor:
        array = np.asarray(values)
        kind = np.int8 if np.issubdtype(array.dtype, np.integer) else np.float32
        return torch.from_numpy(np.ascontiguousarray(array.astype(kind)))

    atomic_write_bytes(Path(run_dir) / PREDICTIONS, save({k: compact(v) for k, v in sorted(arrays.items())}))


def read_predictions(run_dir: str | Path) -> dict[str, Any]:
    """The arrays of ``predictions.safetensors`` (numpy, by key); {} for a record without the file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(run_dir) / PREDICTIONS
    if not path.exists():
        return {}
    try:
        return load(path.read_bytes())
    except (SafetensorError, ValueError) as e:
        raise RecordError(f"{path} cannot be read ({e}): the record is corrupted; delete {run_dir} to run it "
                          "again") from e


def write_env(run_dir: str | Path, env: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / ENV, env)


def record_files(run_dir: str | Path) -> list[str]:
    """The record's files, relative to ``run_dir`` (POSIX paths): all but DONE, hidden files (temporary
    files, the lock) and the folders of ``NOT_RECORD``."""
    run_dir = Path(run_dir)
    names = []
    for path in run_dir.rglob("*"):
        relative = path.relative_to(run_dir)
        if (path.is_file() and relative.parts[0] not in NOT_RECORD and relative != Path(DONE)
                and not any(part.startswith(".") for part in relative.parts)):
            names.append(relative.as_posix())
    return sorted(names)


MISSING = "missing"  # data_fingerprint's value for a file that is not there


def data_fingerprint(paths: Iterable[str | Path]) -> dict[str, str]:
    """sha256 of each file, by path (``missing`` for a file that is not there)."""
    return {str(p): sha256_file(p) if Path(p).is_file() else MISSING for p in paths}


def write_data(run_dir: str | Path, fingerprint: dict[str, str]) -> None:
    atomic_write_json(Path(run_dir) / DATA, {"sha256": fingerprint})


def changed_data(run_dir: str | Path, fingerprint: dict[str, str]) -> list[str]:
    """The data files whose content differs from what the finished run read (none for a record written
    before data fingerprints existed: nothing to compare)."""
    path = Path(run_dir) / DATA
    if not path.exists():
        return []
    recorded = json.loads(path.read_text())["sha256"]
    return sorted(name for name in recorded.keys() | fingerprint.keys() if recorded.get(name) != fingerprint.get(name))


def set_aside(run_dir: str | Path, why: str) -> list[Path]:
    """The folders ``run_dir`` was moved aside to as ``why`` (``<run>.<why>-<time>``), newest first."""
    run_dir = Path(run_dir)
    return sorted(run_dir.parent.glob(f"{run_dir.name}.{why}-*"), reverse=True)


def made_from(run_dir: str | Path, fingerprint: dict[str, str]) -> bool:
    """True when ``run_dir`` is a finished record (DONE verifies) whose data fingerprint is ``fingerprint``:
    a record set aside as stale that its data matches again (the same files back) is that run's result."""
    try:
        done = verify_done(run_dir)
    except RecordError:
        return False
    return done and (Path(run_dir) / DATA).is_file() and not changed_data(run_dir, fingerprint)


def mark_done(run_dir: str | Path) -> None:
    """Write the completion marker last, with the checksum of every file of the record."""
    run_dir = Path(run_dir)
    names = record_files(run_dir)
    missing = [name for name in (CONFIG, METRICS) if name not in names]
    if missing:
        raise RecordError(f"{run_dir} has no {', '.join(missing)}; a run is marked done only once its record is whole")
    atomic_write_json(run_dir / DONE, {"format": DONE_FORMAT, "sha256": {n: sha256_file(run_dir / n) for n in names}})


# ---------------------------------------------------------------------------- readers


def read_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise RecordError(f"{path} is missing") from e
    except yaml.YAMLError as e:
        raise RecordError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(config, dict):
        raise RecordError(f"{path} does not hold a mapping")
    return config


def read_metrics(run_dir: str | Path) -> list[MetricRow]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(MetricRow.from_dict(json.loads(line)))
        except (json.JSONDecodeError, ValueError, TypeError, RecordError) as e:
            raise RecordError(f"{path}:{lineno} is not a valid metric row ({e})") from e
    return rows


def read_env(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / ENV
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecordError(f"{path} is not valid JSON: {e}") from e


def verify_done(run_dir: str | Path, weights: bool = True) -> bool:
    """True when DONE exists and every checksum in it matches; RecordError when it does not.

    ``weights=False`` (readers that need only the metrics, like the report) accepts a record whose adapter
    file was left out, as committed records of large models are; a present one must still match."""
    run_dir = Path(run_dir)
    marker = run_dir / DONE
    if not marker.exists():
        return False
    try:
        info = json.loads(marker.read_text())
        sums, version = info["sha256"], info.get("format", 1)  # format 1 had no "format" key
        if not isinstance(sums, dict):
            raise TypeError("sha256 is not a mapping")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise RecordError(f"{marker} is corrupted ({e}); delete {run_dir} to run it again") from e
    if version not in (1, DONE_FORMAT):
        raise RecordError(f"{marker} has format {version}, which this dylora does not know: upgrade dylora")
    # each format vouches for what it covered: format 1 for metrics (and adapter), 2 for the whole record
    required = (METRICS,) if version == 1 else (CONFIG, METRICS)
    uncovered = [name for name in required if name not in sums]
    if uncovered:
        raise RecordError(f"{marker} does not cover {', '.join(uncovered)}: the record is corrupted; "
                          f"delete {run_dir} to run it again")
    for name, expected in sums.items():
        path = run_dir / name
        if not weights and name == ADAPTER and not path.exists():
            continue
        if not path.exists() or sha256_file(path) != expected:
            raise RecordError(
                f"{path} does not match the checksum in {marker}: the record is corrupted; "
                f"delete {run_dir} to run it again"
            )
    return True


@dataclass
class RunRecord:
    """A run directory as read back: ``done`` only when DONE verified."""

    path: Path
    config: dict[str, Any]
    metrics: list[MetricRow]
    env: dict[str, Any]
    done: bool
    problem: str | None = None  # why the record cannot be used, when it cannot

    @property
    def experiment(self) -> str:
        return str(self.config.get("experiment", ""))

    @property
    def task(self) -> str:
        return str(self.config.get("task", {}).get("name", ""))

    @property
    def method(self) -> str:
        return str(self.config.get("method", {}).get("name", ""))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", -1))


def read_run(run_dir: str | Path, weights: bool = True) -> RunRecord:
    """Read one run directory; problems are reported in ``problem``, never raised. ``weights``: as
    ``verify_done``'s."""
    run_dir = Path(run_dir)
    try:
        config = read_config(run_dir)
    except RecordError as e:
        return RunRecord(run_dir, {}, [], {}, False, str(e))
    try:
        done = verify_done(run_dir, weights)
        metrics = read_metrics(run_dir)
        env = read_env(run_dir)
    except RecordError as e:
        return RunRecord(run_dir, config, [], {}, False, str(e))
    return RunRecord(run_dir, config, metrics, env, done, None if done else "unfinished (no DONE marker)")


def iter_runs(root: str | Path, weights: bool = True) -> Iterator[RunRecord]:
    """Every run directory under ``root`` (named as ``run_dir_for`` names them, holding config.yaml), in a
    stable order. Folders moved aside (``<run>.corrupt-<time>``) are not runs, nor is a config.yaml that
    a tracker keeps inside a record. ``weights``: as ``verify_done``'s."""
    root = Path(root)
    if not root.exists():
        return
    for config_path in sorted(root.rglob(CONFIG)):
        run_dir = config_path.parent
        inside_another = any(RUN_NAME.fullmatch(p.name) for p in run_dir.parents if p != root and root in p.parents)
        if RUN_NAME.fullmatch(run_dir.name) and not inside_another and ".hydra" not in config_path.parts:
            yield read_run(run_dir, weights)
