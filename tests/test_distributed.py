"""Two real gloo processes under torchrun train the same adapter as one process on the same global batch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dylora import records
from dylora.adapters import rank_schedule
from dylora.cli.compose import compose_spec
from dylora.runner import execute
from helpers import tiny_overrides


def _only_run_dir(out):
    runs = list(records.iter_runs(out))
    assert len(runs) == 1, [r.path for r in runs]
    return runs[0].path


@pytest.mark.slow
def test_two_processes_agree_on_b_and_match_one_process(tmp_path, glue_dir):
    # 6 steps of 5 examples (odd: the processes get 3 and 2), dropout off so both runs see the same function.
    args = tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", "trainer.max_steps=6", "trainer.batch_size=5",
                          "trainer.checkpoint_every=2", "++model.tiny.hidden_dropout_prob=0",
                          "++model.tiny.attention_probs_dropout_prob=0")
    single = execute(compose_spec([*args, f"out_dir={tmp_path / 'one'}"]), progress=False)

    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "dylora.run", *args, f"out_dir={out}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "destroy_process_group" not in proc.stderr  # torch warns when a process leaves it undestroyed
    assert proc.stderr.count("done: ") == 1  # only the main process finishes the record
    run_dir = _only_run_dir(out)
    assert records.verify_done(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in single.iterdir())
    assert len(list((out / ".hydra").iterdir())) == 1  # one Hydra run directory for both processes

    env_json = json.loads((run_dir / records.ENV).read_text())
    assert env_json["world_size"] == 2
    schedule = rank_schedule(compose_spec(args).adapter, 0)
    expected = hashlib.sha256(json.dumps([schedule(step) for step in range(6)]).encode()).hexdigest()
    assert env_json["rank_sequence_sha256"] == [expected, expected]  # each process reports its own b sequence
    assert len({schedule(step) for step in range(6)}) == 2  # both ranks were trained: the check can tell

    got, want = load_file(str(run_dir / records.ADAPTER)), load_file(str(single / records.ADAPTER))
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
    assert any(not torch.equal(want[k], torch.zeros_like(want[k])) for k in want if k.endswith("lora_B"))
