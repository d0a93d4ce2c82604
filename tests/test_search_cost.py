"""The search-cost experiment: which runs it makes, its arithmetic, and one real tiny search."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from dylora.cli.compose import compose_config
from dylora.errors import ConfigError
from dylora.lab import search_cost
from dylora.lab.search_cost import RunCost, SearchCost
from helpers import REPO, run_cli, tiny_overrides

SEARCH = tiny_overrides("task=synthetic", "task.n_train=40", "task.n_eval=16", "task.seq_len=8", "method.r_max=3")


def test_search_specs_are_one_dylora_run_and_lora_at_every_rank():
    dylora, lora = search_cost.search_specs(compose_config(SEARCH))
    assert dylora.adapter.method == "dylora" and dylora.eval_ranks == [1, 2, 3]
    assert [(s.method_name, s.adapter.method, s.adapter.r_max, s.eval_ranks) for s in lora] == [
        ("lora", "lora", r, [r]) for r in (1, 2, 3)
    ]
    # same task, budget and seed: only the method differs
    assert all(s.trainer == dylora.trainer and s.task == dylora.task and s.seed == dylora.seed for s in lora)


def test_search_specs_refuse_a_lora_config():
    with pytest.raises(ConfigError, match="method=dylora"):
        search_cost.search_specs(compose_config([*SEARCH, "method=lora"]))


def _cost(lora_train, lora_sweep, dy_train, dy_sweep, lora_best, dy_best) -> SearchCost:
    lora = [RunCost("lora", r, t, s, r, v, f"l{r}")
            for r, (t, s, v) in enumerate(zip(lora_train, lora_sweep, lora_best), 1)]
    return SearchCost("synthetic", "validation", "accuracy", len(lora), lora,
                      RunCost("dylora", len(lora), dy_train, dy_sweep, 2, dy_best, "d"))


def test_summary_sums_the_runs_and_divides():
    s = _cost([1.0, 2.0, 4.0], [0.5, 0.5, 1.0], 3.0, 2.0, [0.7, 0.9, 0.8], 0.85).summary()
    assert s["lora_total_seconds"] == pytest.approx(9.0)
    assert s["lora_train_seconds"] == pytest.approx(7.0)
    assert s["dylora_total_seconds"] == pytest.approx(5.0)
    assert s["speedup"] == pytest.approx(9.0 / 5.0)
    assert s["train_speedup"] == pytest.approx(7.0 / 3.0)
    assert s["per_run_train_ratio"] == pytest.approx(3.0 / 4.0)  # against LoRA at r_max = 3
    assert (s["lora_best_rank"], s["lora_best_value"]) == (2, 0.9)
    assert (s["dylora_best_rank"], s["dylora_best_value"]) == (2, 0.85)
    assert s["lora_trainings"] == 3 and s["power_of_two_trainings"] == 2  # ranks 1, 2


def test_a_full_command_line_is_parsed_to_overrides_and_options():
    args = search_cost.parser().parse_intermixed_args([
        "experiment=search_cost_cpu", "--results", "out/tables", "trainer.lr=1e-3", "--split=validation",
        "--metric", "f1", "+extra=1",
    ])
    assert args.overrides == ["experiment=search_cost_cpu", "trainer.lr=1e-3", "+extra=1"]
    assert (args.results, args.split, args.metric) == ("out/tables", "validation", "f1")
    defaults = search_cost.parser().parse_intermixed_args(["a=1"])
    assert (defaults.overrides, defaults.results, defaults.split, defaults.metric) == (
        ["a=1"], search_cost.RESULTS_DIR, None, None)


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        search_cost.main(["--result=x"])  # no abbreviations: a misspelt --results is not taken for it
    assert exit_.value.code == 2
    assert "--result=x" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_tables_total_the_runs_measured_seconds(tmp_path):
    out, results = tmp_path / "runs", tmp_path / "tables"
    proc = run_cli([*SEARCH, f"out_dir={out}", f"--results={results}"], cwd=REPO, module="dylora.lab.search_cost")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # independently: every env.json under the run root, and the metrics each run wrote
    envs = {p.parent: json.loads(p.read_text()) for p in out.rglob("env.json")}
    assert len(envs) == 4
    lora = {d: e for d, e in envs.items() if d.parent.name == "lora"}
    dylora = [e for d, e in envs.items() if d.parent.name == "dylora"]
    summary = json.loads((results / "search_cost.json").read_text())["summary"]
    lora_total = sum(e["train_seconds"] + e["sweep_seconds"] for e in lora.values())
    assert summary["lora_total_seconds"] == pytest.approx(lora_total, rel=1e-12)
    assert summary["dylora_total_seconds"] == pytest.approx(dylora[0]["train_seconds"] + dylora[0]["sweep_seconds"],
                                                            rel=1e-12)
    assert summary["speedup"] == pytest.approx(lora_total / summary["dylora_total_seconds"])
    best = max(json.loads(line)["value"] for d in lora for line in (d / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["metric"] == "accuracy")
    assert summary["lora_best_value"] == pytest.approx(best)
    rows = list(csv.DictReader((results / "search_cost.csv").open()))
    assert [(r["method"], int(r["r_max"])) for r in rows] == [("lora", 1), ("lora", 2), ("lora", 3), ("dylora", 3)]
    assert f"{lora_total:.2f}" in (results / "search_cost.md").read_text()
    assert all(math.isfinite(float(r["seconds"])) and float(r["seconds"]) > 0 for r in rows)


@pytest.mark.slow
def test_cli_reports_a_bad_override_in_one_line(tmp_path):
    proc = run_cli([*SEARCH, "method.r_max=0", f"out_dir={tmp_path}"], cwd=REPO, module="dylora.lab.search_cost")
    assert proc.returncode == 1
    assert "r_max=0" in proc.stderr and "Traceback" not in proc.stderr


def test_the_lora_search_can_be_limited_to_the_papers_power_of_two_ranks():
    config = compose_config([*SEARCH, "method.r_max=4"])
    dylora, lora = search_cost.search_specs(config, [4, 1, 2])
    assert dylora.eval_ranks == [1, 2, 3, 4]
    assert [(s.adapter.r_max, s.eval_ranks) for s in lora] == [(1, [1]), (2, [2]), (4, [4])]
    cost = SearchCost("synthetic", "validation", "accuracy", 4,
                      [RunCost("lora", r, 1.0, 0.5, r, 0.5, f"l{r}") for r in (1, 2, 4)],
                      RunCost("dylora", 4, 2.0, 1.0, 3, 0.6, "d"))
    assert "LoRA at ranks 1, 2, 4 vs one DyLoRA run" in search_cost.markdown(cost)
    for bad in ([1, 2], [0, 4], [2, 8]):  # must reach r_max, and stay within 1..r_max
        with pytest.raises(ConfigError, match=r"LoRA's ranks must lie in 1..r_max=4 and include it"):
            search_cost.search_specs(config, bad)
    assert search_cost.parser().parse_intermixed_args(["--ranks", "1,2,4"]).ranks == [1, 2, 4]
    assert [s.adapter.r_max for s in search_cost.search_specs(config, search_cost.POW2)[1]] == [1, 2, 4]
    with pytest.raises(ConfigError, match="--ranks pow2 needs r_max to be a power of two; method.r_max=3"):
        search_cost.search_specs(compose_config(SEARCH), "pow2")
    with pytest.raises(SystemExit):
        search_cost.parser().parse_intermixed_args(["--ranks", "1,two"])


# ---------------------------------------------------------------------------- the paper's tables


def _paper_search_costs(tmp_path, dylora_mrpc: float) -> list[SearchCost]:
    """MRPC and CoLA searches at r_max 32 over the paper's power-of-two ranks; every run a record."""
    from dylora.records import write_config

    ranks = (1, 2, 4, 8, 16, 32)
    values = {"mrpc": dict(zip(ranks, (0.80, 0.82, 0.85, 0.84, 0.86, 0.87))),
              "cola": dict(zip(ranks, (0.40, 0.52, 0.50, 0.49, 0.47, 0.45)))}
    costs = []
    for task, metric in (("mrpc", "accuracy"), ("cola", "matthews_correlation")):
        def run_dir(name, method="lora"):
            path = tmp_path / task / name
            write_config(path, {"model": {"name": "minilm"}, "method": {"name": method}, "preset": "cpu", "seed": 42,
                                "trainer": {"precision": "bf16"}})
            return str(path)
        lora = [RunCost("lora", r, 100.0 + r, 5.0, r, values[task][r], run_dir(f"lora{r}")) for r in ranks]
        best = dylora_mrpc if task == "mrpc" else 0.51
        costs.append(SearchCost(task, "validation", metric, 32, lora, RunCost("dylora", 32, 110.0, 60.0, 5, best,
                                                                               run_dir("dylora", "dylora_frozen"))))
    return costs


def test_eacl_table1_marks_each_tasks_best_rank_beside_the_papers_row(tmp_path):
    from dylora.lab.search_tables import write_paper_tables

    paths = write_paper_tables(_paper_search_costs(tmp_path, 0.865), tmp_path / "out")
    assert {p.name for p in paths} == {f"{stem}.{ext}" for stem in ("table1_eacl", "table5")
                                       for ext in ("md", "csv", "tex")} | {"finding.md"}
    rows = list(csv.DictReader((tmp_path / "out" / "table1_eacl.csv").open()))
    ours = {(r["task"], int(r["rank"])): (float(r["value"]), r["best"] == "True")
            for r in rows if r["source"] == "ours"}
    assert ours[("mrpc", 4)] == (pytest.approx(85.0), False) and ours[("mrpc", 32)] == (pytest.approx(87.0), True)
    assert ours[("cola", 2)] == (pytest.approx(52.0), True)  # CoLA's best is a low rank: it differs by task
    theirs = {(r["task"], int(r["rank"])): float(r["value"]) for r in rows if r["source"] == "paper"}
    assert theirs[("mrpc", 32)] == 89.22 and theirs[("cola", 8)] == 63.81  # EACL Table 1 as printed
    finding = (tmp_path / "out" / "finding.md").read_text()
    assert "the best LoRA rank differs by task (paper: MRPC 32, CoLA 8): ours MRPC 32, CoLA 2: shown." in finding


def test_table5_sets_the_measured_cost_ratio_beside_the_papers_count_of_trainings(tmp_path):
    from dylora.lab.search_tables import write_paper_tables

    write_paper_tables(_paper_search_costs(tmp_path, 0.865), tmp_path / "near")
    rows = list(csv.DictReader((tmp_path / "near" / "table5.csv").open()))
    lora = next(r for r in rows if (r["task"], r["search"], r["source"]) == ("mrpc", "LoRA (Search)", "ours"))
    trained = sum(100.0 + r for r in (1, 2, 4, 8, 16, 32))
    assert float(lora["relative_cost"]) == pytest.approx(trained / 110.0)  # LoRA's training seconds over DyLoRA's
    assert (int(lora["trainings"]), int(lora["best_rank"]), float(lora["value"])) == (6, 32, pytest.approx(87.0))
    paper_rows = {r["search"]: r for r in rows if r["task"] == "mrpc" and r["source"] == "paper"}
    assert (float(paper_rows["LoRA (Search)"]["value"]), paper_rows["LoRA (Search)"]["best_rank"]) == (88.73, "16")
    assert (float(paper_rows["DyLoRA (Frozen)"]["value"]), float(paper_rows["DyLoRA (Frozen)"]["relative_cost"])) \
        == (89.71, 1.0)
    finding = (tmp_path / "near" / "finding.md").read_text()
    assert "EACL Table 5, MRPC r_max 32: DyLoRA's chosen rank scores within 1 point" in finding
    assert f"gap +0.50, ratio {trained / 110.0:.2f}x: shown." in finding
    dylora = next(r for r in rows if r["task"] == "mrpc" and r["source"] == "ours" and r["search"] != "LoRA (Search)")
    assert dylora["search"] == "DyLoRA (Frozen)"  # the run's own method, as the paper's row names it
    write_paper_tables(_paper_search_costs(tmp_path, 0.80), tmp_path / "far")  # DyLoRA 7 points short
    far = (tmp_path / "far" / "finding.md").read_text()
    assert "gap +7.00" in far and "not shown (DyLoRA trails the search's best by 7.00 points" in far
    assert "ratio is under" not in far  # the cost part holds: only the gap is named


def test_table5_names_every_part_of_the_claim_that_fails(tmp_path):
    from dylora.lab.search_tables import write_paper_tables

    costs = _paper_search_costs(tmp_path, 0.80)  # 7 points short, and made as dear as 6 LoRA trainings
    costs = [replace(c, dylora=replace(c.dylora, train_seconds=sum(r.train_seconds for r in c.lora))) for c in costs]
    write_paper_tables(costs, tmp_path / "out")
    mrpc = next(line for line in (tmp_path / "out" / "finding.md").read_text().splitlines() if "MRPC r_max" in line)
    assert "ratio 1.00x: not shown (DyLoRA trails the search's best by 7.00 points" in mrpc
    assert "the measured ratio is under 0.9 x 6 = 5.4" in mrpc


@pytest.mark.slow
def test_dylora_report_writes_a_search_experiments_tables_from_its_records(tmp_path):
    from dylora.lab.report import build_report, select_experiments

    out = tmp_path / "runs"
    overrides = [*SEARCH, "method=dylora_frozen", "method.r_max=2,4", "experiment=search_cost_cpu", f"out_dir={out}"]
    search_cost.run(overrides, tmp_path / "measured", ranks=search_cost.POW2, paper_tables=True)
    exp = select_experiments(out)["search_cost_cpu"]
    assert exp.is_search and not exp.issues  # LoRA at ranks 1, 2, 4 are three runs, none superseded
    assert len(exp.used) == 5  # + DyLoRA (Frozen) at r_max 2 and 4
    build_report(out, tmp_path / "reported")
    measured, reported = tmp_path / "measured", tmp_path / "reported" / "search_cost_cpu"
    written = sorted(p.name for p in reported.iterdir())
    assert written == sorted(p.name for p in measured.iterdir())
    assert "search_cost_synthetic_r2.csv" in written and "table5.md" in written
    for name in written:
        if name.startswith("search_cost_") and not name.endswith(".md"):  # they name the run folders
            continue
        assert (reported / name).read_bytes() == (measured / name).read_bytes(), name
    rows = list(csv.DictReader((reported / "search_cost_synthetic_r4.csv").open()))
    measured_rows = list(csv.DictReader((measured / "search_cost_synthetic_r4.csv").open()))
    assert [r["run_dir"] for r in rows] == [str(Path(r["run_dir"]).relative_to(out)) for r in measured_rows]
    assert [{**r, "run_dir": ""} for r in rows] == [{**r, "run_dir": ""} for r in measured_rows]


def test_a_search_reads_a_record_without_weights_and_picks_ranks_by_prefix_truncation_only(tmp_path):
    from dylora import records
    from dylora.records import MetricRow

    run = tmp_path / "run"
    records.write_config(run, {"method": {"name": "dylora"}})
    rows = [MetricRow("mrpc", "dylora", 42, rank, "validation", "f1", value, truncation)
            for rank, value, truncation in ((1, 0.70, "prefix"), (2, 0.75, "prefix"), (1, 0.90, "svd"))]
    records.write_metrics(run, rows)
    records.write_env(run, {"train_seconds": 10.0, "sweep_seconds": 2.0})
    (run / records.ADAPTER).write_bytes(b"weights")
    records.mark_done(run)
    (run / records.ADAPTER).unlink()  # as a record is committed: without its weights
    cost = search_cost.run_cost(run, "dylora", 2, "validation", "f1")
    assert (cost.best_rank, cost.best_value) == (2, 0.75)  # the higher SVD row at rank 1 is not the search's
