"""Run identity (a new option whose default keeps the old behaviour renames no run), and what DONE vouches for."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dylora import records
from dylora.cli.compose import compose_spec
from dylora.errors import RecordError
from dylora.lab.report.experiments import search_rank
from dylora.lab.search_cost import lora_config
from dylora.runner import execute
from helpers import REPO, tiny_overrides

# the committed run records: folder -> how many (all but table1_cpu's and allocate_cpu's without their adapter weights)
COMMITTED = {REPO / "results" / name / "records": count for name, count in
             (("table1_cpu", 42), ("table1_mpnet_cpu", 20), ("search_eacl_cpu", 14), ("table4_cpu", 8),
              ("table7_cpu", 2), ("table7_cpu_6ep", 2), ("allocate_cpu", 3))}


def _committed_runs() -> list:
    runs = []
    for folder, count in COMMITTED.items():
        found = list(records.iter_runs(folder, weights=False))
        assert len(found) == count and all(r.done for r in found), folder
        runs += found
    return runs


def _recompose(record: records.RunRecord, *extra: str) -> dict:
    """The configuration a run gets today (conf/ and RunSpec) from the overrides that made ``record``; a rank
    search's LoRA run from its experiment's DyLoRA config, as ``search_cost`` makes it."""
    c = record.config
    rank = search_rank(record)
    method = [] if rank is not None else [f"method={c['method']['name']}"]
    # the preset the run was made with (allocate_cpu keeps a table1_cpu record from before its scripts_cpu preset)
    config = compose_spec([f"experiment={c['experiment']}", f"preset={c['preset']}", f"task={c['task']['name']}",
                           *method,
                           f"seed={c['seed']}", f"data.glue_dir={c['data']['glue_dir']}", *extra]).config
    return config if rank is None else lora_config(config, rank)


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


# ---------------------------------------------------------------------------- what DONE vouches for


@pytest.fixture
def finished(tmp_path, glue_dir) -> Path:
    return execute(compose_spec(tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path}")),
                   progress=False)


def test_done_covers_every_file_of_the_record(finished):
    done = json.loads((finished / records.DONE).read_text())
    assert done["format"] == records.DONE_FORMAT
    assert sorted(done["sha256"]) == ["adapter.safetensors", "config.yaml", "data.json", "env.json", "metrics.jsonl",
                                      "predictions.safetensors"]


@pytest.mark.parametrize("name", ["config.yaml", "env.json", "data.json", "adapter.safetensors", "metrics.jsonl"])
def test_damage_to_any_file_of_the_record_is_caught(finished, name):
    path = finished / name
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(RecordError, match=f"{name} does not match the checksum"):
        records.verify_done(finished)


def test_a_format_1_record_stays_valid_for_what_it_covered(finished):
    sums = json.loads((finished / records.DONE).read_text())["sha256"]
    old = {n: sums[n] for n in ("metrics.jsonl", "adapter.safetensors")}
    (finished / records.DONE).write_text(json.dumps({"sha256": old}))  # as dylora wrote it before
    (finished / "env.json").write_text("{}")  # not covered by format 1: not checked
    assert records.verify_done(finished)
    (finished / records.DONE).write_text(json.dumps({"format": 2, "sha256": old}))  # format 2 must cover config
    with pytest.raises(RecordError, match="does not cover config.yaml"):
        records.verify_done(finished)
    (finished / records.DONE).write_text(json.dumps({"format": 9, "sha256": sums}))
    with pytest.raises(RecordError, match="format 9, which this dylora does not know"):
        records.verify_done(finished)


def test_a_record_committed_without_its_weights_is_read_for_its_metrics_only(finished, capsys):
    from dylora.lab.report import load_experiments

    adapter = finished / records.ADAPTER
    weights = adapter.read_bytes()
    adapter.unlink()  # as large models' records are committed
    with pytest.raises(RecordError, match="adapter.safetensors does not match"):
        records.verify_done(finished)  # a run folder missing its weights is not finished: the runner redoes it
    assert records.verify_done(finished, weights=False)
    [run] = load_experiments(finished.parents[3])["default"].used
    assert run.done and run.metrics == records.read_metrics(finished)
    adapter.write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))  # weights present must still match
    with pytest.raises(RecordError, match="adapter.safetensors does not match"):
        records.verify_done(finished, weights=False)


def test_only_run_folders_are_runs(finished):
    root = finished.parents[3]
    aside = finished.with_name(f"{finished.name}.corrupt-20261201-000000")
    shutil.copytree(finished, aside)
    (finished / "wandb" / "run-1" / "files").mkdir(parents=True)
    (finished / "wandb" / "run-1" / "files" / "config.yaml").write_text("wandb_version: 1\n")
    assert [r.path for r in records.iter_runs(root)] == [finished]
    assert records.verify_done(finished)  # the tracker's files are not the record's


def test_identical_tensors_make_identical_safetensors_files_in_any_process(tmp_path):
    # safetensors writes metadata in a per-process hash order; save_safetensors sorts it
    script = ("import sys, torch; from dylora.adapters.io import save_safetensors; "
              "save_safetensors({'b.x': torch.arange(3.0), 'a.y': torch.ones(2, 2)}, sys.argv[1], "
              "{'zeta': '1', 'alpha': '2', 'mid': '3', 'format': 'x', 'config': '{\"r\": 8}'})")
    paths = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    assert len({p.read_bytes() for p in paths}) == 1
    from safetensors import safe_open

    with safe_open(str(paths[0]), "pt") as f:
        assert f.metadata() == {"zeta": "1", "alpha": "2", "mid": "3", "format": "x", "config": '{"r": 8}'}
        assert torch.equal(f.get_tensor("b.x"), torch.arange(3.0))
        assert torch.equal(f.get_tensor("a.y"), torch.ones(2, 2))


def test_a_finished_run_whose_data_changed_is_run_again_and_the_old_record_kept(tmp_path, capsys):
    from glue_fixtures import write_glue_dir

    glue = write_glue_dir(tmp_path / "glue", tasks=("sst2",), n_train=16, n_dev=8)
    spec = compose_spec(tiny_overrides("task=sst2", f"data.glue_dir={glue}", f"out_dir={tmp_path / 'exp'}"))
    run_dir = execute(spec, progress=False)
    fingerprint = json.loads((run_dir / records.DATA).read_text())["sha256"]
    assert sorted(Path(p).name for p in fingerprint) == ["dev.tsv", "train.tsv"]
    assert execute(spec, progress=False) == run_dir and "skip:" in capsys.readouterr().err  # unchanged: skipped

    dev = glue / "SST-2" / "dev.tsv"
    lines = dev.read_text().splitlines()
    lines[1] = lines[1][:-1] + ("0" if lines[1].endswith("1") else "1")  # one label edited
    dev.write_text("\n".join(lines) + "\n")
    assert execute(spec, progress=False) == run_dir
    err = capsys.readouterr().err
    assert f"data changed since {run_dir} ran ({dev}): running it again; the old record is kept in" in err
    assert records.verify_done(run_dir)
    assert not records.changed_data(run_dir, records.data_fingerprint([glue / "SST-2" / "train.tsv", dev]))
    stale = list(run_dir.parent.glob(f"{run_dir.name}.stale-*"))
    assert len(stale) == 1 and records.verify_done(stale[0])  # kept whole, and no longer a run
    assert [r.path for r in records.iter_runs(tmp_path / "exp")] == [run_dir]


def test_a_record_without_a_data_fingerprint_is_not_redone(finished):
    (finished / records.DATA).unlink()  # as in records written before data fingerprints existed
    assert records.changed_data(finished, {"/any/train.tsv": "0" * 64}) == []  # nothing to compare with
