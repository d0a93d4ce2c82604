"""Reports from fake but schema-valid run records, checked against sums done here by hand."""

import math
import os
import shutil
import statistics
import subprocess
import sys

import pandas as pd
import pytest

from dylora.errors import ConfigError
from dylora.lab import report
from dylora.records import MetricRow, mark_done, run_dir_for, write_config, write_env, write_metrics

EXPERIMENT = "glue_small"
TASKS = ("mnli", "sst2", "mrpc", "cola")
METHODS = ("lora", "dylora", "dylora_frozen")
VARIANTS = ("dylora_geometric", "dylora_frozen_geometric", "dylora_sum")  # the ablations' methods
SEEDS = (0, 1, 2)
R_MAX = 8
# (split, metric) pairs each task logs, as the trainer would.
LOGGED = {
    "mnli": [("validation_matched", "accuracy"), ("validation_mismatched", "accuracy")],
    "sst2": [("validation", "accuracy")],
    "mrpc": [("validation", "accuracy"), ("validation", "f1")],
    "cola": [("validation", "matthews_correlation")],
    **{t: [("validation", "accuracy")] for t in ("qnli", "qqp", "rte")},
    "stsb": [("validation", "pearson"), ("validation", "spearman")],
}
UNFINISHED = ("sst2", "dylora_frozen", 2)  # metrics written, no DONE: must not count
ABSENT = ("sst2", "lora", 2)  # never started


def value(task, method, seed, rank, split, metric):
    """A deterministic, rank-dependent fraction; LoRA collapses at low rank as in the paper."""
    base = {"mnli": 0.80, "sst2": 0.90, "mrpc": 0.85, "cola": 0.55}.get(task, 0.75)
    shape = -0.3 / rank if method == "lora" else 0.02 * math.sin(rank)
    noise = seed * 0.007 + 0.004 * ((seed * rank + len(task)) % 3)  # spread varies by rank and task
    offset = ((*METHODS, *VARIANTS).index(method) * 0.003 + noise + (0.01 if "mis" in split else 0)
              + (metric == "f1") * 0.02)
    return base + shape + offset


def config(task, method, seed):
    return {
        "experiment": EXPERIMENT, "seed": seed, "preset": "cpu",
        "model": {"name": "tiny-roberta"}, "task": {"name": task},
        "method": {"name": method, "method": "lora" if method == "lora" else "dylora", "r_min": 1,
                   "r_max": R_MAX, "alpha": 16, "scaling": "rank", "distribution": "uniform",
                   "geometric_p": 0.15, "update_rule": "frozen" if method.startswith("dylora_frozen") else "all",
                   "masking": "gradient", "eval_ranks": None, "dropout": 0.0,
                   **({"loss": "sum"} if method == "dylora_sum" else {})},
        "trainer": {"epochs": 2, "max_steps": None, "lr": 4e-4, "batch_size": 32},
        "data": {"max_train_samples": 1000, "max_eval_samples": None},
    }


def write_run(out_dir, task, method, seed, done=True, ranks=range(1, R_MAX + 1), bump=0.0, trainer=None):
    cfg = config(task, method, seed)
    cfg["trainer"].update(trainer or {})  # as trainer.per_task leaves it in the task's record
    run_dir = run_dir_for(out_dir, cfg)
    write_config(run_dir, cfg)
    rows = [MetricRow(task, method, seed, r, split, metric, value(task, method, seed, r, split, metric) + bump)
            for r in ranks for split, metric in LOGGED[task]]
    write_metrics(run_dir, rows)
    if done:
        mark_done(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiments")
    for task in TASKS:
        for method in METHODS:
            for seed in SEEDS:
                key = (task, method, seed)
                if key == UNFINISHED:
                    write_run(out, *key, done=False, bump=0.3)  # would shift every mean it entered
                elif key != ABSENT:
                    write_run(out, *key)
    return out


@pytest.fixture(scope="module")
def results(runs, tmp_path_factory):
    dest = tmp_path_factory.mktemp("results")
    written = report.build_report(runs, dest)
    assert list(written) == [EXPERIMENT]
    return dest / EXPERIMENT


# ---------------------------------------------------------------------------- independent sums


def seeds_of(task, method):
    return [s for s in SEEDS if (task, method, s) not in (UNFINISHED, ABSENT)]


def table2_value(task, method, seed, rank):
    split, metric = {"mnli": ("validation_matched", "accuracy"), "mrpc": ("validation", "f1")}.get(
        task, LOGGED[task][0])
    return 100 * value(task, method, seed, rank, split, metric)


def table1_value(task, method, seed, rank):
    if task == "mnli":  # mean of matched and mismatched
        return 100 * (value(task, method, seed, rank, "validation_matched", "accuracy")
                      + value(task, method, seed, rank, "validation_mismatched", "accuracy")) / 2
    split, metric = LOGGED[task][0]  # MRPC: accuracy, listed first
    return 100 * value(task, method, seed, rank, split, metric)


def cell(csv, method, row, source, task):
    hit = csv[(csv["method"] == method) & (csv["row"].astype(str) == str(row))
              & (csv["source"] == source) & (csv["task"] == task)]
    assert len(hit) == 1, (method, row, source, task)
    return hit.iloc[0]


# ---------------------------------------------------------------------------- tables


def test_table2_is_mean_and_sample_std_over_finished_seeds(results):
    csv = pd.read_csv(results / "table2.csv")
    for task in TASKS:
        for method in METHODS:
            for rank in range(1, R_MAX + 1):
                per_seed = [table2_value(task, method, s, rank) for s in seeds_of(task, method)]
                got = cell(csv, method, rank, "ours", task)
                assert got["mean"] == pytest.approx(statistics.mean(per_seed))
                assert got["std"] == pytest.approx(statistics.stdev(per_seed))
                assert got["n_seeds"] == len(per_seed)


def test_table1_rows_average_ranks_then_seeds(results):
    csv = pd.read_csv(results / "table1.csv")
    for task in TASKS:
        for method in METHODS:
            seeds = seeds_of(task, method)
            over_ranks = [statistics.mean(table1_value(task, method, s, r) for r in range(1, R_MAX + 1))
                          for s in seeds]
            assert cell(csv, method, "avg 1..8", "ours", task)["mean"] == pytest.approx(statistics.mean(over_ranks))
            at_max = statistics.mean(table1_value(task, method, s, R_MAX) for s in seeds)
            assert cell(csv, method, "rank 8", "ours", task)["mean"] == pytest.approx(at_max)


def test_avg_column_is_the_mean_over_tasks(results):
    csv = pd.read_csv(results / "table2.csv")
    expected = statistics.mean(
        statistics.mean(table2_value(t, "dylora", s, 4) for s in seeds_of(t, "dylora")) for t in TASKS)
    assert cell(csv, "dylora", 4, "ours", "avg")["mean"] == pytest.approx(expected)


def test_best_rank_is_marked_in_csv_md_and_tex(results):
    csv = pd.read_csv(results / "table2.csv")
    means = {r: statistics.mean(table2_value("cola", "dylora", s, r) for s in SEEDS) for r in range(1, R_MAX + 1)}
    best = max(means, key=means.get)
    ours = csv[(csv["method"] == "dylora") & (csv["task"] == "cola") & (csv["source"] == "ours")]
    assert ours.loc[ours["best"], "row"].tolist() == [best]
    assert f"**{means[best]:.2f} ± " in (results / "table2.md").read_text()
    assert rf"\textbf{{{means[best]:.2f} $\pm$ " in (results / "table2.tex").read_text()
    assert not pd.read_csv(results / "table1.csv")["best"].any()  # Table 1 has no ranks to pick from


def test_paper_numbers_and_differences_where_the_paper_has_them(results):
    t2 = pd.read_csv(results / "table2.csv")
    ours = cell(t2, "dylora", 3, "ours", "cola")["mean"]
    paper_cell = cell(t2, "dylora", 3, "paper", "cola")
    assert (paper_cell["mean"], paper_cell["std"]) == (60.97, 2.01)  # EACL Table 2, CSV line 101
    assert cell(t2, "dylora", 3, "delta", "cola")["mean"] == pytest.approx(ours - 60.97)
    # Four tasks shown, not all eight: the paper's Avg is recomputed over the same four.
    printed = {"mnli": 86.76, "sst2": 94.36, "mrpc": 91.38, "cola": 59.51}  # DyLoRA rank 8
    assert cell(t2, "dylora", 8, "paper", "avg")["mean"] == pytest.approx(statistics.mean(printed.values()))

    t1 = pd.read_csv(results / "table1.csv")
    assert cell(t1, "dylora", "rank 8", "paper", "mrpc")["mean"] == 89.46  # workshop Table 1
    assert cell(t1, "lora", "avg 1..8", "paper", "cola")["mean"] == 32.07
    frozen = t1[t1["method"] == "dylora_frozen"]
    assert set(frozen["source"]) == {"ours"}  # the workshop paper has no frozen rows


def test_files_parse_and_md_has_one_line_per_row(results):
    for name, rows in (("table1", 3 * 2 + 2 * 2 * 2), ("table2", 3 * 8 * 3)):
        # table1: ours for 3 methods x 2 rows; paper and Δ for LoRA and DyLoRA x 2 rows.
        # table2: ours, paper and Δ for 3 methods x 8 ranks.
        csv = pd.read_csv(results / f"{name}.csv")
        assert list(csv.columns) == report.CSV_COLUMNS
        assert len(csv.groupby(["method", "row", "source"])) == rows
        md = (results / f"{name}.md").read_text()
        table = md.split("\n\n")[1].splitlines()
        assert len(table) == 2 + rows and all(line.count("|") == 3 + len(TASKS) + 2 for line in table)
        tex = (results / f"{name}.tex").read_text()
        assert r"\begin{tabular}" in tex and tex.count(r" \\") == 1 + rows


def test_footnote_names_settings_and_departures(results):
    md = (results / "table2.md").read_text()
    for expected in ("model tiny-roberta", "LoRA: r 1..8, alpha 16, scaling rank.", "p_B uniform", "update rule frozen",
                     "masking gradient", "seeds 0, 1, 2 (3)",
                     "Departure from the paper: model tiny-roberta (paper: roberta-base).",
                     "Departure from the paper: preset cpu (paper: paper).",
                     "Departure from the paper: data.max_train_samples 1000 caps training",
                     "Departure from the paper: trainer.epochs 2 (paper: 30).",
                     "Departure from the paper: 3 seed(s) (paper: 5).",
                     # sst2's LoRA seed 2 never started and its DyLoRA (Frozen) seed 2 did not finish
                     "Fewer seeds than 0, 1, 2: sst2 (LoRA 0, 1; DyLoRA (Frozen) 0, 1)."):
        assert expected in md, expected
    assert "method.r_max" not in md and "trainer.lr" not in md  # equal to the paper: no departure


def test_footnote_names_the_tasks_a_per_task_setting_holds_for(tmp_path):
    per_task = {"cola": {"lr": 5e-4, "epochs": 6}, "rte": {"epochs": 1}}
    for task in ("sst2", "mrpc", "cola", "rte"):
        for method in ("lora", "dylora"):
            write_run(tmp_path / "exp", task, method, 0, trainer=per_task.get(task))
    report.build_report(tmp_path / "exp", tmp_path / "res")
    md = (tmp_path / "res" / EXPERIMENT / "table1.md").read_text()
    for expected in ("epochs 2 (cola 6, rte 1);", "lr 0.0004 (cola 0.0005);", "batch size 32;",
                     "Departure from the paper (cola): trainer.lr 0.0005 (paper: 0.0004).",
                     "Departure from the paper (sst2, mrpc): trainer.epochs 2 (paper: 30).",
                     "Departure from the paper (rte): trainer.epochs 1 (paper: 30).",
                     "Departure from the paper: model tiny-roberta (paper: roberta-base)."):
        assert expected in md, expected
    assert "Fewer seeds" not in md  # every task and method at the one seed


def test_footnote_names_the_numerics_and_counts_older_records_as_fp32(tmp_path, results):
    # the module's runs have no precision keys (recorded before the options existed): they ran fp32
    assert "precision fp32 (base weights fp32, TF32 false);" in (results / "table1.md").read_text()
    for task in ("sst2", "mrpc"):
        for method in ("lora", "dylora"):
            write_run(tmp_path / "exp", task, method, 0, trainer={"precision": "bf16", "tf32": task == "mrpc"})
    report.build_report(tmp_path / "exp", tmp_path / "res")
    md = (tmp_path / "res" / EXPERIMENT / "table1.md").read_text()
    for expected in ("precision bf16 (base weights fp32, TF32 false (mrpc true));",
                     "Departure from the paper: trainer.precision bf16: forward passes under bf16 autocast "
                     "(paper: fp32).",
                     "Departure from the paper (mrpc): trainer.tf32 true: TF32 matmuls (paper: fp32 on V100s)."):
        assert expected in md, expected
    assert "model.dtype" not in md


def test_missing_and_unfinished_runs_are_listed(results):
    for name in ("table1.md", "table2.md", "summary.md"):
        section = (results / name).read_text().split("## Missing or unfinished runs")[1]
        assert "| sst2 | dylora_frozen | 2 | unfinished |" in section
        assert "| sst2 | lora | 2 | absent |" in section
        assert section.count("| sst2 |") == 2  # nothing else is reported missing


def test_the_seeds_a_task_and_method_lack_are_one_row(tmp_path):
    for seed in (0, 1, 2, 3):
        write_run(tmp_path / "exp", "cola", "dylora", seed)
    for seed in (0, 3):
        write_run(tmp_path / "exp", "cola", "lora", seed)
    write_run(tmp_path / "exp", "mrpc", "lora", 0)
    write_run(tmp_path / "exp", "rte", "lora", 0)
    write_run(tmp_path / "exp", "rte", "dylora", 0)
    missing = {(i.task, i.method): (i.seed, i.status, i.detail) for i in exp_issues(tmp_path / "exp")}
    assert missing == {  # the grid: seeds 0..3 of each task and method seen
        ("cola", "lora"): (None, "absent", "no run directory for seeds 1, 2"),
        ("mrpc", "lora"): (None, "absent", "no run directory for seeds 1, 2, 3"),
        ("mrpc", "dylora"): (None, "absent", "no run directory for seeds 0, 1, 2, 3"),
        ("rte", "lora"): (None, "absent", "no run directory for seeds 1, 2, 3"),
        ("rte", "dylora"): (None, "absent", "no run directory for seeds 1, 2, 3"),
    }
    write_run(tmp_path / "exp", "cola", "lora", 1)
    assert {(i.task, i.method): i.seed for i in exp_issues(tmp_path / "exp")}[("cola", "lora")] == 2  # one: its seed


def exp_issues(out_dir):
    return report.load_experiments(out_dir)[EXPERIMENT].issues


def test_rank_curves_are_written(results):
    for task in TASKS:
        png, svg = results / f"rank_curve_{task}.png", results / f"rank_curve_{task}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in svg.read_bytes()[:1000]


def test_a_band_is_drawn_within_the_metric_range():
    from dylora.lab.report.curves import band_limits
    from dylora.lab.report.intervals import Interval

    def band(*bounds):
        return [Interval((lo + hi) / 2, lo, hi, 3, 1.0, 0.5) for lo, hi in bounds]

    # a correlation lies in [-100, 100] and an accuracy in [0, 100]: a band is cut there, never moved
    assert band_limits(band((96.0, 102.0), (-103.0, 4.0)), "pearson") == ([96.0, -100.0], [100.0, 4.0])
    assert band_limits(band((-2.0, 3.0), (97.5, 101.0)), "accuracy") == ([0.0, 97.5], [3.0, 100.0])
    assert band_limits(band((-5.0, 140.0)), "ter") == ([-5.0], [140.0])  # no bound: unchanged
    assert band_limits([*band((1.0, 2.0)), None], "accuracy") is None  # a rank without an interval: no band


def test_summary_auc_and_min_rank_by_hand(results):
    summary = pd.read_csv(results / "summary.csv")
    row = summary[(summary["task"] == "mnli") & (summary["method"] == "lora")].iloc[0]
    curve = [statistics.mean(table2_value("mnli", "lora", s, r) for s in SEEDS) for r in range(1, R_MAX + 1)]
    area = sum((curve[i] + curve[i + 1]) / 2 for i in range(R_MAX - 1))  # unit steps between ranks
    assert row["auc"] == pytest.approx(area / (R_MAX - 1))
    best = max(curve)
    assert row["best"] == pytest.approx(best) and row["best_rank"] == curve.index(best) + 1
    assert row["min_rank_within_tol"] == next(r for r, v in enumerate(curve, 1) if v >= best - 1.0)
    paper = [34.6, 40.53, 58.95, 72.1, 78.61, 83.02, 85.44, 86.82]  # EACL Table 2, LoRA MNLI
    assert row["paper_auc"] == pytest.approx(sum((a + b) / 2 for a, b in zip(paper, paper[1:])) / 7)
    assert row["paper_min_rank_within_tol"] == 8  # rank 7 (85.44) is 1.38 below rank 8 (86.82)
    # on the log2 axis: trapezoids over log2 b, divided by log2(8 / 1) = 3
    logs = [math.log2(r) for r in range(1, R_MAX + 1)]
    area = sum((curve[i] + curve[i + 1]) / 2 * (logs[i + 1] - logs[i]) for i in range(R_MAX - 1))
    assert row["auc_log2"] == pytest.approx(area / 3)
    assert row["auc_log2"] < row["auc"]  # LoRA's low ranks are poor, and weigh more on the log2 axis


def finding_by_hand(task, dylora_bump=0.0, seeds=None):
    """(drop margin, LoRA avg, DyLoRA avg, gap at r_max) from value(), each method over its finished seeds
    (or over ``seeds``)."""
    curve = {m: [statistics.mean(table1_value(task, m, s, r) + 100 * (m == "dylora") * dylora_bump
                                 for s in (seeds or seeds_of(task, m))) for r in range(1, R_MAX + 1)]
             for m in ("lora", "dylora")}
    drops = {m: c[-1] - c[0] for m, c in curve.items()}
    return (drops["lora"] - drops["dylora"], statistics.mean(curve["lora"]), statistics.mean(curve["dylora"]),
            curve["dylora"][-1] - curve["lora"][-1])


def test_finding_flags_equal_sums_by_hand(runs, results, tmp_path):
    finding = pd.read_csv(results / "finding.csv").set_index("task")
    points = report.paper_finding(report.load_experiments(runs)[EXPERIMENT]).set_index("task")
    assert list(finding.index) == list(points.index) == list(TASKS)
    for task in TASKS:
        row, point = finding.loc[task], points.loc[task]
        margin, lora_avg, dylora_avg, gap = finding_by_hand(task)
        assert row["drop_margin"] == pytest.approx(margin) and row["gap_at_r_max"] == pytest.approx(gap)
        assert row["avg_gap"] == pytest.approx(dylora_avg - lora_avg)
        assert point["lora_avg"] == pytest.approx(lora_avg) and point["dylora_avg"] == pytest.approx(dylora_avg)
        holds = margin >= 3 and dylora_avg >= lora_avg and abs(gap) <= 2
        assert point["holds"] == holds and row["point_verdict"] == ("holds" if holds else "fails")
        assert row["verdict"] == "no interval"  # these records kept no predictions
        expected = []  # each seed's own verdict, where both methods finished it
        for seed in sorted(set(seeds_of(task, "lora")) & set(seeds_of(task, "dylora"))):
            margin, lora_avg, dylora_avg, gap = finding_by_hand(task, seeds=[seed])
            failed = [name for name, ok in (("drop", margin >= 3), ("avg", dylora_avg >= lora_avg),
                                            ("r_max", abs(gap) <= 2)) if not ok]
            expected.append(f"{seed} no ({', '.join(failed)})" if failed else f"{seed} yes")
        assert point["per_seed"] == "; ".join(expected)
    # value() puts DyLoRA more than 2 points above LoRA at rank 8: only the r_max check fails
    assert points["drop_ok"].all() and points["avg_ok"].all() and not points["r_max_ok"].any()
    assert "no interval: 4 (tasks)" in (results / "finding.md").read_text()

    # lower DyLoRA by that gap and the finding holds
    gap = finding_by_hand("cola")[3] / 100
    for seed in SEEDS:
        write_run(tmp_path, "cola", "lora", seed)
        write_run(tmp_path, "cola", "dylora", seed, bump=-gap)
    write_run(tmp_path, "rte", "dylora", 0)  # no LoRA run to compare with: named, not compared
    exp = report.load_experiments(tmp_path)[EXPERIMENT]
    report.write_finding(exp, tmp_path)
    assert ("Not compared (no finished LoRA and DyLoRA runs over the same ranks): rte."
            in (tmp_path / "finding.md").read_text())
    row = report.paper_finding(exp).iloc[0]
    margin, lora_avg, dylora_avg, gap_after = finding_by_hand("cola", dylora_bump=-gap)
    assert abs(gap_after) < 1e-9 and row["gap_at_r_max"] == pytest.approx(gap_after, abs=1e-9)
    assert row["drop_margin"] == pytest.approx(margin) and dylora_avg >= lora_avg and row["holds"]


def test_normalised_auc_and_min_rank_on_uneven_ranks():
    assert report.normalised_auc([4, 1, 2], [3, 1, 3]) == pytest.approx((2 * 1 + 3 * 2) / 3)
    assert report.normalised_auc([5], [7.0]) == 7.0
    assert report.normalised_auc([1, 2, 4, 8], [2.0] * 4, log2=True) == pytest.approx(2.0)  # flat at v gives v
    assert report.normalised_auc([2, 8], [1, 3], log2=True) == pytest.approx(2.0)
    assert report.normalised_auc([1, 2, 8], [0, 3, 3], log2=True) == pytest.approx((1.5 * 1 + 3 * 2) / 3)
    assert report.min_rank_within([1, 2, 3], [50, 59.5, 60], 1.0) == 2
    assert report.min_rank_within([1, 2, 3], [50, 59.5, 60], 0.0) == 3
    assert report.min_rank_within([1, 2, 3], [0.9, 0.45, 0.4], 0.1, lower_is_better=True) == 2


def test_svd_rows_are_a_method_of_their_own_in_every_table(tmp_path):
    for seed in SEEDS:
        for method in ("lora", "dylora"):
            run_dir = write_run(tmp_path, "mrpc", method, seed)
            rows = [MetricRow("mrpc", method, seed, r, split, metric,
                              value("mrpc", method, seed, R_MAX, split, metric) - 0.01 * (R_MAX - r), "svd")
                    for r in range(1, R_MAX + 1) for split, metric in LOGGED["mrpc"]]
            from dylora.records import read_metrics

            write_metrics(run_dir, read_metrics(run_dir) + rows)
            mark_done(run_dir)
    report.build_report(tmp_path, tmp_path / "out")
    out = tmp_path / "out" / EXPERIMENT
    table2 = pd.read_csv(out / "table2.csv")
    assert list(dict.fromkeys(table2["method"])) == ["lora", "lora+svd", "dylora", "dylora+svd"]
    svd = table2.query("method == 'lora+svd' and source == 'ours' and task == 'mrpc'").set_index("row")
    by_hand = statistics.mean(100 * (value("mrpc", "lora", s, R_MAX, "validation", "f1") - 0.01 * 7) for s in SEEDS)
    assert svd.loc[1, "mean"] == pytest.approx(by_hand)  # Table 2's MRPC metric is F1
    assert table2.query("method == 'lora+svd' and source == 'paper'").empty  # the paper has no such rows
    assert "| LoRA + SVD |" in (out / "table1.md").read_text()
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["method"]) == {"lora", "lora+svd", "dylora", "dylora+svd"}
    assert "rank b taken as the top-b singular triplets" in (out / "table1.md").read_text()
    # the SVD question, on Table 1's metric (MRPC accuracy), ranks 1..4, by hand
    low = range(1, R_MAX // 2 + 1)
    dylora = statistics.mean(table1_value("mrpc", "dylora", s, r) for s in SEEDS for r in low)
    svd_acc = statistics.mean(100 * (value("mrpc", "lora", s, R_MAX, "validation", "accuracy") - 0.01 * (R_MAX - r))
                              for s in SEEDS for r in low)
    finding = (out / "finding.md").read_text()
    assert f"MRPC (accuracy), mean over ranks 1..4: DyLoRA {dylora:.2f}, LoRA + SVD {svd_acc:.2f}" in finding
    assert f"difference {dylora - svd_acc:+.2f}" in finding


# ---------------------------------------------------------------------------- edge cases


def test_paper_avg_is_the_printed_one_when_all_glue_tasks_are_shown(tmp_path):
    for task in LOGGED:
        write_run(tmp_path, task, "dylora", 0)
    table = report.table2(report.load_experiments(tmp_path)[EXPERIMENT])
    paper_avg = table.cells.query("method == 'dylora' and row == '4' and source == 'paper' and task == 'avg'")
    assert paper_avg["mean"].tolist() == [85.53]  # as printed; its eight task values average 85.51
    ours = statistics.mean(table2_value(t, "dylora", 0, 4) for t in LOGGED)
    delta = table.cells.query("method == 'dylora' and row == '4' and source == 'delta' and task == 'avg'")
    assert delta["mean"].tolist() == [pytest.approx(ours - 85.53)]


def test_table4_shows_each_variant_at_rank_1_and_r_max_beside_the_papers_row_for_its_p_b(tmp_path, results):
    six = ("sst2", "mrpc", "cola", "qnli", "rte", "stsb")
    variants = ("dylora", "dylora_frozen", "dylora_geometric", "dylora_frozen_geometric")
    for task in six:
        for method in (*variants, "lora"):  # LoRA's runs are no row of Table 4
            for seed in (0, 1):
                write_run(tmp_path, task, method, seed)
    paths = report.build_report(tmp_path, tmp_path / "results")[EXPERIMENT]
    assert {p.name for p in paths} >= {"table4.md", "table4.csv", "table4.tex"}
    assert not (results / "table4.csv").exists()  # an experiment without the ablation's runs has none
    csv = pd.read_csv(tmp_path / "results" / EXPERIMENT / "table4.csv")
    assert set(csv["method"]) == set(variants) and set(csv["row"]) == {"rank 1", "rank 8"}
    for method in variants:
        for rank in (1, 8):
            ours = statistics.mean(table2_value(t, method, s, rank) for t in ("mrpc",) for s in (0, 1))
            assert cell(csv, method, f"rank {rank}", "ours", "mrpc")["mean"] == pytest.approx(ours)
    # the paper's numbers, told apart by p_B (EACL Table 4)
    assert cell(csv, "dylora", "rank 8", "paper", "mrpc")["mean"] == 91.38  # uniform
    assert cell(csv, "dylora_geometric", "rank 8", "paper", "mrpc")["mean"] == 90.84
    assert cell(csv, "dylora_frozen_geometric", "rank 1", "paper", "rte")["mean"] == 68.52
    assert cell(csv, "dylora_frozen", "rank 1", "paper", "avg")["mean"] == 81.61  # printed: all six shown
    ours_avg = statistics.mean(table2_value(t, "dylora_geometric", s, 1) for t in six for s in (0, 1))
    assert cell(csv, "dylora_geometric", "rank 1", "delta", "avg")["mean"] == pytest.approx(ours_avg - 83.42)
    md = (tmp_path / "results" / EXPERIMENT / "table4.md").read_text()
    assert "DyLoRA (Frozen), geometric p_B" in md and "Table 4" in md
    finding = (tmp_path / "results" / EXPERIMENT / "finding.md").read_text()
    ours = statistics.mean(table2_value(t, "dylora", s, 8) - table2_value(t, "dylora_frozen", s, 8)
                           for t in six for s in (0, 1))
    assert (f"Table 4, rank 8: DyLoRA (rows 1..b) scores above DyLoRA (Frozen) on the average, uniform p_B "
            f"(paper {84.47 - 83.31:+.2f} over its tasks shown): ours {ours:+.2f}: not resolved") in finding
    assert abs(ours) < 1.0


def test_table7_sets_the_summed_loss_beside_the_sampled_one_by_metric_and_training_time(tmp_path):
    seconds = {("dylora", 0): 600.0, ("dylora", 1): 640.0, ("dylora_sum", 0): 4000.0, ("dylora_sum", 1): 4400.0}
    for (method, seed), train_seconds in seconds.items():
        run_dir = write_run(tmp_path, "cola", method, seed)
        write_env(run_dir, {"train_seconds": train_seconds, "sweep_seconds": 9.0})
        mark_done(run_dir)  # DONE again: it covers env.json
    write_run(tmp_path, "cola", "lora", 0)  # no row of Table 7
    report.build_report(tmp_path, tmp_path / "results")
    folder = tmp_path / "results" / EXPERIMENT
    csv = pd.read_csv(folder / "table7.csv")
    assert set(csv["method"]) == {"dylora", "dylora_sum"}
    for method in ("dylora", "dylora_sum"):
        avg = statistics.mean(statistics.mean(table2_value("cola", method, s, r) for r in range(1, R_MAX + 1))
                              for s in (0, 1))
        assert cell(csv, method, "avg 1..8", "ours", "cola")["mean"] == pytest.approx(avg)
        assert cell(csv, method, "training s", "ours", "cola")["mean"] == pytest.approx(
            statistics.mean(seconds[(method, s)] for s in (0, 1)))
    assert cell(csv, "dylora_sum", "avg 1..8", "paper", "cola")["mean"] == 54.12
    assert cell(csv, "dylora", "training s", "paper", "cola")["mean"] == 645.82
    assert csv[(csv["row"] == "training s") & (csv["source"] == "delta")].empty  # other hardware: no Δ
    md = (folder / "table7.md").read_text()
    assert f"Training time, summed / sampled loss, CoLA: ours {4200 / 620:.2f}x; paper {1175.69 / 645.82:.2f}x." in md
    assert "DyLoRA, summed loss: r 1..8, alpha 16, scaling rank, p_B uniform, update rule all, masking gradient, " \
           "loss summed over ranks." in md
    gain = statistics.mean(table2_value("cola", "dylora_sum", s, r) - table2_value("cola", "dylora", s, r)
                           for r in range(1, R_MAX + 1) for s in (0, 1))
    finding = (folder / "finding.md").read_text()
    assert gain >= 1.0  # above one seed's resolution: a verdict
    assert (f"Table 7, CoLA: the summed loss scores higher on the average over ranks (paper +1.48 at 1.82x the "
            f"training time): ours {gain:+.2f} at {4200 / 620:.2f}x the training time: shown.") in finding


def test_table7_does_not_judge_the_loss_when_a_run_scores_one_value_at_every_rank(tmp_path):
    for method in ("dylora", "dylora_sum"):
        run_dir = write_run(tmp_path, "cola", method, 0)
        if method == "dylora":  # the adapter changes nothing: MCC 0 at every rank, as a run stuck on one class
            write_metrics(run_dir, [MetricRow("cola", method, 0, r, "validation", "matthews_correlation", 0.0)
                                    for r in range(1, R_MAX + 1)])
        write_env(run_dir, {"train_seconds": 100.0, "sweep_seconds": 9.0})
        mark_done(run_dir)
    report.build_report(tmp_path, tmp_path / "results")
    finding = (tmp_path / "results" / EXPERIMENT / "finding.md").read_text()
    line = next(x for x in finding.splitlines() if x.startswith("- Table 7, CoLA"))
    assert line.endswith(": not resolved (DyLoRA scores 0.00 at every rank: that run did not learn the task).")
    gain = statistics.mean(table2_value("cola", "dylora_sum", 0, r) for r in range(1, R_MAX + 1))
    assert f"ours {gain:+.2f}" in line and gain >= 1.0  # the gain alone would have read "shown"


def test_incomplete_superseded_corrupted_and_unreadable_runs_are_reported(tmp_path):
    write_run(tmp_path, "cola", "dylora", 0, ranks=[1, 2, 4])  # rank 3 and 5..8 never evaluated
    old = write_run(tmp_path, "cola", "lora", 0)
    newer = config("cola", "lora", 0) | {"preset": "code"}  # a re-run with another config
    newer_dir = run_dir_for(tmp_path, newer)
    write_config(newer_dir, newer)
    write_metrics(newer_dir, [MetricRow("cola", "lora", 0, r, "validation", "matthews_correlation", 0.5)
                              for r in range(1, R_MAX + 1)])
    os.utime(old / "DONE", (1, 1))  # make the first run unambiguously the older one
    mark_done(newer_dir)
    tampered = write_run(tmp_path, "cola", "dylora_frozen", 0)
    (tampered / "metrics.jsonl").write_text("")  # no longer matches the checksum in DONE
    unreadable = tmp_path / EXPERIMENT / "cola" / "lora" / "seed7-00000000"
    unreadable.mkdir()
    (unreadable / "config.yaml").write_text("[")
    exp = report.load_experiments(tmp_path)[EXPERIMENT]
    issues = {(i.method, i.status) for i in exp.issues + report.scores(exp, "table2")[1]}
    assert issues == {("dylora", "incomplete"), ("lora", "superseded"), ("dylora_frozen", "corrupted"),
                      ("?", "unreadable")}
    assert [r.path for r in exp.used if r.method == "lora"] == [newer_dir]


def test_unknown_experiment_names_the_known_ones(runs, tmp_path):
    with pytest.raises(ConfigError, match=f"experiment=nope .*{EXPERIMENT}"):
        report.build_report(runs, tmp_path, experiment="nope")


def test_empty_out_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no run records"):
        report.build_report(tmp_path, tmp_path / "results")


# ---------------------------------------------------------------------------- CLI


def cli(cwd, *overrides):
    return subprocess.run([sys.executable, "-m", "dylora.cli.report", *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})


def test_cli_end_to_end_with_relative_paths(runs, tmp_path):
    (tmp_path / "exps").symlink_to(runs)
    done = cli(tmp_path, "out_dir=exps", "results_dir=res", f"experiment={EXPERIMENT}")
    assert done.returncode == 0, done.stderr
    assert f"{EXPERIMENT}: wrote" in done.stdout and "table2.md" in done.stdout
    assert "the paper's finding, 4 task(s): no interval on mnli, sst2, mrpc, cola" in done.stdout
    assert (tmp_path / "res" / EXPERIMENT / "summary.csv").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exps", "res"]  # Hydra left nothing behind
    # the runs it could not use are on the terminal too; a partial grid is not an error
    assert "  unfinished: sst2 dylora_frozen seed 2: " in done.stderr
    assert "  absent: sst2 lora seed 2: no run directory for this combination" in done.stderr


def test_every_file_regenerates_byte_identical_in_another_process(runs, tmp_path):
    for name in ("a", "b"):
        done = cli(tmp_path, f"out_dir={runs}", f"results_dir={name}", f"experiment={EXPERIMENT}")
        assert done.returncode == 0, done.stderr
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert {p.suffix for p in files} == {".md", ".csv", ".tex", ".png", ".svg"}
    different = [str(p) for p in files if (tmp_path / "a" / p).read_bytes() != (tmp_path / "b" / p).read_bytes()]
    assert not different


def test_cli_exits_1_on_a_corrupted_record_and_names_it(runs, tmp_path):
    shutil.copytree(runs, tmp_path / "exps")
    damaged = next(p for p in (tmp_path / "exps").rglob("metrics.jsonl") if "/mrpc/lora/" in str(p))
    damaged.write_text(damaged.read_text()[:40])
    done = cli(tmp_path, "out_dir=exps", "results_dir=res", f"experiment={EXPERIMENT}")
    assert done.returncode == 1
    assert f"  corrupted: mrpc lora seed {damaged.parent.name[4:].split('-')[0]}: " in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "dylora-report: error: 1 corrupted run record(s), left out of the tables (listed above); "
        "delete each and run it again")
    assert (tmp_path / "res" / EXPERIMENT / "table1.md").exists()  # the tables are still written


def test_cli_error_is_one_line_without_traceback(tmp_path):
    done = cli(tmp_path, "out_dir=missing")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"dylora-report: error: out_dir={tmp_path / 'missing'} is not a directory; "
        "pass out_dir=DIR holding the run records"]


# ---------------------------------------------------------------------------- NLG (EACL Tables 6 and 9)

NLG_SPLITS = {"e2e": ["test"], "dart": ["test"], "webnlg": ["test_all", "test_seen", "test_unseen"]}


def nlg_value(task, metric, method, seed, rank):
    """As dylora.metrics.nlg returns them: E2E BLEU/METEOR/ROUGE-L and METEOR in 0..1, DART/WebNLG BLEU 0..100."""
    base = {"bleu": 0.6 if task == "e2e" else 45.0, "nist": 8.0, "meteor": 0.4, "rouge_l": 0.65, "cider": 2.0,
            "ter": 0.5}[metric]
    return base + (-0.01 if metric == "ter" else 0.01) * rank + 0.001 * seed + (method == "lora") * 0.002


def write_nlg_run(out_dir, task, method, seed):
    cfg = {**config(task, method, seed), "experiment": "nlg"}
    cfg["method"] = {**cfg["method"], "r_max": 4, "alpha": 32}
    run_dir = run_dir_for(out_dir, cfg)
    write_config(run_dir, cfg)
    metrics = ("bleu", "nist", "meteor", "rouge_l", "cider") if task == "e2e" else ("bleu", "meteor", "ter")
    write_metrics(run_dir, [MetricRow(task, method, seed, r, split, m, nlg_value(task, m, method, seed, r))
                            for r in range(1, 5) for split in NLG_SPLITS[task] for m in metrics])
    mark_done(run_dir)


def test_nlg_tables_scale_each_metric_per_task_beside_the_paper(tmp_path):
    for task in NLG_SPLITS:
        for method in ("lora", "dylora"):
            for seed in (10, 42):
                write_nlg_run(tmp_path / "exp", task, method, seed)
    report.build_report(tmp_path / "exp", tmp_path / "res")
    res = tmp_path / "res" / "nlg"

    def nlg_cell(csv, method, rank, source, task, split, metric):
        hit = csv[(csv["method"] == method) & (csv["row"] == rank) & (csv["source"] == source) & (csv["task"] == task)
                  & (csv["split"] == split) & (csv["metric"] == metric)]
        assert len(hit) == 1, (method, rank, source, task, split, metric)
        return hit.iloc[0]

    def mean(task, metric, method, rank, scale):
        return scale * statistics.mean(nlg_value(task, metric, method, s, rank) for s in (10, 42))

    t6, t9 = pd.read_csv(res / "table6.csv"), pd.read_csv(res / "table9.csv")
    assert (nlg_cell(t6, "dylora", 2, "ours", "e2e", "test", "bleu")["mean"]
            == pytest.approx(mean("e2e", "bleu", "dylora", 2, 100)))
    assert (nlg_cell(t6, "dylora", 2, "ours", "e2e", "test", "nist")["mean"]
            == pytest.approx(mean("e2e", "nist", "dylora", 2, 1)))
    assert nlg_cell(t6, "dylora", 1, "paper", "e2e", "test", "bleu")["mean"] == 68.86  # EACL Table 6, printed x100
    ours = nlg_cell(t6, "lora", 1, "ours", "e2e", "test", "rouge_l")["mean"]
    assert nlg_cell(t6, "lora", 1, "delta", "e2e", "test", "rouge_l")["mean"] == pytest.approx(ours - 18.79)
    dart_bleu = nlg_cell(t9, "lora", 1, "ours", "dart", "test", "bleu")["mean"]
    assert dart_bleu == pytest.approx(mean("dart", "bleu", "lora", 1, 1))  # already 0..100: not x100
    assert nlg_cell(t9, "lora", 1, "paper", "dart", "test", "bleu")["mean"] == 0.71
    assert nlg_cell(t9, "dylora", 3, "ours", "webnlg", "test_seen", "ter")["mean"] == pytest.approx(
        mean("webnlg", "ter", "dylora", 3, 1))
    assert set(t9.loc[t9["split"] == "test_seen", "source"]) == {"ours"}  # the paper has no seen/unseen rows
    best_ter = t9[(t9["source"] == "ours") & (t9["metric"] == "ter") & t9["best"]]
    assert set(best_ter["row"]) == {4}  # TER falls with rank here: lower is better
    t2 = pd.read_csv(res / "table2.csv")
    assert cell(t2, "dylora", 2, "ours", "webnlg")["mean"] == pytest.approx(mean("webnlg", "bleu", "dylora", 2, 1))
    assert (res / "rank_curves_table6.png").read_bytes()[:4] == b"\x89PNG"
    assert "| Method | Row | Source | E2E BLEU | E2E NIST |" in (res / "table6.md").read_text()
