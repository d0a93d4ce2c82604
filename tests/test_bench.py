"""make bench on a tiny model, one repeat: every ratio is there, positive and finite, and the search
speed-up is what the search's own runs measured."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from dylora.errors import ConfigError
from dylora.lab.bench import Options, median_iqr, parse_options, parser
from helpers import REPO, run_cli, tiny_overrides

SEARCH = tiny_overrides("task=synthetic", "task.n_train=40", "task.n_eval=16", "task.seq_len=8", "method.r_max=2")
REAL = tiny_overrides("task=synthetic", "task.n_train=40", "task.n_eval=16", "task.seq_len=8",
                      "trainer.precision=bf16", "model.dtype=bf16", "trainer.fast_dropout=true")
KEYS = ("train_step_ratio", "peak_memory_ratio", "sweep_ratio", "search_speedup", "bf16_step_ratio",
        "train_step_ratio_bf16", "peak_memory_ratio_bf16", "fast_step_ratio", "train_step_ratio_fast",
        "sweep_ratio_fast", "candidate_base_bf16", "candidate_fast_dropout", "candidate_foreach", "candidate_fused",
        "mfu_fp32", "mfu_bf16", "mfu_fast", "mfu_sweep_bf16", "peak_gflops_fp32", "peak_gflops_bf16",
        "jobs_throughput_ratio", "real_run_ratio")


def test_median_iqr_matches_a_hand_computation():
    stats = median_iqr([4.0, 1.0, 3.0, 2.0, 100.0])
    assert stats["median"] == 3.0
    assert stats["iqr"] == pytest.approx(4.0 - 2.0)  # inclusive quartiles of 1, 2, 3, 4, 100
    assert median_iqr([5.0]) == {"median": 5.0, "iqr": 0.0, "n": 1}


def test_a_full_command_line_is_parsed_to_its_options():
    opts, child = parse_options([
        "--model=tiny", "--model-path=m", "--batch", "4", "--seq=32", "--r-max=4", "--repeats=3", "--steps", "2",
        "--eval-batches=5", "--out=x/b.json", "--device", "cpu", "--search=a=1", "--search", "b=2", "--child=peft",
        "--real=task=rte", "--real-steps=7", "--no-mpnet",
    ])
    assert opts == Options(model="tiny", model_path="m", batch=4, seq=32, r_max=4, repeats=3, steps=2, eval_batches=5,
                           out="x/b.json", device="cpu", search=["a=1", "b=2"], real=["task=rte"], real_steps=7,
                           mpnet=False)
    assert child == "peft"


def test_options_not_given_are_the_dataclass_defaults():
    assert parse_options([]) == (Options(), None)
    # both spellings of the two-word options, as before argparse
    assert (parse_options(["--r_max=3", "--eval_batches=2"])[0]
            == parse_options(["--r-max", "3", "--eval-batches", "2"])[0])
    assert parse_options(["--r_max=3"])[0].r_max == 3
    help_text = parser().format_help()
    assert "--r-max" in help_text and "--search" in help_text and "--child" not in help_text


@pytest.mark.parametrize("argv, named", [
    (["--batch=abc"], "'abc'"),  # not a whole number
    (["--bogus=1"], "--bogus"),  # unknown option
    (["--rep=3"], "--rep"),  # no abbreviations
    (["--model=gpt"], "'gpt'"),
])
def test_bad_options_are_a_usage_error_naming_the_value(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_options(argv)
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err


def test_options_are_checked():
    with pytest.raises(ConfigError, match="--repeats=0"):
        parse_options(["--repeats=0"])
    with pytest.raises(ConfigError, match="model"):
        Options(model="gpt")


@pytest.mark.slow
def test_bench_writes_every_ratio(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--model=tiny", "--batch=16", "--seq=128", "--r-max=2", "--repeats=1", f"--out={out}", "--real-steps=2",
            *[f"--search={o}" for o in SEARCH], *[f"--real={o}" for o in REAL]]
    proc = run_cli(args, cwd=REPO, module="dylora.lab.bench")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in KEYS:
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    assert result["r_max"] == 2 and result["model"] == "tiny" and result["device"]
    raw = result["raw"]
    # each ratio recomputed from the raw measurements it reports
    steps = raw["train_step_seconds"]
    assert result["train_step_ratio"] == pytest.approx(steps["dylora"][0] / steps["peft"][0])  # one repeat: one pair
    assert result["bf16_step_ratio"] == pytest.approx(steps["dylora_bf16"][0] / steps["dylora"][0])
    assert result["train_step_ratio_bf16"] == pytest.approx(steps["dylora_bf16"][0] / steps["peft_bf16"][0])
    assert result["fast_step_ratio"] == pytest.approx(steps["dylora_fast"][0] / steps["dylora_bf16"][0])
    assert result["candidate_foreach"] == pytest.approx(steps["dylora_bf16_foreach"][0] / steps["dylora_bf16"][0])
    # utilisation: the counted FLOPs over the step time over the measured peak
    assert result["mfu_fast"] == pytest.approx(
        raw["step_flops"] / steps["dylora_fast"][0] / (result["peak_gflops_bf16"] * 1e9))
    assert 0 < result["mfu_fp32"] < 1 and raw["step_flops"] > raw["eval_flops"] > 0
    real = raw["real_run_seconds"]
    assert len(real["before"]) == len(real["after"]) == 2  # ABBA
    assert result["real_run_ratio"] == pytest.approx(
        statistics.median(real["after"]) / statistics.median(real["before"]))
    assert set(result["pad_ratios"]) == {"seq100", "seq104", "seq112", "seq128"} and result["pad_ratios"]["seq100"] == 1
    assert set(result["eval_seconds_per_sequence"]) == {"batch32", "batch64", "batch128", "batch256"}
    mem = raw["peak_memory_bytes"]
    assert result["peak_memory_ratio"] == pytest.approx((mem["dylora"] - mem["none"]) / (mem["peft"] - mem["none"]))
    assert result["peak_memory_ratio_bf16"] == pytest.approx(
        (mem["dylora_bf16"] - mem["none_bf16"]) / (mem["peft_bf16"] - mem["none_bf16"]))
    sweeps = raw["sweep_seconds"]
    assert result["sweep_ratio"] == pytest.approx(
        (statistics.median(sweeps["sweep_rank1"]) + statistics.median(sweeps["sweep_rank2"]))
        / (2 * statistics.median(sweeps["plain"]))
    )
    runs = raw["search"]["runs"]
    lora = sum(r["train_seconds"] for r in runs if r["method"] == "lora")
    dylora = sum(r["train_seconds"] for r in runs if r["method"] == "dylora")
    assert [r["r_max"] for r in runs] == [1, 2, 2]
    assert result["search_speedup"] == pytest.approx(lora / dylora)
    assert "train_step_ratio" in proc.stdout and "bf16_step_ratio" in proc.stdout  # the printed table
    assert "model FLOPs utilisation" in proc.stdout and "job layout" in proc.stdout
