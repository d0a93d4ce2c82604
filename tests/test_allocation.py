"""Per-module ranks under a budget: the profile, the greedy allocation and dylora-allocate end to end."""

from __future__ import annotations

import csv
import itertools
import json

import pytest
import torch

from dylora import AdapterConfig, adapter_layers, add_adapters, merged, set_rank
from dylora.allocation import Profile, allocate, budget_of, parameters, profile, unit_costs
from dylora.cli import allocate as allocate_cli
from dylora.cli.compose import compose_spec
from dylora.errors import ConfigError
from dylora.runner import execute
from helpers import tiny_overrides
from test_adapters import R_MAX, inputs, logits, randomize, tiny_gpt2, tiny_roberta


def test_a_rank_costs_a_row_of_a_and_a_column_of_b_per_output_slice():
    roberta, gpt2 = tiny_roberta(), tiny_gpt2()
    add_adapters(roberta, AdapterConfig(r_max=R_MAX))
    add_adapters(gpt2, AdapterConfig(r_max=R_MAX))
    assert set(unit_costs(roberta).values()) == {16 + 16}  # query/value: d_in + d_out
    assert set(unit_costs(gpt2).values()) == {2 * (16 + 16)}  # c_attn: the q and v blocks, each d_in + d
    counted = sum(layer.lora_A.numel() + layer.lora_B.numel() for _, layer in adapter_layers(roberta))
    assert parameters(dict.fromkeys(unit_costs(roberta), R_MAX), unit_costs(roberta)) == counted


def test_the_profile_is_each_module_alone_at_each_rank_with_the_rest_at_r_max():
    model = tiny_roberta()
    add_adapters(model, AdapterConfig(r_max=R_MAX, r_min=2))
    randomize(model)
    ids = inputs()

    def loss_at():
        return float(logits(model, ids).square().mean())

    found = profile(model, loss_at)
    names = [n for n, _ in adapter_layers(model)]
    assert found.evaluations == 1 + len(names) * (R_MAX - 2)
    for name in names:
        assert sorted(found.loss[name]) == [2, 3, 4]  # r_min..r_max
        for b in (2, 3):
            set_rank(model, {**dict.fromkeys(names, R_MAX), name: b})  # unmerged, by hand
            assert found.loss[name][b] == pytest.approx(float(logits(model, ids).square().mean()), rel=1e-5)
    set_rank(model, R_MAX)
    assert found.at_r_max == pytest.approx(loss_at(), rel=1e-6)


def test_the_allocation_is_the_best_the_profile_allows_within_the_budget():
    costs = {"a": 10, "b": 20, "c": 10}
    found = Profile(1.0, {"a": {1: 5.0, 2: 3.0, 3: 2.9, 4: 2.8}, "b": {1: 5.0, 2: 4.9, 3: 4.8, 4: 1.0},
                          "c": {1: 2.0, 2: 1.0, 3: 1.5, 4: 0.9}}, 0, 0.0)
    assert allocate(found, costs, 80) == {"a": 4, "b": 1, "c": 2}  # b's jump at 4 does not fit
    # 110 buys b's jump, although a's first step buys more per parameter (a greedy step-up misses it)
    assert allocate(found, costs, 110) == {"a": 2, "b": 4, "c": 1}
    for budget in range(40, 170, 5):  # by brute force over every allocation within the budget
        feasible = [dict(zip(costs, r)) for r in itertools.product(range(1, 5), repeat=3)
                    if parameters(dict(zip(costs, r)), costs) <= budget]
        best = min(sum(found.loss[m][b] for m, b in r.items()) for r in feasible)
        ranks = allocate(found, costs, budget)
        assert parameters(ranks, costs) <= budget
        assert sum(found.loss[m][b] for m, b in ranks.items()) == pytest.approx(best)
    assert allocate(found, costs, 160) == {"a": 4, "b": 4, "c": 4}
    with pytest.raises(ConfigError, match="below every module at r_min=1"):
        allocate(found, costs, 39)
    assert budget_of(2, costs) == 80


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory, glue_dir):
    out = tmp_path_factory.mktemp("runs")
    spec = compose_spec(tiny_overrides("task=mrpc", f"data.glue_dir={glue_dir}", f"out_dir={out}", "method.r_max=3",
                                       "data.max_train_samples=40", "data.selection_rows=12", "trainer.max_steps=6"))
    return execute(spec, progress=False), spec


def test_selection_rows_are_held_out_of_training(held_out_run):
    from dataclasses import replace

    from dylora.models import load_model, load_tokenizer
    from dylora.tasks.registry import build_task, num_labels

    _, spec = held_out_run
    tokenizer = load_tokenizer(spec.model)
    base = load_model(spec.model, tokenizer, num_labels(spec))
    data = build_task(spec, base, tokenizer, "cpu")
    every = build_task(replace(spec, data=replace(spec.data, selection_rows=None)), base, tokenizer, "cpu")
    assert len(every.train) == 40 and every.selection is None
    assert data.train == every.train[:28] and data.selection == every.train[28:]  # the last 12 rows, not trained on
    with pytest.raises(ConfigError, match="data.selection_rows=40 holds out every one of the 40 training rows"):
        build_task(replace(spec, data=replace(spec.data, selection_rows=40)), base, tokenizer, "cpu")


def test_dylora_allocate_writes_the_budget_curve_and_its_uniform_points_are_the_rank_sweep(held_out_run, tmp_path):
    run_dir, spec = held_out_run
    out = tmp_path / "alloc"
    allocate_cli.main([str(run_dir), "--out", str(out), "--export"])
    summary = json.loads((out / "allocation.json").read_text())
    names = list(summary["profile"]["loss"])
    assert summary["search"]["evaluations"] == 1 + len(names) * 2 and summary["search"]["rows"] == 12
    assert "held out (data.selection_rows)" in summary["search"]["selection"]
    swept = {m["rank"]: m["value"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if m["metric"] == "f1"}  # Table 2's MRPC metric
    for point in summary["budgets"]:
        b = point["uniform_rank"]
        assert point["budget"] == f"avg{b}" and point["uniform"] == pytest.approx(swept[b])  # the run's own sweep
        assert point["allocated_parameters"] <= point["budget_parameters"]
    rows = list(csv.DictReader((out / "budget.csv").open()))
    assert [r["budget"] for r in rows] == ["avg1", "avg2", "avg3"]
    assert (out / "budget_curve.png").stat().st_size > 0 and "| avg2 |" in (out / "budget.md").read_text()
    assert {p.name for p in out.glob("peft_*")} == {"peft_avg1", "peft_avg2", "peft_avg3"}


def test_an_exported_allocation_loads_in_peft_with_the_outputs_we_evaluated(held_out_run, tmp_path):
    from peft import PeftModel

    from dylora.models import load_model, load_tokenizer
    from dylora.runner import load_finished
    from dylora.tasks.registry import num_labels

    run_dir, spec = held_out_run
    out = tmp_path / "alloc"
    allocate_cli.main([str(run_dir), "--out", str(out), "--budget", "2", "--export"])
    ranks = json.loads((out / "allocation.json").read_text())["budgets"][0]["ranks"]
    model, data = load_finished(spec, run_dir, torch.device("cpu"))
    model.eval()
    batch = data.collate(data.selection[:4])
    batch.pop("labels")
    with merged(model, ranks), torch.no_grad():
        expected = model(**batch).logits
    tokenizer = load_tokenizer(spec.model)
    torch.manual_seed(spec.seed)
    peft_model = PeftModel.from_pretrained(load_model(spec.model, tokenizer, num_labels(spec)), str(out / "peft_avg2"))
    with torch.no_grad():
        torch.testing.assert_close(peft_model.eval()(**batch).logits, expected, rtol=1e-4, atol=1e-5)


def test_bad_selections_and_budgets_are_one_line_errors(glue_dir, tmp_path, capsys):
    run_dir = execute(compose_spec(tiny_overrides("task=mrpc", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path}")),
                      progress=False)
    cases = [([], "trained without data.selection_rows, so no rows were held out: name training rows with"),
             (["--selection", "validation:0:8"], "must be train:START:END (rows of the training split; never the dev"),
             (["--selection", "train:0:8", "--budget", "two"], "--budget 'two' is not a list of average ranks"),
             (["--selection", "train:0:8", "--budget", "params:10"], "below every module at r_min=1"),
             # where the outputs go: never up out of the folder given, never into a run record, never over a file
             (["--out", str(tmp_path / "a" / ".." / ".." / "escape")], "has a '..' component: name the folder"),
             (["--out", str(run_dir / "alloc")], f"is inside the run record {run_dir}, which must stay as it was"),
             (["--out", str(tmp_path / "file")], "is a file, not a folder"),
             # a model configured otherwise than the run: the module and both shapes, not torch's RuntimeError
             (["model.tiny.hidden_size=64"], "adapter.safetensors does not fit this model: module "
              "roberta.encoder.layer.0.attention.self.query has lora_A of shape [1, 2, 64] here but [1, 2, 32] in "
              "the adapter")]
    (tmp_path / "file").write_text("")
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            allocate_cli.main([str(run_dir), "--out", str(tmp_path / "a"), *extra])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        said = [line for line in err.splitlines() if line.startswith("dylora-allocate:")]
        assert len(said) == 1 and message in said[0] and "Traceback" not in err, err
    assert not (run_dir / "alloc").exists() and not (tmp_path.parent / "escape").exists()


def test_the_default_output_folder_is_named_after_the_run_folder(tmp_path, monkeypatch):
    from pathlib import Path

    from dylora.lab.allocate import default_out

    run = tmp_path / "exp" / "seed1-0123abcd"
    run.mkdir(parents=True)
    assert default_out(run) == default_out(run / ".") == Path("allocations") / "seed1-0123abcd"
    monkeypatch.chdir(run)
    assert default_out(Path("..")) == Path("allocations") / "exp"  # the name, never the path climbing out
