"""Run identity: a new option whose default keeps the old behaviour renames no run."""

from __future__ import annotations

import pytest

from dylora import records
from dylora.cli.compose import compose_spec
from helpers import REPO

COMMITTED = REPO / "results" / "table1_cpu" / "records"


def _committed_runs() -> list:
    runs = list(records.iter_runs(COMMITTED))
    assert len(runs) == 12 and all(r.done for r in runs)
    return runs


def _recompose(record: records.RunRecord, *extra: str) -> dict:
    """The configuration a run gets today (conf/ and RunSpec) from the overrides that made ``record``."""
    c = record.config
    return compose_spec([f"experiment={c['experiment']}", f"task={c['task']['name']}", f"method={c['method']['name']}",
                         f"seed={c['seed']}", f"data.glue_dir={c['data']['glue_dir']}", *extra]).config


def _with_option(config: dict, value: str) -> dict:
    """``config`` as if trainer/default.yaml had a new option ``new_option: <value>``."""
    return {**config, "trainer": {**config["trainer"], "new_option": value}}


def test_the_committed_records_keep_their_names_under_todays_configuration():
    # Fails when an option is added without its neutral value in records.HASH_NEUTRAL, or when a
    # default the committed runs used is changed: either would orphan every existing record.
    for record in _committed_runs():
        run_dir = records.run_dir_for(record.path.parents[3], _recompose(record))
        assert run_dir == record.path, f"{record.path.name} would now be {run_dir.name}"


def test_an_option_added_with_its_neutral_value_leaves_the_hash_alone(monkeypatch):
    record = _committed_runs()[0]
    added = _with_option(_recompose(record), "fp32")  # a new option, at the value runs had before it
    assert records.config_hash(added) != records.config_hash(record.config)  # unregistered, it would rename
    monkeypatch.setitem(records.HASH_NEUTRAL, "trainer.new_option", "fp32")
    assert records.config_hash(added) == records.config_hash(record.config)
    assert records.run_dir_for(record.path.parents[3], added) == record.path
    # ... and what it does is part of the run's identity: any other value renames it
    changed = _with_option(_recompose(record), "bf16")
    assert records.config_hash(changed) != records.config_hash(record.config)
    # the mechanism never drops an option the run already had
    assert records.config_hash({**added, "seed": 7}) != records.config_hash(record.config)


@pytest.mark.parametrize("override", ["trainer.lr=0.002", "method.alpha=8", "data.max_train_samples=10"])
def test_changing_what_a_run_does_changes_its_hash(override):
    record = next(r for r in _committed_runs() if r.task == "mrpc")  # no per-task values override these
    assert records.config_hash(_recompose(record, override)) != records.config_hash(record.config)


def test_a_neutral_value_nested_or_absent_is_handled_without_touching_the_config(monkeypatch):
    config = {"trainer": {"lr": 1e-3, "precision": "fp32"}, "seed": 0}
    monkeypatch.setitem(records.HASH_NEUTRAL, "trainer.new_option", "fp32")
    monkeypatch.setitem(records.HASH_NEUTRAL, "model.dtype", "fp32")  # absent: nothing to drop
    assert records.config_hash(config) == records.config_hash({"trainer": {"lr": 1e-3}, "seed": 0})
    assert config["trainer"]["precision"] == "fp32"  # the recorded config keeps it
