"""Failures of the environment end in one line that names the problem and the fix, and lose nothing:
a model folder missing its weights or tokenizer, damaged weights, an out_dir or results_dir that
cannot be written, a full disk while a checkpoint is written."""

from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path

import pytest

from dylora import records
from dylora.cli import run as cli_run
from dylora.cli.compose import compose_spec
from dylora.errors import ConfigError, os_error_message
from dylora.models import load_model, load_tokenizer
from dylora.runner import execute
from dylora.spec import ModelSpec
from helpers import REPO, run_cli, tiny_overrides

TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture
def saved_model(tmp_path) -> Path:
    """A tiny RoBERTa saved as a real model folder (weights, config, tokenizer)."""
    spec = ModelSpec(name="tiny", source="tiny", max_length=32, tiny=TINY_MODEL)
    tokenizer = load_tokenizer(spec)
    folder = tmp_path / "model"
    load_model(spec, tokenizer, 2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _load(folder: Path):
    spec = ModelSpec(name="saved", path=str(folder), max_length=32)
    return load_model(spec, load_tokenizer(spec), 2)


def test_a_saved_model_folder_loads(saved_model):
    assert _load(saved_model).num_labels == 2  # the cases below fail for what they remove, nothing else


@pytest.mark.parametrize("keep, missing", [(("config.json",), "weights"), (("config.json", "model.safetensors"),
                                                                           "tokenizer")])
def test_a_model_folder_missing_its_weights_or_tokenizer_is_named(saved_model, keep, missing):
    for path in saved_model.iterdir():
        if path.name not in keep:
            path.unlink()
    with pytest.raises(ConfigError, match=f"^model.path={saved_model} has no {missing} .*save_pretrained"):
        _load(saved_model)


def test_truncated_weights_are_named_as_damaged(saved_model):
    weights = saved_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConfigError, match=f"^the weights in {saved_model} cannot be read .*copy the model folder"):
        _load(saved_model)


def test_an_out_dir_under_a_file_or_read_only_is_refused_before_hydra_writes_there(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert cli_run.out_dir_problem([f"out_dir={tmp_path / 'file' / 'x'}"]) == (
        f"out_dir={tmp_path / 'file' / 'x'}: {tmp_path / 'file'} is a file, not a folder; choose another out_dir=")
    assert cli_run.out_dir_problem([f"out_dir={tmp_path / 'new' / 'deeper'}"]) is None  # created later
    # a read-only mount, simulated: os.access says no (root writes anywhere a test could chmod)
    monkeypatch.setattr(cli_run.os, "access", lambda path, mode: Path(path) != tmp_path)
    assert "cannot be written to (read-only or no permission)" in cli_run.out_dir_problem([f"out_dir={tmp_path}/r"])


@pytest.mark.slow
def test_cli_out_dir_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    result = run_cli(tiny_overrides("task=sst2", f"out_dir={tmp_path / 'file' / 'runs'}"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: out_dir={tmp_path / 'file' / 'runs'}: {tmp_path / 'file'} is a file, not a folder; "
        "choose another out_dir="]


def test_os_errors_are_one_line_with_the_path_and_the_fix():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoint/.state-5.safetensors.tmp")
    assert os_error_message(full) == (
        "file system error at /data/run/checkpoint/.state-5.safetensors.tmp: No space left on device; free some space "
        "and run the same command again: finished runs are skipped and an unfinished one resumes from its last "
        "checkpoint")
    assert "read-only" in os_error_message(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"))


def test_a_full_disk_while_checkpointing_is_one_line_and_the_run_resumes(tmp_path, glue_dir, monkeypatch, capsys):
    args = [*tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", "trainer.max_steps=6",
                            "trainer.checkpoint_every=2"), f"out_dir={tmp_path / 'exp'}"]
    reference = execute(compose_spec([*args, f"out_dir={tmp_path / 'reference'}"]), progress=False)
    from dylora.adapters import io

    real_write, calls = io.atomic_write_bytes, []

    def fills_the_disk(path, data):  # safetensors files (checkpoints, then the adapter) are written by this
        calls.append(path)
        if len(calls) != 2:
            return real_write(path, data)

        def no_space(fd):  # the second checkpoint's data does not fit: the first stays the latest
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        with monkeypatch.context() as disk:
            disk.setattr(os, "fsync", no_space)
            return real_write(path, data)

    monkeypatch.setattr(io, "atomic_write_bytes", fills_the_disk)
    monkeypatch.setattr(sys, "argv", ["dylora-run", *args])
    with pytest.raises(SystemExit) as exit_:
        cli_run.main()
    assert exit_.value.code == 1
    captured = capsys.readouterr()
    err = re.findall(r"error: .*", captured.err)  # a progress bar's \r may precede it
    assert len(err) == 1 and "No space left on device; free some space" in err[0], captured
    checkpoint = next((tmp_path / "exp").rglob(records.CHECKPOINT))
    assert sorted(p.name for p in checkpoint.iterdir()) == ["latest.json", "state-2.safetensors"]  # no .tmp left

    monkeypatch.setattr(io, "atomic_write_bytes", real_write)
    run_dir = execute(compose_spec(args), progress=False)
    assert "resuming from step 2" in capsys.readouterr().err
    assert (run_dir / records.METRICS).read_bytes() == (reference / records.METRICS).read_bytes()


@pytest.mark.slow
def test_report_with_results_dir_under_a_file_is_one_line(tmp_path, glue_dir):
    execute(compose_spec(tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path / 'exp'}")),
            progress=False)
    (tmp_path / "file").write_text("x")
    result = run_cli([f"out_dir={tmp_path / 'exp'}", f"results_dir={tmp_path / 'file' / 'results'}"], cwd=REPO,
                     module="dylora.cli.report")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dylora-report: error: file system error at ")
    assert "Not a directory; a part of that path is a file" in lines[0]
