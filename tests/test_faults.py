"""Faults on real dylora-run processes: kills at random moments (checkpoint writes included), a kill
during the rank sweep, a corrupted checkpoint, a failing job in a multirun, an unreachable W&B.
(A SIGKILL mid-epoch and a corrupted run record are tested in test_runner.py.)"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dylora import records
from dylora.cli.compose import compose_spec
from dylora.runner import execute
from glue_fixtures import write_glue_dir
from helpers import run_cli, tiny_overrides

STEPS = 150


@pytest.fixture(scope="module")
def fault_args(tmp_path_factory) -> list[str]:
    # 300 evaluation rows x 8 ranks: a rank sweep long enough (~0.5 s) to be killed in; dropout on so
    # that a resumed run is bit-identical only if the RNG state is restored too.
    glue = write_glue_dir(tmp_path_factory.mktemp("glue-faults"), tasks=("sst2",), n_train=40, n_dev=300)
    return tiny_overrides("task=sst2", f"data.glue_dir={glue}", f"trainer.max_steps={STEPS}",
                          "trainer.checkpoint_every=1",
                          "data.max_train_samples=40", "data.max_eval_samples=null", "method.r_max=8",
                          "++model.tiny.hidden_dropout_prob=0.1")


@pytest.fixture(scope="module")
def reference(fault_args, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    return execute(compose_spec([*fault_args, f"out_dir={tmp_path_factory.mktemp('reference')}"]), progress=False)


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    # threads as the in-process reference: bitwise equal sums
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with log.open("w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "dylora.run", *args], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120, poll: float = 0.002) -> bool:
    """True once ``condition()`` holds while ``proc`` still runs; False when it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(poll)
    return False


def pointer(out: Path) -> str | None:
    try:
        return next(out.rglob("checkpoint/latest.json")).read_text()
    except (StopIteration, OSError):
        return None


def checkpoint_step(out: Path) -> int:
    """The step of the latest checkpoint under ``out`` (-1 when there is none)."""
    text = pointer(out)
    try:
        return int(text.split("state-")[1].split(".")[0]) if text else -1
    except (IndexError, ValueError):  # read while being replaced
        return -1


def assert_same_record(run_dir: Path, reference: Path) -> None:
    """Bit-identical metrics and adapter tensors. (The adapter files' bytes may differ: safetensors
    writes its metadata in a per-process hash order.)"""
    import torch
    from safetensors import safe_open

    assert records.verify_done(run_dir)
    assert (run_dir / records.METRICS).read_bytes() == (reference / records.METRICS).read_bytes()
    with (safe_open(str(run_dir / records.ADAPTER), "pt") as got,
          safe_open(str(reference / records.ADAPTER), "pt") as want):
        assert got.metadata() == want.metadata() and sorted(got.keys()) == sorted(want.keys())
        assert all(torch.equal(got.get_tensor(k), want.get_tensor(k)) for k in want.keys())
    assert not (run_dir / records.CHECKPOINT).exists()


@pytest.mark.slow
def test_kills_at_random_moments_with_a_checkpoint_every_step_resume_bit_identically(tmp_path, fault_args, reference,
                                                                                    capsys):
    """With a checkpoint written every step, a kill at a random moment often lands in a checkpoint
    write (the next test kills each of its file operations in turn); every restart must
    resume from a usable checkpoint and the end result must not change."""
    out, args, chance = tmp_path / "exp", [*fault_args, f"out_dir={tmp_path / 'exp'}"], random.Random(0)
    kills = 0
    # Kill once training passes a random step well before the end (so the kill never lands after the
    # run is complete, however fast the machine), then a few ms later: often inside a checkpoint write.
    for attempt, (low, high) in enumerate([(10, 50), (70, 110)]):
        log = tmp_path / f"attempt{attempt}.log"
        proc = start(args, tmp_path, log)
        target = chance.randint(low, high)
        if wait_for(lambda: checkpoint_step(out) >= target, proc, poll=0.002):
            time.sleep(chance.uniform(0.0, 0.02))
            proc.send_signal(signal.SIGKILL)
            kills += proc.wait() == -signal.SIGKILL
        proc.wait()
        assert not list(out.rglob(records.DONE)), "killed after the run had finished: the test proves nothing"
        if attempt:
            assert ("resuming from step" in log.read_text()
                    and "unusable" not in log.read_text()), log.read_text()[-2000:]
    assert kills == 2, "the run ended before it could be killed twice"
    run_dir = execute(compose_spec(args), progress=False)  # the last restart, in this process to save a start-up
    err = capsys.readouterr().err
    assert "resuming from step" in err and "unusable" not in err
    assert_same_record(run_dir, reference)


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the code under test catches it."""


def _crash_at(k: int, monkeypatch) -> None:
    """Make the k-th file operation of checkpointing die before it acts: os.fsync (a file written but
    not yet flushed to disk), os.replace (its rename into place), Path.unlink (the old checkpoint's removal)."""
    calls = [0]

    def wrap(real):
        def op(*args, **kwargs):
            calls[0] += 1
            if calls[0] != k:
                return real(*args, **kwargs)
            raise Killed(f"killed at file operation {k}")
        return op

    monkeypatch.setattr(os, "fsync", wrap(os.fsync))
    monkeypatch.setattr(os, "replace", wrap(os.replace))
    monkeypatch.setattr(Path, "unlink", wrap(Path.unlink))


def test_a_kill_at_any_file_operation_of_a_checkpoint_write_leaves_a_usable_checkpoint(tmp_path, monkeypatch, capsys):
    """Deterministic counterpart of the random kills: die at each file operation in turn, restart,
    and the run must resume (or start over when no checkpoint was complete) to the same adapter."""
    import torch

    from dylora.adapters import adapter_layers, rank_schedule
    from dylora.spec import TrainerSpec
    from dylora.train import train
    from test_train import CPU, QUIET, tiny_setup, training_data

    trainer = TrainerSpec(batch_size=4, max_steps=4, checkpoint_every=1, warmup_ratio=0.0)

    def run(directory: Path):
        model, collate, rows = tiny_setup()
        train(model, training_data(rows, collate), trainer, rank_schedule(next(adapter_layers(model))[1].config, 0), 0,
              CPU, checkpoint_dir=directory, callbacks=QUIET)
        return {name: (layer.lora_A.clone(), layer.lora_B.clone()) for name, layer in adapter_layers(model)}

    want = run(tmp_path / "reference")
    k, resumed = 0, 0
    while True:
        k += 1
        directory = tmp_path / f"killed-at-{k}"
        with monkeypatch.context() as patch:
            _crash_at(k, patch)
            try:
                run(directory)
            except Killed:
                pass
            else:
                break  # k is past the last file operation
        capsys.readouterr()
        got = run(directory)
        err = capsys.readouterr().err
        assert "unusable" not in err, (k, err)
        resumed += "resuming from step" in err
        assert got.keys() == want.keys()
        for name in want:
            assert all(torch.equal(g, w) for g, w in zip(got[name], want[name])), (k, name)
    # Checkpoints after steps 1, 2, 3: fsync and rename of the state, of the pointer (+ unlink of the
    # previous state) = 4 + 5 + 5 operations; only a kill before the first pointer is in place starts over.
    assert (k - 1, resumed) == (14, 14 - 4)


@pytest.fixture(scope="module")
def killed_in_sweep(fault_args, tmp_path_factory) -> Path:
    """An output folder whose run was killed after saving its adapter, before its record was complete."""
    root = tmp_path_factory.mktemp("killed-in-sweep")
    out = root / "exp"
    proc = start([*fault_args, f"out_dir={out}"], root, root / "killed.log")
    in_sweep = wait_for(lambda: any(out.rglob(records.ADAPTER)), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert in_sweep, "the run ended before it saved its adapter"
    run_dir = next(out.rglob(records.ADAPTER)).parent
    assert not (run_dir / records.DONE).exists(), "the rank sweep ended before it could be killed"
    return out


@pytest.mark.slow
def test_run_killed_during_its_rank_sweep_is_redone_bit_identically(tmp_path, fault_args, killed_in_sweep, reference):
    out = tmp_path / "exp"
    shutil.copytree(killed_in_sweep, out)
    rerun = run_cli([*fault_args, f"out_dir={out}"], cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from step" in rerun.stderr and "skip:" not in rerun.stderr
    assert_same_record(next(out.rglob(records.DONE)).parent, reference)


@pytest.mark.slow
def test_corrupted_checkpoint_is_reported_and_not_used(tmp_path, fault_args, killed_in_sweep, reference):
    out = tmp_path / "exp"
    shutil.copytree(killed_in_sweep, out)
    (state,) = out.rglob("checkpoint/state-*.safetensors")
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the tensors
    state.write_bytes(bytes(data))
    rerun = run_cli([*fault_args, f"out_dir={out}"], cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "unusable (checksum mismatch); training starts from the beginning" in rerun.stderr
    assert "resuming from step" not in rerun.stderr
    assert_same_record(next(out.rglob(records.DONE)).parent, reference)


@pytest.mark.slow
def test_failing_job_lets_the_multirun_finish_and_a_rerun_does_only_what_is_missing(tmp_path):
    glue = write_glue_dir(tmp_path / "glue", tasks=("sst2", "cola"), n_train=8, n_dev=8)
    good_cola = (glue / "CoLA" / "train.tsv").read_text()
    with open(glue / "CoLA" / "train.tsv", "a") as f:
        f.write("a row without its label\n")
    out = tmp_path / "exp"
    args = ["-m", "task=cola,sst2", f"data.glue_dir={glue}", f"out_dir={out}", *tiny_overrides()]
    first = run_cli(args, cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "1 job(s) failed" in first.stderr and "task=cola" in first.stderr and "train.tsv, line" in first.stderr
    assert "Traceback" not in first.stderr
    (sst2,) = [r for r in records.iter_runs(out) if r.done]
    assert sst2.task == "sst2"  # the job after the failing one ran to the end
    stamps = {p.name: p.stat().st_mtime_ns for p in sst2.path.iterdir()}

    (glue / "CoLA" / "train.tsv").write_text(good_cola)  # the user fixes the file and runs the same command
    second = run_cli(args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"skip: {sst2.path} is already complete" in second.stderr
    assert {p.name: p.stat().st_mtime_ns for p in sst2.path.iterdir()} == stamps
    assert sorted(r.task for r in records.iter_runs(out) if r.done) == ["cola", "sst2"]


@pytest.mark.slow
def test_unreachable_wandb_never_stops_a_run(tmp_path, glue_dir):
    env = {
        "WANDB_MODE": "online", "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",  # nothing listens
        "WANDB_INIT_TIMEOUT": "5", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }
    start_time = time.perf_counter()
    result = run_cli([*tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path / 'exp'}",
                                      "logger=wandb")],
                     cwd=tmp_path, env=env, timeout=120)
    seconds = time.perf_counter() - start_time
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: W&B failed" in result.stderr and "continuing without it" in result.stderr
    assert records.verify_done(next((tmp_path / "exp").rglob(records.DONE)).parent)
    assert seconds < 60, f"an unreachable W&B held the run for {seconds:.0f} s"
