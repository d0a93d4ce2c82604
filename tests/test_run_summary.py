"""dylora-run ends with the rank curve in short: per truncation, each metric at r_min, at r_max, its mean over
ranks 1..r_max, and the adapter off (rank 0), which the mean leaves out."""

from __future__ import annotations

import pytest

from dylora.cli.run import rank_summary
from dylora.records import MetricRow, read_metrics
from helpers import run_cli, tiny_overrides


def _rows() -> list[MetricRow]:
    rows = [MetricRow("mrpc", "dylora", 42, 0, "validation", m, v) for m, v in (("accuracy", 0.3), ("f1", 0.0))]
    for rank, accuracy in ((1, 0.6), (2, 0.7), (3, 0.8), (4, 0.9)):
        rows += [MetricRow("mrpc", "dylora", 42, rank, "validation", "accuracy", accuracy),
                 MetricRow("mrpc", "dylora", 42, rank, "validation", "f1", accuracy - 0.1)]
    rows += [MetricRow("mrpc", "dylora", 42, rank, "validation", "accuracy", 0.85, "svd") for rank in (2, 4)]
    return rows


def test_the_summary_gives_r_min_r_max_the_mean_of_ranks_1_to_r_max_and_the_adapter_off_apart():
    lines = rank_summary(_rows(), 2, 4, "RUN")
    assert lines[0] == "rank curve of mrpc dylora seed 42 (RUN):"
    header, *table = [line.split() for line in lines[1:]]
    assert " ".join(header) == ("truncation split metric rank 2 (r_min) rank 4 (r_max) mean over ranks 1..4 "
                                "adapter off (rank 0)")
    assert table == [
        ["prefix", "validation", "accuracy", "0.7000", "0.9000", "0.7500", "0.3000"],  # (0.6+0.7+0.8+0.9)/4: no 0.3
        ["prefix", "validation", "f1", "0.6000", "0.8000", "0.6500", "0.0000"],
        ["svd", "validation", "accuracy", "0.8500", "0.8500", "0.8500", "0.3000"],  # rank 0 is the same model
    ]
    lines = rank_summary([r for r in _rows() if r.rank != 3], 1, 4)  # a rank not evaluated: the mean says which
    assert "mean over ranks 1, 2, 4" in lines[1] and lines[2].split()[3:6] == ["0.6000", "0.9000", "0.7333"]
    no_zero = rank_summary([r for r in _rows() if r.rank != 0 and r.truncation == "prefix"], 1, 4)
    assert no_zero[2].split()[-1] == "-"
    assert rank_summary([], 1, 4, "RUN") == ["rank curve: no metrics in RUN"]


@pytest.mark.parametrize("again", [False, True])
def test_dylora_run_ends_with_the_summary_of_its_record(glue_dir, tmp_path, again):
    args = tiny_overrides("task=mrpc", f"data.glue_dir={glue_dir}", f"out_dir={tmp_path}",
                          "eval.truncation=[prefix,svd]")
    result = run_cli(args, cwd=tmp_path)
    if again:  # a finished run is skipped, and its summary printed all the same
        result = run_cli(args, cwd=tmp_path)
        assert "skip:" in result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    [run_dir] = tmp_path.glob("*/mrpc/dylora/seed0-*")
    rows = read_metrics(run_dir)
    expected = rank_summary(rows, 1, 2, run_dir)
    assert result.stdout.rstrip("\n").splitlines()[-len(expected):] == expected
    assert len(expected) == 2 + 2 * 2  # prefix and svd, accuracy and f1
    accuracy = {m.rank: m.value for m in rows if m.metric == "accuracy" and m.truncation == "prefix"}
    assert set(accuracy) == {0, 1, 2}
    assert expected[2].split()[3:] == [f"{accuracy[1]:.4f}", f"{accuracy[2]:.4f}",
                                       f"{(accuracy[1] + accuracy[2]) / 2:.4f}", f"{accuracy[0]:.4f}"]
