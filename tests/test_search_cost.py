"""The search-cost experiment: which runs it makes, its arithmetic, and one real tiny search."""

from __future__ import annotations

import csv
import json
import math

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
    with pytest.raises(SystemExit):
        search_cost.parser().parse_intermixed_args(["--ranks", "1,two"])
