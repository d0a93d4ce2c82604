"""Sweeps through Hydra launchers: jobs side by side on this machine (joblib), or as SLURM jobs (submitit)."""

from __future__ import annotations

import pytest

from dylora import records
from dylora.cli.compose import compose
from glue_fixtures import write_glue_dir
from helpers import run_cli, tiny_overrides


def _launcher(name: str):
    return compose([f"hydra/launcher={name}"], hydra=True).hydra.launcher


def test_launcher_presets_select_the_installed_plugins():
    local = _launcher("local_parallel")
    assert local._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert local.n_jobs == 2
    slurm = _launcher("slurm")
    assert slurm._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert slurm.max_num_timeout > 0  # a job that times out is requeued: runs resume from their checkpoint
    # submitit's folder is under out_dir
    assert slurm.tasks_per_node == 1 and slurm.submitit_folder.startswith("experiments/.hydra/multirun/")


@pytest.mark.slow
def test_local_parallel_multirun_finishes_the_good_job_and_exits_non_zero_on_the_bad_one(tmp_path):
    glue = write_glue_dir(tmp_path / "glue", tasks=("sst2", "cola"), n_train=8, n_dev=8)
    with open(glue / "CoLA" / "train.tsv", "a") as f:
        f.write("a row without its label\n")
    out = tmp_path / "exp"
    result = run_cli(["-m", "hydra/launcher=local_parallel", "task=cola,sst2", f"data.glue_dir={glue}",
                      f"out_dir={out}", *tiny_overrides()], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "CoLA/train.tsv, line 9" in result.stderr and "task=cola" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Error executing job with overrides" in result.stderr  # reported by Hydra, across the joblib processes
    runs = list(records.iter_runs(out))
    assert [(r.task, r.done) for r in runs] == [("sst2", True)]
    assert {m.rank for m in runs[0].metrics} == {0, 1, 2}  # 0: the adapter off
