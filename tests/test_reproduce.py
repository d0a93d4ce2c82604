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


def _words(ex) -> int:
    return len(ex.text_a.split()) + (len(ex.text_b.split()) if ex.text_b is not None else 0)


def _tokens(examples) -> int:
    """The examples' tokens, estimated independently: 1.25 tokens a word, 3 special tokens a row."""
    return sum(round(1.25 * _words(ex)) + 3 for ex in examples)


def test_split_stats_count_the_rows_and_words_written(small_glue):
    for task in ("rte", "cola"):  # cola's files have no header line, rte's have one
        [train, dev] = reproduce.split_stats(task, str(small_glue), max_length=512)
        for split, got, n in (("train", train, 40), ("validation", dev, 16)):
            examples = make_examples(task, split, n)
            assert (got.rows, got.tokens) == (n, _tokens(examples))
        first = reproduce.split_stats(task, str(small_glue), max_length=512, train_limit=5, eval_limit=3)
        assert first == tuple(reproduce.Split(n, _tokens(make_examples(task, split, m)[:n]))
                              for split, n, m in (("train", 5, 40), ("validation", 3, 16)))
    assert [s.rows for s in reproduce.split_stats("mnli", str(small_glue), 512)] == [40, 16, 16]  # matched, mismatched
    # the hub: the published sizes, and a row of the task's mean words
    assert reproduce.split_stats("qqp", None, 128) == (reproduce.Split(363846, 363846 * 31),
                                                       reproduce.Split(40430, 40430 * 31))  # 22 words: 28 + 3
    assert reproduce.split_stats("qqp", None, 16, 100, 10) == (reproduce.Split(100, 1600), reproduce.Split(10, 160))


def test_the_plan_counts_the_first_max_eval_samples_rows(small_glue, tmp_path):
    args = ["experiment=table1_cpu", "task=rte", "method=lora", "seed=1", f"data.glue_dir={small_glue}",
            f"out_dir={tmp_path}", "data.max_eval_samples=5"]
    [run] = reproduce.plan(args)[1]
    dev = make_examples("rte", "validation", 16)[:5]
    assert (run.eval_sequences, run.eval_tokens) == (5 * 9, 9 * _tokens(dev))


def test_a_split_without_rows_is_named(tmp_path):
    folder = write_glue_dir(tmp_path, tasks=("rte",), n_train=4, n_dev=4)
    dev = folder / "RTE" / "dev.tsv"
    dev.write_text(dev.read_text().splitlines()[0] + "\n")  # the header line alone
    with pytest.raises(DataError, match="dev.tsv has no data rows"):
        reproduce.split_stats("rte", str(folder), 128)


def test_a_row_is_truncated_at_max_length_as_the_tokenizer_does():
    text = ("word " * 100).strip()
    assert reproduce.row_tokens((text,), 512) == 128 and reproduce.row_tokens((text, text), 512) == 253
    assert reproduce.row_tokens((text, text), 128) == 128 and reproduce.row_tokens(("",), 128) == 3


@pytest.mark.parametrize(("extra", "train_steps", "batch", "train_rows"), [
    ([], 4 * math.ceil(40 / 16), 16, 40),  # the scripts_cpu preset for RTE (per_task): 4 epochs of batch 16, 40 rows
    (["data.max_train_samples=10"], 4, 16, 10),  # one short batch per epoch
    (["trainer.per_task.rte.epochs=6"], 6 * math.ceil(40 / 16), 16, 40),  # per_task values are counted
    (["trainer.max_steps=5", "trainer.batch_size=4"], 5, 4, 40),
])
def test_plan_counts_sequences_and_tokens_from_the_composed_config(small_glue, tmp_path, extra, train_steps, batch,
                                                                   train_rows):
    args = ["experiment=table1_cpu", "task=rte", "method=lora,dylora", "seed=7", f"data.glue_dir={small_glue}",
            f"out_dir={tmp_path}", *extra]
    configs, runs = reproduce.plan(args)
    assert [(r.task, r.method, r.seed) for r in runs] == [("rte", "lora", 7), ("rte", "dylora", 7)]
    assert all(c["model"]["name"] == "minilm" and c["preset"] == "scripts_cpu" for c in configs)
    train_tokens = _tokens(make_examples("rte", "train", 40)[:train_rows])
    dev_tokens = _tokens(make_examples("rte", "validation", 16))
    for r in runs:
        assert r.train_sequences == train_steps * batch
        assert r.eval_sequences == 16 * 9  # every dev row at ranks 0 (the adapter off) and 1..8
        assert r.train_tokens == round(train_steps * batch * train_tokens / train_rows)  # a mean row per sequence
        assert r.eval_tokens == dev_tokens * 9
        assert not r.done


def test_plan_sees_finished_runs(small_glue, tmp_path):
    from dylora import records

    args = ["experiment=table1_cpu", "task=rte", "method=lora", "seed=1", f"data.glue_dir={small_glue}",
            f"out_dir={tmp_path}"]
    run_dir = records.run_dir_for(tmp_path, compose_spec(args).config)  # where the runner writes it
    run_dir.mkdir(parents=True)
    (run_dir / records.DONE).write_text("{}")
    assert [r.done for r in reproduce.plan(args)[1]] == [True]


def test_a_run_with_a_checkpoint_costs_only_the_steps_after_it(small_glue, tmp_path, capsys):
    import json

    from dylora import records
    from dylora.train import POINTER, STATE

    args = ["experiment=table1_cpu", "task=rte", "method=lora", "seed=1", f"data.glue_dir={small_glue}",
            f"out_dir={tmp_path}", "trainer.max_steps=10", "trainer.batch_size=4"]
    [fresh] = reproduce.plan(args)[1]
    checkpoint = records.run_dir_for(tmp_path, compose_spec(args).config) / records.CHECKPOINT
    checkpoint.mkdir(parents=True)
    (checkpoint / POINTER).write_text(json.dumps({"file": STATE.format(step=4), "sha256": "0" * 64}))
    [resumed] = reproduce.plan(args)[1]
    assert (fresh.resumes_at, fresh.train_sequences) == (0, 10 * 4)
    assert (resumed.resumes_at, resumed.train_sequences) == (4, 6 * 4)  # steps 5..10 left
    assert resumed.train_tokens == pytest.approx(fresh.train_tokens * 6 / 10, abs=1)
    assert resumed.eval_tokens == fresh.eval_tokens and not resumed.done  # the sweep is still to do
    assert reproduce.main(args) == 0
    assert "(0 already finished, skipped; 1 resumes from its checkpoint)" in capsys.readouterr().out
    (checkpoint / POINTER).write_text("{not json")  # unreadable: the run starts over, as load_checkpoint does
    assert reproduce.plan(args)[1][0].resumes_at == 0


def test_estimate_sums_the_tokens_left_at_the_assumed_rates():
    runs = [PlannedRun("rte", "lora", 1, 10, 2, 1000, 200, False),
            PlannedRun("rte", "dylora", 1, 5, 1, 500, 100, False),
            PlannedRun("cola", "lora", 1, 99, 99, 9999, 9999, True)]  # finished: costs nothing
    train_s, eval_s = reproduce.SECONDS_PER_TOKEN[("minilm", "cpu")]
    seconds, rates, fallback = reproduce.estimate_seconds(runs, "minilm", "cpu")
    assert seconds == pytest.approx(1500 * train_s + 300 * eval_s) and rates == (train_s, eval_s) and not fallback
    assert reproduce.estimate_seconds(runs, "unknown-model", "cpu")[1:] == (reproduce.FALLBACK_SECONDS, True)
    factor = reproduce.PRECISION_FACTOR[("cpu", "bf16")]
    bf16_seconds, bf16_rates, _ = reproduce.estimate_seconds(runs, "minilm", "cpu", "bf16")
    assert bf16_seconds == pytest.approx(factor * seconds) and bf16_rates == pytest.approx((factor * train_s,
                                                                                           factor * eval_s))


def test_measured_seconds_per_token_divide_the_runs_times_by_their_tokens(small_glue, tmp_path):
    import json

    import yaml

    from dylora import records

    times = {("rte", 1): (30.0, 4.0), ("cola", 2): (50.0, 6.0)}  # (train_seconds, sweep_seconds) per (task, seed)
    tokens = {}
    for (task, seed), (train_s, sweep_s) in times.items():
        args = ["experiment=table1_cpu", f"task={task}", "method=lora", f"seed={seed}", f"out_dir={tmp_path}",
                f"data.glue_dir={small_glue}", "trainer.max_steps=5", "trainer.batch_size=4"]
        config = compose_spec(args).config
        run_dir = records.run_dir_for(tmp_path, config)
        run_dir.mkdir(parents=True)
        (run_dir / records.CONFIG).write_text(yaml.safe_dump(config))
        (run_dir / records.METRICS).write_text("")
        (run_dir / records.ENV).write_text(json.dumps({"train_seconds": train_s, "sweep_seconds": sweep_s}))
        records.mark_done(run_dir)
        train = make_examples(task, "train", 40)
        tokens[task] = (5 * 4 * _tokens(train) / len(train), 9 * _tokens(make_examples(task, "validation", 16)))
    train_s, eval_s = reproduce.measured_seconds_per_token(tmp_path, str(small_glue))
    assert train_s == pytest.approx(80 / (tokens["rte"][0] + tokens["cola"][0]), rel=1e-3)
    assert eval_s == pytest.approx(10 / (tokens["rte"][1] + tokens["cola"][1]))
    with pytest.raises(DataError, match="no finished run"):
        reproduce.measured_seconds_per_token(tmp_path / "empty", str(small_glue))


SHARED_GLUE = REPO.parent / "shared" / "data" / "glue"


@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="needs ../shared/data/glue, where the runs' rows are")
@pytest.mark.parametrize(("model", "records"), [("minilm", "search_eacl_cpu"), ("mpnet-base", "table1_mpnet_cpu")])
def test_the_cpu_figures_are_what_the_committed_runs_measured(model, records):
    per_job = reproduce.measured_seconds_per_token(REPO / "results" / records / "records", str(SHARED_GLUE))
    two_jobs_in_fp32 = [seconds / 2 / reproduce.PRECISION_FACTOR[("cpu", "bf16")] for seconds in per_job]
    assert reproduce.SECONDS_PER_TOKEN[(model, "cpu")] == pytest.approx(two_jobs_in_fp32, rel=5e-3), \
        f"the records of {records} changed: set SECONDS_PER_TOKEN[({model!r}, 'cpu')] to {two_jobs_in_fp32}"


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
    return PlannedRun(task, method, seed, 1, 1, 1, 1, False, r_max)


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
