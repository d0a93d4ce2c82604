"""make reproduce-*: the plan and cost printed first, the input check, the make path end to end."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dylora.cli.compose import compose_spec
from dylora.errors import DataError, DyLoRAError
from dylora.lab import reproduce, search_cost
from dylora.lab.reproduce import PlannedRun
from glue_fixtures import make_examples, write_glue_dir
from helpers import REPO


@pytest.fixture(scope="module")
def small_glue(tmp_path_factory) -> Path:
    return write_glue_dir(tmp_path_factory.mktemp("glue"), tasks=("rte", "cola", "mnli"), n_train=40, n_dev=16)


def test_expand_is_the_cartesian_product_of_the_sweeps():
    jobs = search_cost.expand(["experiment=table1_cpu", "task=rte,cola", "method=lora,dylora", "seed=1"])
    assert sorted(map(tuple, jobs)) == sorted(
        ("experiment=table1_cpu", f"task={t}", f"method={m}", "seed=1")
        for t in ("rte", "cola") for m in ("lora", "dylora")
    )


def test_split_sizes_count_the_rows_written(small_glue):
    for task in ("rte", "cola"):  # cola's files have no header line, rte's have one
        n_train = len(make_examples(task, "train", 40))
        assert reproduce.split_sizes(task, str(small_glue)) == (n_train, (len(make_examples(task, "validation", 16)),))
    assert reproduce.split_sizes("mnli", str(small_glue)) == (40, (16, 16))  # matched and mismatched
    assert reproduce.split_sizes("qqp", None) == (363846, (40430,))  # the hub: the published sizes


@pytest.mark.parametrize(("extra", "train_steps", "batch"), [
    ([], 4 * math.ceil(40 / 16), 16),  # the scripts_cpu preset for RTE (per_task): 4 epochs of batch 16 over 40 rows
    (["data.max_train_samples=10"], 4, 16),  # one short batch per epoch
    (["trainer.per_task.rte.epochs=6"], 6 * math.ceil(40 / 16), 16),  # per_task values are counted
    (["trainer.max_steps=5", "trainer.batch_size=4"], 5, 4),
])
def test_plan_counts_sequences_from_the_composed_config(small_glue, tmp_path, extra, train_steps, batch):
    args = ["experiment=table1_cpu", "task=rte", "method=lora,dylora", "seed=7", f"data.glue_dir={small_glue}",
            f"out_dir={tmp_path}", *extra]
    configs, runs = reproduce.plan(args)
    assert [(r.task, r.method, r.seed) for r in runs] == [("rte", "lora", 7), ("rte", "dylora", 7)]
    assert all(c["model"]["name"] == "minilm" and c["preset"] == "scripts_cpu" for c in configs)
    for r in runs:
        assert r.train_sequences == train_steps * batch
        assert r.eval_sequences == 16 * 9  # every dev row at ranks 0 (the adapter off) and 1..8
        assert not r.done


def test_plan_sees_finished_runs(small_glue, tmp_path):
    from dylora import records

    args = ["experiment=table1_cpu", "task=rte", "method=lora", "seed=1", f"data.glue_dir={small_glue}",
            f"out_dir={tmp_path}"]
    run_dir = records.run_dir_for(tmp_path, compose_spec(args).config)  # where the runner writes it
    run_dir.mkdir(parents=True)
    (run_dir / records.DONE).write_text("{}")
    assert [r.done for r in reproduce.plan(args)[1]] == [True]


def test_estimate_sums_the_runs_left_at_the_assumed_rates():
    runs = [PlannedRun("rte", "lora", 1, 1000, 200, False), PlannedRun("rte", "dylora", 1, 500, 100, False),
            PlannedRun("cola", "lora", 1, 9999, 9999, True)]  # finished: costs nothing
    train_s, eval_s = reproduce.SECONDS_PER_SEQUENCE[("minilm", "cpu")]
    seconds, rates, fallback = reproduce.estimate_seconds(runs, "minilm", "cpu")
    assert seconds == pytest.approx(1500 * train_s + 300 * eval_s) and rates == (train_s, eval_s) and not fallback
    assert reproduce.estimate_seconds(runs, "unknown-model", "cpu")[1:] == (reproduce.FALLBACK_SECONDS, True)
    factor = reproduce.PRECISION_FACTOR[("cpu", "bf16")]
    bf16_seconds, bf16_rates, _ = reproduce.estimate_seconds(runs, "minilm", "cpu", "bf16")
    assert bf16_seconds == pytest.approx(factor * seconds) and bf16_rates == pytest.approx((factor * train_s,
                                                                                           factor * eval_s))


def test_missing_task_files_stop_it_with_one_message_naming_them(small_glue, tmp_path, capsys):
    args = ["experiment=table1_cpu", "task=rte,mrpc,qqp", "method=lora", f"data.glue_dir={small_glue}",
            f"out_dir={tmp_path}"]
    with pytest.raises(DataError) as err:
        reproduce.plan(args)
    for name in ("MRPC/train.tsv", "MRPC/dev.tsv", "QQP/train.tsv", "QQP/dev.tsv"):
        assert name in str(err.value)
    assert "RTE" not in str(err.value)
    assert reproduce.main(args) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error: missing GLUE file(s):") and out.err.count("\n") == 1


def test_model_path_must_be_a_folder(small_glue, tmp_path, capsys):
    args = ["experiment=table1", "task=rte", "method=lora", f"data.glue_dir={small_glue}",
            f"model.path={tmp_path}/none"]
    assert reproduce.main(args) == 1
    assert "model.path=" in capsys.readouterr().err


def test_printed_plan_names_runs_and_cost(small_glue, tmp_path, capsys):
    args = ["experiment=table1", "task=rte,cola", "method=lora,dylora,dylora_frozen", "seed=10,42",
            f"data.glue_dir={small_glue}", f"out_dir={tmp_path}", "trainer.device=cuda"]
    assert reproduce.main(args) == 0
    out = capsys.readouterr().out
    assert "12 runs (0 already finished, skipped) = 2 tasks x 3 methods x 2 seeds" in out
    assert "methods: lora, dylora, dylora_frozen" in out and "seeds:   10, 42" in out
    assert "model roberta-base" in out and "preset paper" in out and "device cuda" in out
    # paper preset: 30 epochs of batch 32 over 40 rows = 60 steps of 32; 16 dev rows x 9 ranks (0..8)
    train_seqs, eval_seqs = 12 * 60 * 32, 12 * 16 * 9
    assert f"{train_seqs:,} training and {eval_seqs:,} evaluation sequences" in out
    assert "ASSUMPTION" in out


def _make(target: str, *variables: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    # -o: never (re)build the virtual environment; PY: this interpreter
    return subprocess.run(["make", "-s", "-C", str(REPO), "-o", ".venv/.installed", target, f"PY={sys.executable}",
                           *variables], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_reproduce_table1_cpu_runs_plans_and_reports(tmp_path):
    glue = write_glue_dir(tmp_path / "glue", tasks=("rte",), n_train=16, n_dev=8)
    out, res = tmp_path / "exp", tmp_path / "res"
    tiny = ("trainer.max_steps=2 trainer.batch_size=4 trainer.eval_batch_size=8 model.max_length=32 "
            "method.eval_ranks=[1,8]")
    result = _make("reproduce-table1-cpu", f"GLUE_DIR={glue}", "TASKS=rte", "SEEDS=42", f"OUT_DIR={out}",
                   f"RESULTS_DIR={res}",
                   f"OVERRIDES={tiny}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plan: experiment table1_cpu: 3 runs" in result.stdout
    assert result.stdout.index("plan:") < result.stdout.index("table1_cpu: wrote")  # planned before it ran
    for ext in ("md", "csv", "tex"):
        assert (res / "table1_cpu" / f"table1.{ext}").is_file()
    cells = pd.read_csv(res / "table1_cpu" / "table1.csv")
    assert set(cells["method"]) == {"lora", "dylora", "dylora_frozen"}
    md = (res / "table1_cpu" / "table1.md").read_text()
    assert "Departure from the paper: model.max_length 32 (paper: 512)." in md
    assert "Departure from the paper: preset scripts_cpu (paper: paper)." in md
    assert "Departure from the paper: trainer.group_by_length true: batches of similar length" in md


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_reproduce_paper_cpu_plans_everything_once_then_writes_every_table(tmp_path):
    glue = write_glue_dir(tmp_path / "glue", tasks=("rte",), n_train=16, n_dev=8)
    out, res = tmp_path / "exp", tmp_path / "res"
    tiny = "trainer.max_steps=2 trainer.batch_size=4 trainer.eval_batch_size=8 model.max_length=32"
    result = _make("reproduce-paper-cpu", f"GLUE_DIR={glue}", "TASKS=rte", "R_MAX=4", f"OUT_DIR={out}",
                   f"RESULTS_DIR={res}", f"OVERRIDES={tiny}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    total = result.stdout.index("total: 3 sweeps, 10 runs")  # LoRA at 1, 2, 4 + DyLoRA (Frozen); 4; 2
    plans = [i for i in range(len(result.stdout)) if result.stdout.startswith("plan: experiment search_eacl", i)]
    assert len(plans) == 2 and plans[0] < total < plans[1]  # the whole plan first, then each target's own
    for name in ("table1_eacl", "table5"):
        assert (res / "search_eacl_cpu" / f"{name}.csv").is_file()
    assert (res / "table4_cpu" / "table4.md").is_file() and (res / "table7_cpu" / "table7.md").is_file()
    assert "Table 7, RTE: the summed loss" in (res / "table7_cpu" / "finding.md").read_text()
    search = pd.read_csv(res / "search_eacl_cpu" / "table5.csv")
    assert search.query("source == 'ours' and search == 'LoRA (Search)'")["trainings"].tolist() == [3]


def test_make_stops_before_training_when_files_are_missing(tmp_path):
    result = _make("reproduce-table1-cpu", f"GLUE_DIR={tmp_path}/none", "TASKS=rte", f"OUT_DIR={tmp_path}/exp",
                   cwd=tmp_path)
    assert result.returncode != 0
    assert "error: missing GLUE file(s):" in result.stderr and "RTE/train.tsv" in result.stderr
    assert not (tmp_path / "exp").exists()  # nothing ran


@pytest.mark.parametrize("experiment", ["table1_cpu", "table1_mpnet_cpu", "search_eacl_cpu", "table4_cpu",
                                        "table7_cpu", "table7_cpu_6ep"])
def test_committed_tables_regenerate_from_the_committed_records(tmp_path, experiment):
    from dylora.lab.report import build_report

    committed = REPO / "results" / experiment
    if not (committed / "records").is_dir():
        pytest.skip(f"no committed {experiment} run records")
    build_report(committed / "records", tmp_path, experiment)
    written = tmp_path / experiment
    kinds = (".csv", ".md", ".tex", ".json", ".png", ".svg")
    tables = sorted(p.name for p in committed.iterdir() if p.suffix in kinds
                    and p.name not in ("CALIBRATION.md", "README.md"))
    assert tables and tables == sorted(p.name for p in written.iterdir() if p.suffix in kinds)
    for name in tables:  # every table and plot the report writes, byte for byte
        assert (written / name).read_bytes() == (committed / name).read_bytes(), name


def test_a_summed_loss_run_is_planned_at_one_pass_per_rank(small_glue, tmp_path):
    args = ["experiment=table1_cpu", "task=rte", "seed=1", f"data.glue_dir={small_glue}", f"out_dir={tmp_path}"]
    [sampled] = reproduce.plan([*args, "method=dylora"])[1]
    [summed] = reproduce.plan([*args, "method=dylora_sum"])[1]
    assert summed.train_sequences == 8 * sampled.train_sequences  # ranks 1..8, each a forward and backward
    assert summed.eval_sequences == sampled.eval_sequences


def test_a_search_sweep_plans_each_run_of_the_searches_once(small_glue, tmp_path):
    args = ["search", "--ranks", "pow2", "experiment=search_eacl_cpu", "task=rte,cola", "method.r_max=4,8",
            f"data.glue_dir={small_glue}", f"out_dir={tmp_path}"]
    configs, runs = reproduce.plan(args)
    lora = sorted((r.task, c["method"]["r_max"]) for r, c in zip(runs, configs) if r.method == "lora")
    assert lora == [(t, r) for t in ("cola", "rte") for r in (1, 2, 4, 8)]  # r_max 4 and 8 share ranks 1, 2, 4
    assert sorted((r.task, c["method"]["r_max"]) for r, c in zip(runs, configs) if r.method == "dylora_frozen") == [
        (t, r) for t in ("cola", "rte") for r in (4, 8)]
    with pytest.raises(DyLoRAError, match="--ranks 'two' is not a comma-separated list"):
        reproduce.plan(["search", "--ranks=two", *args[3:]])


def test_several_sweeps_print_one_plan_each_and_their_total(small_glue, tmp_path, capsys):
    common = [f"data.glue_dir={small_glue}", f"out_dir={tmp_path}", "seed=1"]
    assert reproduce.main(["experiment=table4_cpu", "task=rte", "method=dylora,dylora_geometric", *common, "::",
                           "experiment=table7_cpu", "method=dylora,dylora_sum", *common]) == 0
    out = capsys.readouterr().out
    assert "plan: experiment table4_cpu: 2 runs" in out and "plan: experiment table7_cpu: 2 runs" in out
    assert "total: 2 sweeps, 4 runs (2 + 2), about" in out
    assert reproduce.main(["experiment=table4_cpu", "::"]) == 1
    assert "sweep 2 of 2 has no overrides" in capsys.readouterr().err


def test_a_bundled_model_not_installed_stops_the_plan_with_the_install_command(small_glue, tmp_path, monkeypatch):
    monkeypatch.setenv("DYLORA_CACHE", str(tmp_path / "empty-cache"))  # nothing assembled there
    from dataclasses import replace

    from dylora import bundled

    monkeypatch.setitem(bundled.SPLIT_ZIPS, "mpnet-base", replace(bundled.MPNET_BASE, packages=("no-such-part-001",)))
    args = ["experiment=table1_mpnet_cpu", "task=rte", "method=lora", f"data.glue_dir={small_glue}",
            f"out_dir={tmp_path}"]
    with pytest.raises(DyLoRAError, match=r"all-mpnet-base-v2 needs the package no-such-part-001: run make models"):
        reproduce.plan(args)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_reproduce_paper_cpu_collects_every_targets_sweep_into_one_plan(small_glue, tmp_path, capsys):
    plan_file = tmp_path / "plan"
    result = _make("reproduce-search-cpu", "reproduce-table4-cpu", "reproduce-table7-cpu", f"PLAN_TO={plan_file}",
                   f"GLUE_DIR={small_glue}", "TASKS=rte", f"OUT_DIR={tmp_path / 'exp'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = plan_file.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["search", "experiment=table4_cpu", "experiment=table7_cpu"]
    assert not (tmp_path / "exp").exists()  # planning only: nothing ran
    groups = [line.split() for line in lines]
    assert reproduce.main([*groups[0], "::", *groups[1], "::", *groups[2]]) == 0
    assert "total: 3 sweeps, 13 runs" in capsys.readouterr().out  # 6 LoRA ranks + DyLoRA (Frozen); 4; 2


def test_help_prints_the_usage_and_an_option_is_a_one_line_error():
    for flag in ("--help", "-h"):
        result = subprocess.run([sys.executable, "-m", "dylora.lab.reproduce", flag], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("The plan of a ``make reproduce-*`` multirun") and "PLAN=1" in result.stdout
        assert "Exception" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "dylora.lab.reproduce", "experiment=table1_cpu", "--tasks=rte"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.startswith("error: unknown option --tasks=rte")
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def _run(task: str, method: str, r_max: int, seed: int = 1) -> PlannedRun:
    return PlannedRun(task, method, seed, 1, 1, False, r_max)


def test_the_run_count_is_printed_as_the_terms_that_make_it():
    table = [_run(t, m, 8, s) for t in ("rte", "cola") for m in ("lora", "dylora", "dylora_frozen") for s in (1, 2)]
    assert reproduce.count_terms(table) == "2 tasks x 3 methods x 2 seeds"
    search = [_run(t, "lora", r) for t in ("mrpc", "cola") for r in (1, 2, 4, 8, 16, 32)] + \
        [_run(t, "dylora_frozen", 32) for t in ("mrpc", "cola")]
    assert reproduce.count_terms(search) == \
        "2 tasks x (6 lora (ranks 1, 2, 4, 8, 16, 32) + 1 dylora_frozen (r_max 32)) x 1 seed"  # 2 x (6 + 1) x 1 = 14
    assert reproduce.count_terms(table * 2) == "2 tasks x 3 methods x 2 seeds x 2 settings of the other swept overrides"
    assert reproduce.count_terms(table[:5]) == "5 rte"  # no product: the runs per task
    assert reproduce.count_terms([*table, _run("rte", "lora", 4)]) == "7 rte + 6 cola"


def test_a_search_plan_prints_terms_that_multiply_to_its_runs(small_glue, tmp_path, capsys):
    args = ["search", "--ranks", "pow2", "experiment=search_eacl_cpu", "task=rte,cola", "method.r_max=4,8",
            f"data.glue_dir={small_glue}", f"out_dir={tmp_path}"]
    assert reproduce.main(args) == 0
    # LoRA at 1, 2, 4, 8 (r_max 4 and 8 share 1, 2, 4) and DyLoRA (Frozen) at r_max 4 and 8, for each task
    assert ("12 runs (0 already finished, skipped) = 2 tasks x (4 lora (ranks 1, 2, 4, 8) + "
            "2 dylora_frozen (r_max 4, 8)) x 1 seed") in capsys.readouterr().out


def test_the_plan_counts_the_rank_zero_pass_and_every_truncation(small_glue, tmp_path):
    args = ["experiment=table1_cpu", "task=rte", "method=dylora", "seed=1", f"data.glue_dir={small_glue}",
            f"out_dir={tmp_path}"]
    [prefix] = reproduce.plan(args)[1]
    [both] = reproduce.plan([*args, "eval.truncation=[prefix,svd]"])[1]
    assert prefix.eval_sequences == 16 * (1 + 8) and both.eval_sequences == 16 * (1 + 2 * 8)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(("target", "planned"), [
    ("reproduce-table1-cpu", "plan: experiment table1_cpu: 15 runs"),  # 3 methods x seeds 42..46
    ("reproduce-table1", "plan: experiment table1: 12 runs"),
    ("reproduce-search-cpu", "plan: experiment search_eacl_cpu: 7 runs"),
    ("reproduce-allocate-cpu", "plan: experiment allocate_cpu: 1 run ("),
    ("reproduce-paper-cpu", "total: 3 sweeps, 13 runs (7 + 4 + 2)"),
])
def test_make_plan_1_prints_the_plan_and_runs_nothing(small_glue, tmp_path, target, planned):
    out = tmp_path / "exp"
    result = _make(target, "PLAN=1", f"GLUE_DIR={small_glue}", "TASKS=rte", f"OUT_DIR={out}",
                   f"RESULTS_DIR={tmp_path / 'res'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned in result.stdout and "cost:" in result.stdout
    assert not out.exists() and not (tmp_path / "res").exists()  # nothing trained, nothing reported
