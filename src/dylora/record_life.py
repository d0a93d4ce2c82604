"""The run record's life, as the runner meets it: started, sealed, found complete or not, moved aside, taken
back, evaluated again at a truncation it lacks and sealed again. Only a run's main process calls these, and it
holds the run's lock meanwhile (``held``).

What ``decide`` makes of the record it finds:

- a data file missing while a record exists: an error, and nothing is moved;
- DONE does not verify: the record is moved aside as ``corrupt`` and the run runs again;
- complete, but made from other data: moved aside as ``stale``, and the run runs again;
- complete: kept, and evaluated at the truncations (``eval.truncation``) its metrics lack;
- not complete, while a stale record made from this very data is set aside: that one is taken back (an
  unfinished run in its place is moved aside as ``unfinished``);
- otherwise the run runs (from its checkpoint, when an unfinished run left one).

A record moved aside (``<run>.<why>-<time>``) is reported and kept, never used and never deleted.
"""

from __future__ import annotations

import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from dylora import records
from dylora.errors import DataError, RecordError


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def held(run_dir: Path, writer: bool = True) -> Iterator[None]:
    """The run's lock, held meanwhile by its ``writer`` (the main process; the others write nothing): the same
    run started elsewhere waits, then finds the record complete."""
    if not writer:
        yield
        return
    with records.run_lock(run_dir, lambda: say(f"waiting: {run_dir} is being run by another process")):
        yield


# ---------------------------------------------------------------------------- decide


@dataclass(frozen=True)
class Decision:
    """``complete``: the record is kept, and evaluated at the truncations it ``lacks``; otherwise the run runs."""

    complete: bool
    lacks: list[str] = field(default_factory=list)


def decide(run_dir: Path, data: dict[str, str], truncations: list[str]) -> Decision:
    """What to do with ``run_dir`` for a run of ``data`` (a data fingerprint) asked for ``truncations``."""
    if not finished(run_dir, data):
        return Decision(complete=False)
    have = {row.truncation for row in records.read_metrics(run_dir)}
    return Decision(complete=True, lacks=[t for t in truncations if t not in have])


def finished(run_dir: Path, data: dict[str, str]) -> bool:
    """True when the record is complete and was made from ``data`` (a data fingerprint). A corrupted
    record, or one whose data has changed since, is moved aside (reported, kept, never used); a record
    set aside as stale whose data matches ``data`` again is taken back instead of training again. A data
    file that is missing while a record exists is an error, and nothing is moved."""
    _refuse_missing_data(run_dir, data)
    if _verified(run_dir):
        changed = records.changed_data(run_dir, data)
        if not changed:
            return True
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        say(f"data changed since {run_dir} ran ({changed[0]}{more}): running it again; the old record is kept "
            f"in {_move_aside(run_dir, 'stale')}")
    return _take_back(run_dir, data)


def _refuse_missing_data(run_dir: Path, data: dict[str, str]) -> None:
    """A missing data file cannot say whether a record is stale: the user puts it back or points to it."""
    missing = sorted(path for path, digest in data.items() if digest == records.MISSING)
    if missing and (run_dir.exists() or records.set_aside(run_dir, "stale")):
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"data file {missing[0]}{more} is missing: put it back, or point data.glue_dir= / "
                        f"data.nlg_dir= to the folder that holds it; the record {run_dir} is left as it is")


def _verified(run_dir: Path) -> bool:
    """Whether DONE verifies. A corrupted record is moved aside, kept for a look, and the run runs again."""
    try:
        return records.verify_done(run_dir)
    except RecordError as e:
        say(f"warning: {e}\nmoved it to {_move_aside(run_dir, 'corrupt')}; running it again")
        return False


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


# ---------------------------------------------------------------------------- start, seal, seal again


class Sweep(NamedTuple):
    """A rank sweep, as the record keeps it: metric rows, seconds by truncation, and each row's prediction
    (classification tasks; arrays by ``records.prediction_key``, with the labels)."""

    rows: list[records.MetricRow]
    seconds: dict[str, float]
    predictions: dict[str, Any]


def start(run_dir: Path, config: dict[str, Any], data: dict[str, str]) -> None:
    """The record's first files, before training: its configuration and the fingerprint of its data."""
    records.write_config(run_dir, config)
    records.write_data(run_dir, data)


def seal(run_dir: Path, sweep: Sweep, env: dict[str, Any]) -> None:
    """The trained run's record made whole (its adapter is already written): the sweep, the environment, and
    DONE last, over every file. The checkpoint goes only then: a run killed before resumes from it."""
    records.write_metrics(run_dir, sweep.rows)
    if sweep.predictions:
        records.write_predictions(run_dir, sweep.predictions)
    records.write_env(run_dir, env)
    records.mark_done(run_dir)
    shutil.rmtree(run_dir / records.CHECKPOINT, ignore_errors=True)
    say(f"done: {run_dir}")


def seal_again(run_dir: Path, truncations: list[str], sweep: Sweep) -> None:
    """Add a finished run's ``sweep`` under ``truncations`` to its record: the metrics, the sweep's seconds in
    env.json, eval.truncation in config.yaml (every truncation it now has), and DONE over the whole record
    again, so that the record reads as if the run had been asked for them from the start."""
    if sweep.predictions and (run_dir / records.PREDICTIONS).exists():  # a record made before predictions had none
        records.write_predictions(run_dir, records.read_predictions(run_dir) | sweep.predictions)
    old = records.read_metrics(run_dir)
    env = _with_seconds(records.read_env(run_dir), sweep.seconds)
    now = list(dict.fromkeys([*(row.truncation for row in old), *truncations]))
    config = _with_truncations(records.read_config(run_dir), now)
    records.write_metrics(run_dir, old + sweep.rows)
    records.write_env(run_dir, env)
    records.write_config(run_dir, config)
    records.mark_done(run_dir)
    say(f"done: {run_dir} (now evaluated at truncation {', '.join(now)})")


def _with_seconds(env: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """``env`` with the new sweeps' seconds added; an env.json from before the per-truncation seconds timed
    the prefix sweep alone."""
    by_truncation = env.get("sweep_seconds_by_truncation") or {"prefix": env.get("sweep_seconds", 0.0)}
    env["sweep_seconds_by_truncation"] = {**by_truncation, **seconds}
    env["sweep_seconds"] = sum(env["sweep_seconds_by_truncation"].values())
    return env


def _with_truncations(config: dict[str, Any], truncations: list[str]) -> dict[str, Any]:
    """``config`` with eval.truncation naming every truncation the record holds (one: as a plain value)."""
    truncation = truncations if len(truncations) > 1 else truncations[0]
    config["eval"] = {**(config.get("eval") or {}), "truncation": truncation}
    return config
