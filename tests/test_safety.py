"""Safe names, typos, damaged inputs and results that never go backwards: each case ends in one line that
names the bad value and the fix, and nothing a user had is moved, demoted or overwritten by it."""

from __future__ import annotations

import json
import pickle
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from dylora import records
from dylora.cli import adapter_curve
from dylora.cli import run as cli_run
from dylora.cli.compose import compose_spec, yaml_problem
from dylora.errors import ConfigError, DataError, check_folder_name
from dylora.lab import report
from dylora.runner import execute, pinned_threads
from helpers import run_cli, tiny_overrides

PLAIN = "must be one path component (not empty; no '/', '\\', '..', leading '.' or NUL)"


def plain_name_error(option: str, value: str, example: str) -> str:
    return f"{option}={value} is not a plain name: it names a folder, so it {PLAIN}, e.g. {option}={example}"


# ---------------------------------------------------------------------------- names are folder names


@pytest.mark.parametrize("value", ["../../x", "/abs/path", "a\\b", "..", ".", ".hidden", "a/b", "x..y", "a\0b", ""])
def test_a_name_that_is_not_one_plain_path_component_is_refused(value):
    with pytest.raises(ConfigError, match=r"^method\.name=.* is not a plain name: it names a folder"):
        check_folder_name("method.name", value)


@pytest.mark.parametrize("value", ["dylora", "table1_cpu", "seed-1", "v1.5", "my task"])
def test_a_plain_name_passes(value):
    assert check_folder_name("experiment", value) == value


@pytest.mark.parametrize("override, option, example", [
    ("method.name=../../../../x", "method.name", "x"),
    ("task.name=../../x", "task.name", "x"),
    ("method.name=/abs/path", "method.name", "abs_path"),
])
def test_a_run_whose_name_would_leave_out_dir_is_refused_before_anything_is_written(tmp_path, override, option,
                                                                                    example):
    with pytest.raises(ConfigError) as error:
        compose_spec(tiny_overrides("task=synthetic", f"out_dir={tmp_path / 'out'}", override))
    assert str(error.value) == plain_name_error(option, override.split("=", 1)[1], example)
    assert not (tmp_path / "out").exists() and not Path("/abs").exists()


def test_cli_names_an_absolute_method_name_in_one_line_and_writes_nothing(tmp_path):
    done = run_cli([*tiny_overrides("task=synthetic"), f"out_dir={tmp_path / 'out'}",
                    f"method.name={tmp_path / 'abs'}"], cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: " + plain_name_error("method.name", tmp_path / "abs", str(tmp_path / "abs")[1:].replace("/", "_"))]
    assert not (tmp_path / "abs").exists() and not list((tmp_path / "out").glob("[!.]*"))  # only Hydra's .hydra/


def _config_dir(tmp_path: Path) -> Path:
    """A ``--config-dir`` with an experiment that names a folder outside out_dir and task files with YAML tags."""
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "task").mkdir()
    (conf / "experiment" / "escape.yaml").write_text("# @package _global_\nexperiment: ../../x\n")
    (conf / "task" / "custom.yaml").write_text("name: mytask\nkind: !custom 3\n")
    marker = tmp_path / "ran"
    (conf / "task" / "evil.yaml").write_text(f"name: x\nkind: !!python/object/apply:os.system ['touch {marker}']\n")
    return conf


@pytest.mark.parametrize("choice, line", [
    ("experiment=escape", plain_name_error("experiment", "../../x", "x")),
    ("task=custom", "{conf}/task/custom.yaml, line 2: the YAML tag !custom is not allowed: configuration files are "
                    "plain YAML (tags that build objects are never read); remove the tag"),
    ("task=evil", "{conf}/task/evil.yaml, line 2: the YAML tag !!python/object/apply:os.system is not allowed: "
                  "configuration files are plain YAML (tags that build objects are never read); remove the tag"),
])
def test_a_config_dir_file_that_escapes_out_dir_or_carries_a_yaml_tag_is_one_line(tmp_path, choice, line):
    conf = _config_dir(tmp_path)
    done = run_cli(["--config-dir", str(conf), *tiny_overrides("task=synthetic"), f"out_dir={tmp_path / 'out'}",
                    choice], cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: " + line.format(conf=conf)]
    assert not (tmp_path / "ran").exists() and not (tmp_path / "x").exists()


def test_yaml_problem_names_the_file_the_line_and_the_tag():
    import yaml

    with pytest.raises(yaml.YAMLError) as error:
        yaml.safe_load("a: 1\nb: !!python/name:os.system\n")
    assert yaml_problem(error.value) == ("<unicode string>, line 2: the YAML tag !!python/name:os.system is not "
                                         "allowed: configuration files are plain YAML (tags that build objects are "
                                         "never read); remove the tag")
    with pytest.raises(yaml.YAMLError) as error:
        yaml.safe_load("a: [1\n")
    assert yaml_problem(error.value).startswith("<unicode string>, line 2: not valid YAML (")


TASKS = "cola, dart, e2e, mnli, mrpc, qnli, qqp, rte, sst2, stsb, synthetic, webnlg"


@pytest.mark.parametrize("override, line", [
    ("task=../experiment/demo", "task=../experiment/demo is not a plain name: a task is a file of conf/task/ named "
                                f"without a path; choose one of {TASKS}"),
    ("task=null", f"task=null is not a choice: choose one of {TASKS}"),
    ("method=null", "method=null is not a choice: choose one of dylora, dylora_frozen, dylora_frozen_geometric, "
                    "dylora_geometric, dylora_per_module, dylora_sum, lora, peft_lora"),
])
def test_a_config_group_set_to_a_path_or_null_is_one_line(tmp_path, override, line):
    with pytest.raises(ConfigError) as error:
        compose_spec([override])
    assert str(error.value) == line
    done = run_cli([override, f"out_dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert (done.returncode, done.stderr.strip().splitlines()) == (1, ["error: " + line])


def test_report_refuses_an_experiment_that_is_not_a_plain_name(tmp_path):
    write_record(tmp_path / "runs", "cola", "lora")
    done = report_cli(tmp_path, f"out_dir={tmp_path / 'runs'}", f"results_dir={tmp_path / 'res'}",
                      "experiment=../../x")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["dylora-report: error: " + plain_name_error("experiment", "../../x",
                                                                                            "x")]
    assert not (tmp_path / "res").exists() and not (tmp_path.parent / "x").exists()


def test_report_refuses_a_record_whose_experiment_is_not_a_plain_name(tmp_path):
    run_dir = write_record(tmp_path / "runs", "cola", "lora")
    config = records.read_config(run_dir) | {"experiment": "../x"}  # a record written by hand, or by an old dylora
    records.write_config(run_dir, config)
    records.mark_done(run_dir)
    with pytest.raises(ConfigError, match=r"^experiment=\.\./x is not a plain name"):
        report.build_report(tmp_path / "runs", tmp_path / "res")
    assert not (tmp_path / "x").exists()


def test_adapter_curve_names_its_default_export_after_the_resolved_adapter_folder(tmp_path, monkeypatch):
    (tmp_path / "adapter").mkdir()
    monkeypatch.chdir(tmp_path / "adapter")
    assert adapter_curve.export_folder(Path("."), 2, "svd") == tmp_path / "adapter-r2-svd"
    with pytest.raises(ConfigError, match="has no name to name its export after; pass --export-to DIR"):
        adapter_curve.export_folder(Path("/"), 2, "svd")


# ---------------------------------------------------------------------------- typos never pass silently


@pytest.mark.parametrize("override, line", [
    ("+foo=1", "unknown top-level option(s) ['foo']; known: ['data', 'eval', 'experiment', 'logger', 'method', "
               "'model', 'out_dir', 'preset', 'seed', 'source_adapter', 'task', 'trainer']"),
    ("+eval.truncaton=svd", "unknown eval option(s) ['truncaton']; known: ['truncation']"),
])
def test_an_unknown_top_level_or_eval_key_is_refused(override, line):
    with pytest.raises(ConfigError) as error:
        compose_spec(tiny_overrides("task=synthetic", override))
    assert str(error.value) == line


def test_a_configuration_without_a_task_section_names_it():
    from dylora.cli.compose import compose_config
    from dylora.spec import RunSpec

    config = compose_config(tiny_overrides("task=synthetic"))
    del config["task"]
    with pytest.raises(ConfigError, match=r"^the configuration has no task section \(a mapping\): pick one with "
                                          r"task=NAME"):
        RunSpec.from_dict(config)


# ---------------------------------------------------------------------------- a finished result is never demoted


@pytest.fixture
def sst2_run(tmp_path):
    from glue_fixtures import write_glue_dir

    glue = write_glue_dir(tmp_path / "glue", tasks=("sst2",), n_train=16, n_dev=8)
    spec = compose_spec(tiny_overrides("task=sst2", f"data.glue_dir={glue}", f"out_dir={tmp_path / 'exp'}"))
    return spec, execute(spec, progress=False), glue / "SST-2" / "dev.tsv"


def test_a_missing_data_file_is_one_line_and_the_finished_record_stays_where_it_is(sst2_run, capsys):
    spec, run_dir, dev = sst2_run
    done = (run_dir / records.DONE).read_bytes()
    kept = dev.read_bytes()
    dev.unlink()
    with pytest.raises(DataError) as error:
        execute(spec, progress=False)
    assert str(error.value) == (f"data file {dev} is missing: put it back, or point data.glue_dir= / data.nlg_dir= "
                                f"to the folder that holds it; the record {run_dir} is left as it is")
    assert (run_dir / records.DONE).read_bytes() == done and records.verify_done(run_dir)
    assert not records.set_aside(run_dir, "stale")
    dev.write_bytes(kept)  # the identical file back: nothing to retrain
    capsys.readouterr()
    assert execute(spec, progress=False) == run_dir and "skip:" in capsys.readouterr().err
    assert (run_dir / records.DONE).read_bytes() == done


def test_a_stale_record_whose_data_matches_again_is_taken_back_not_retrained(sst2_run, capsys):
    spec, run_dir, dev = sst2_run
    done = (run_dir / records.DONE).read_bytes()
    original = dev.read_text()
    lines = original.splitlines()
    lines[1] = lines[1][:-1] + ("0" if lines[1].endswith("1") else "1")  # one label edited
    dev.write_text("\n".join(lines) + "\n")
    execute(spec, progress=False)  # run again on the edited data: the first record is kept aside as stale
    retrained = (run_dir / records.DONE).read_bytes()
    assert retrained != done and len(records.set_aside(run_dir, "stale")) == 1

    dev.write_text(original)  # the original data back
    capsys.readouterr()
    assert execute(spec, progress=False) == run_dir
    err = capsys.readouterr().err
    assert "took that record back instead of training again" in err
    assert (run_dir / records.DONE).read_bytes() == done  # the first record itself, not a new training
    aside = records.set_aside(run_dir, "stale")
    assert [(a / records.DONE).read_bytes() for a in aside] == [retrained]  # the edited data's record, kept aside
    capsys.readouterr()
    assert execute(spec, progress=False) == run_dir and "skip:" in capsys.readouterr().err


def test_an_unfinished_run_in_the_way_is_moved_aside_when_a_stale_record_is_taken_back(sst2_run):
    spec, run_dir, dev = sst2_run
    fingerprint = json.loads((run_dir / records.DATA).read_text())["sha256"]
    stale = run_dir.with_name(f"{run_dir.name}.stale-20000101-000000")
    run_dir.rename(stale)
    run_dir.mkdir()
    (run_dir / records.CONFIG).write_text("unfinished: true\n")  # a run of other data, killed
    from dylora.runner import finished

    assert finished(run_dir, fingerprint)
    assert records.verify_done(run_dir) and not stale.exists()
    assert len(records.set_aside(run_dir, "unfinished")) == 1


# ---------------------------------------------------------------------------- a report never goes backwards


def write_record(out: Path, task: str, method: str, seed: int = 0, value: float = 0.8) -> Path:
    config = {"experiment": "exp", "seed": seed, "preset": "cpu", "model": {"name": "tiny-roberta"},
              "task": {"name": task}, "method": {"name": method, "method": "dylora", "r_min": 1, "r_max": 2},
              "trainer": {"epochs": 1, "lr": 4e-4, "batch_size": 32}, "data": {}}
    run_dir = records.run_dir_for(out, config)
    records.write_config(run_dir, config)
    metric = "matthews_correlation" if task == "cola" else "accuracy"
    records.write_metrics(run_dir, [records.MetricRow(task, method, seed, r, "validation", metric, value + r / 100)
                                    for r in (1, 2)])
    records.mark_done(run_dir)
    return run_dir


def report_cli(cwd: Path, *overrides: str):
    return run_cli(list(overrides), cwd=cwd, module="dylora.cli.report", env={"MPLBACKEND": "Agg"})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def good_report(tmp_path):
    runs = tmp_path / "runs"
    for task in ("cola", "sst2"):
        for method in ("lora", "dylora"):
            write_record(runs, task, method)
    dest = tmp_path / "res" / "exp"
    report.build_report(runs, tmp_path / "res")
    (dest / "CALIBRATION.md").write_text("notes of mine\n")  # not the report's: never touched
    (dest / "records").mkdir()
    (dest / "records" / "x.txt").write_text("kept\n")
    return runs, dest


def test_a_report_over_records_that_are_all_corrupted_keeps_the_good_report(tmp_path, good_report):
    runs, dest = good_report
    before = snapshot(dest)
    assert {"table1.md", "summary.md", "finding.md", "rank_curve_cola.png", "rank_curve_sst2.svg"} <= set(before)
    for metrics in runs.rglob(records.METRICS):
        metrics.write_text(metrics.read_text()[:30])  # every record corrupted
    done = report_cli(tmp_path, f"out_dir={runs}", f"results_dir={tmp_path / 'res'}")
    assert done.returncode == 1
    assert f"exp: no run has metrics: the earlier report in {dest} is kept as it was" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("dylora-report: error: 4 corrupted run record(s)")
    assert snapshot(dest) == before
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["exp"]  # no temporary folder left


def test_a_file_the_report_no_longer_produces_is_removed_and_other_files_are_kept(tmp_path, good_report):
    runs, dest = good_report
    for run_dir in list(runs.glob("exp/sst2/*/*")):
        import shutil

        shutil.rmtree(run_dir)  # sst2 is no longer part of the experiment
    written = report.build_report(runs, tmp_path / "res")["exp"]
    names = {p.name for p in dest.iterdir()}
    assert "rank_curve_cola.png" in names and not {"rank_curve_sst2.png", "rank_curve_sst2.svg"} & names
    assert {p.name for p in written} | {"CALIBRATION.md", "records"} == names
    assert (dest / "CALIBRATION.md").read_text() == "notes of mine\n" and (dest / "records" / "x.txt").exists()


def test_a_report_moved_in_from_its_temporary_folder_is_byte_identical_to_one_written_anew(tmp_path, good_report):
    runs, dest = good_report
    before = snapshot(dest)
    report.build_report(runs, tmp_path / "res")  # over the earlier one
    report.build_report(runs, tmp_path / "fresh")
    assert snapshot(dest) == before
    assert snapshot(tmp_path / "fresh" / "exp") == {k: v for k, v in before.items()
                                                    if k not in ("CALIBRATION.md", "records/x.txt")}


def test_a_report_that_fails_half_way_leaves_the_earlier_one_whole(tmp_path, good_report, monkeypatch):
    runs, dest = good_report
    write_record(runs, "cola", "lora", seed=1, value=0.1)  # would change the tables
    before = snapshot(dest)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_finding", broken)  # the last file of the report fails
    with pytest.raises(OSError):
        report.build_report(runs, tmp_path / "res")
    assert snapshot(dest) == before
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["exp"]


# ---------------------------------------------------------------------------- damaged inputs: one line


@pytest.mark.parametrize("task, split, name", [("e2e", "train", "e2e/train.txt"),
                                               ("webnlg", "validation", "webnlg_challenge_2017/dev.json")])
def test_a_data_file_that_is_not_utf8_is_named_with_its_byte_offset(tmp_path, task, split, name):
    from dylora.tasks.nlg import load_nlg
    from nlg_fixtures import write_nlg_dir

    write_nlg_dir(tmp_path, task)
    path = tmp_path / name
    data = path.read_bytes()
    at = data.index(b"\n", data.index(b"\n") + 1) + 5  # on the third line
    path.write_bytes(data[:at] + b"\xff" + data[at:])
    with pytest.raises(DataError) as error:
        load_nlg(task, tmp_path, splits=(split,))
    assert str(error.value) == (f"{path}:3: byte 0xff at offset {at} is not UTF-8 text; re-save the file as UTF-8 or "
                                "download it again")


@pytest.fixture
def hand_adapter(tmp_path) -> Path:
    """A PEFT LoRA adapter folder as PEFT writes it (rank 2 on query/value of the tiny model's one layer)."""
    from safetensors.torch import save_file

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                            "target_modules": ["query", "value"]}))
    prefix = "base_model.model.roberta.encoder.layer.0.attention.self"
    tensors = {f"{prefix}.{m}.lora_{p}.weight": torch.ones(2, 32) if p == "A" else torch.ones(32, 2)
               for m in ("query", "value") for p in ("A", "B")}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def curve_cli(argv: list[str], capsys) -> list[str]:
    with pytest.raises(SystemExit) as exit_:
        adapter_curve.main(argv)
    assert exit_.value.code == 1
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("name, line", [
    ("adapter_model.safetensors", "{path} cannot be read (",),
    ("adapter_config.json", "{path} is not valid JSON (",),
])
def test_adapter_curve_on_a_truncated_adapter_file_is_one_line(hand_adapter, capsys, name, line):
    path = hand_adapter / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    lines = curve_cli([str(hand_adapter), "task=sst2"], capsys)
    assert len(lines) == 1 and lines[0].startswith("dylora-adapter-curve: error: " + line.format(path=path))
    assert lines[0].endswith("the file is damaged or was copied only in part; save or copy the adapter again")


@pytest.mark.parametrize("rank", [0, 3])
def test_an_export_rank_outside_the_adapter_is_refused_before_the_evaluation(hand_adapter, capsys, monkeypatch,
                                                                             rank):
    import dylora.runner

    def evaluated(*args, **kwargs):
        raise AssertionError("the adapter was evaluated first")

    monkeypatch.setattr(dylora.runner, "execute", evaluated)
    lines = curve_cli([str(hand_adapter), "task=sst2", "--export-rank", str(rank)], capsys)
    assert lines == [f"dylora-adapter-curve: error: --export-rank {rank} must be a rank within 1..2 (the adapter's "
                     "r), e.g. --export-rank 1"]


class Anything:  # a class torch's weights-only unpickler refuses
    pass


@pytest.mark.parametrize("payload", ["pickle", "torch.save"])
def test_a_pickled_checkpoint_is_refused_without_suggesting_weights_only_false(tmp_path, payload):
    from dylora.models import load_model, load_tokenizer
    from dylora.spec import ModelSpec

    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    spec = ModelSpec(name="tiny", source="tiny", max_length=32, tiny=tiny)
    tokenizer = load_tokenizer(spec)
    folder = tmp_path / "model"
    model = load_model(spec, tokenizer, 2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    weights = folder / "pytorch_model.bin"
    if payload == "pickle":
        weights.write_bytes(pickle.dumps({"a": 1}))
    else:
        torch.save({"state": model.state_dict(), "object": Anything()}, weights)
    saved = ModelSpec(name="saved", path=str(folder), max_length=32)
    with pytest.raises(ConfigError) as error:
        load_model(saved, load_tokenizer(saved), 2)
    assert str(error.value) == (
        f"the weights in {weights} are a pickle that is not a weights-only checkpoint: dylora loads only safetensors "
        "or weights-only torch checkpoints (never arbitrary pickled objects); save the model with save_pretrained "
        "(safetensors) and load that")
    assert error.value.__cause__ is None and error.value.__suppress_context__  # torch's advice is not passed on


def test_an_out_dir_where_no_folder_can_be_made_is_one_line_before_hydra(tmp_path, monkeypatch):
    def refused(dir=None, prefix=None):  # as /sys refuses a new folder although os.access says yes
        raise PermissionError(1, "Operation not permitted", str(Path(dir) / prefix))

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    assert cli_run.out_dir_problem([f"out_dir={tmp_path / 'a'}", f"out_dir={tmp_path / 'x'}"]) == (
        f"out_dir={tmp_path / 'x'}: no folder can be made in {tmp_path} (Operation not permitted); "
        "choose another out_dir=")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/sys/kernel").is_dir(), reason="needs sysfs")
def test_cli_out_dir_under_sys_is_one_line(tmp_path):
    done = run_cli(["out_dir=/sys/x"], cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: out_dir=/sys/x: ")


# ---------------------------------------------------------------------------- threads


def test_trainer_threads_pins_the_run_and_null_leaves_the_hash_alone(tmp_path):
    from dylora.cli.compose import compose_config

    config = compose_config(tiny_overrides("task=synthetic"))
    assert config["trainer"]["threads"] is None
    without = {**config, "trainer": {k: v for k, v in config["trainer"].items() if k != "threads"}}
    assert records.config_hash(config) == records.config_hash(without)  # existing runs keep their names
    assert records.config_hash({**config, "trainer": {**config["trainer"], "threads": 1}}) != records.config_hash(
        config)
    assert compose_spec(["experiment=demo"]).trainer.threads == 2  # the thread count results/demo was made with
    before = torch.get_num_threads()
    with pinned_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match=r"^trainer\.threads=0 must be a whole number >= 1, or null"):
        compose_spec(tiny_overrides("task=synthetic", "trainer.threads=0"))


def test_a_run_records_the_thread_count_it_was_pinned_to(tmp_path):
    spec = compose_spec(tiny_overrides("task=synthetic", "task.n_train=16", "task.n_eval=8", "trainer.threads=1",
                                       f"out_dir={tmp_path}"))
    before = torch.get_num_threads()
    run_dir = execute(spec, progress=False)
    assert records.read_env(run_dir)["torch_threads"] == 1 and torch.get_num_threads() == before


# ---------------------------------------------------------------------------- transformers' LOAD REPORT


@pytest.fixture
def encoder_folder(tmp_path) -> Path:
    """A tiny RoBERTa encoder saved without a classification head, as a pretrained checkpoint is."""
    from transformers import RobertaConfig, RobertaModel

    from dylora.models import load_tokenizer
    from dylora.spec import ModelSpec

    tokenizer = load_tokenizer(ModelSpec(name="tiny", source="tiny"))
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path / "encoder"
    RobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _load_encoder(folder: Path):
    from dylora.models import load_model, load_tokenizer
    from dylora.spec import ModelSpec

    spec = ModelSpec(name="saved", path=str(folder), max_length=32)
    return load_model(spec, load_tokenizer(spec), 2)


def test_the_new_classification_head_is_one_line_not_a_load_report(encoder_folder, capfd, caplog):
    _load_encoder(encoder_folder)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err + caplog.text and "MISSING" not in err + caplog.text
    assert ("dylora: a new classification head (classifier.dense.bias, classifier.dense.weight, "
            "classifier.out_proj.bias, classifier.out_proj.weight) starts from random weights (the checkpoint has "
            "none)") in err


def test_any_other_missing_or_unexpected_key_is_still_reported(encoder_folder, capfd, caplog):
    from safetensors.torch import load_file, save_file

    weights = encoder_folder / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["encoder.layer.0.extra.weight"] = torch.zeros(2)  # unexpected
    del tensors[next(k for k in tensors if k.endswith("attention.self.query.bias"))]  # missing from the base
    save_file(tensors, str(weights), metadata={"format": "pt"})
    _load_encoder(encoder_folder)
    err = capfd.readouterr().err
    assert "LOAD REPORT" in caplog.text and "extra.weight" in caplog.text and "query.bias" in caplog.text
    assert "dylora: a new classification head" not in err  # transformers' own report, whole
