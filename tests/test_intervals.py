"""Intervals of the finding: the resampled metrics equal scikit-learn's and scipy's on the resampled rows,
the interval covers a simulated truth as often as it says, known differences are recovered, and verdicts
and the seeds still needed follow their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from dylora import records
from dylora.lab.report import intervals
from dylora.lab.report.evidence import task_evidence
from dylora.lab.report.experiments import load_experiments
from dylora.lab.report.finding import write_finding
from dylora.lab.report.intervals import Interval, resample_counts, seeds_needed, verdict, weighted_metric

REFERENCE = {
    "accuracy": accuracy_score,
    "f1": lambda y, p: f1_score(y, p, zero_division=0.0),
    "matthews_correlation": matthews_corrcoef,
    "pearson": lambda y, p: pearsonr(y, p).statistic,
}


@pytest.mark.parametrize("metric", sorted(REFERENCE))
def test_a_resampled_metric_is_the_metric_of_the_resampled_rows(metric):
    rng = np.random.default_rng(1)
    n = 97
    if metric == "pearson":
        labels = rng.uniform(0, 5, n)
        predictions = labels + rng.normal(0, 1.5, n)
    else:
        labels = rng.integers(0, 2, n)
        predictions = np.where(rng.uniform(size=n) < 0.7, labels, 1 - labels)
    counts = resample_counts(n, resamples=25, seed=3)
    got = weighted_metric(metric, predictions, labels, counts)
    for row, value in zip(counts.astype(int), got):
        take = np.repeat(np.arange(n), row)
        assert value == pytest.approx(REFERENCE[metric](labels[take], predictions[take]), abs=1e-12)
    # the whole dev set is the counts of one
    assert weighted_metric(metric, predictions, labels, np.ones(n))[0] == pytest.approx(
        REFERENCE[metric](labels, predictions), abs=1e-12)


def test_undefined_metrics_are_zero_as_the_project_scores_them():
    labels, constant = np.array([0, 1, 1, 0]), np.zeros(4)
    assert weighted_metric("matthews_correlation", constant, labels, np.ones(4))[0] == 0.0
    assert weighted_metric("pearson", constant, labels.astype(float), np.ones(4))[0] == 0.0
    assert weighted_metric("f1", constant, constant, np.ones(4))[0] == 0.0


def test_resamples_are_fixed_by_their_seed_and_keep_the_row_count():
    a, b = resample_counts(50, 10), resample_counts(50, 10)
    assert np.array_equal(a, b) and (a.sum(axis=1) == 50).all()
    assert not np.array_equal(a, resample_counts(50, 10, seed=1))


# ---------------------------------------------------------------------------- coverage


def _coverage(n_seeds: int, n_rows: int, seed_sd: float, trials: int = 1000, resamples: int = 400) -> float:
    """Share of trials whose 90 % interval of DyLoRA's minus LoRA's accuracy covers the true difference.

    Each trial draws dev rows from a population (row i's difficulty u_i ~ U(0, 1)) and, per method and seed,
    a trained model's ability theta = theta_method + seed_sd * N(0, 1) (training noise); a model is right on
    the rows easier than its ability. The truth is theta_dylora - theta_lora."""
    rng = np.random.default_rng(12345)
    truth = 0.05
    counts = resample_counts(n_rows, resamples, seed=7)
    covered = 0
    for _ in range(trials):
        u = rng.uniform(size=n_rows)
        theta = {m: base + seed_sd * rng.standard_normal(n_seeds) for m, base in (("lora", 0.70), ("dylora", 0.75))}
        right = {m: (u[None, :] < theta[m][:, None]).astype(float) for m in theta}  # seeds x rows
        per_seed = right["dylora"].mean(axis=1) - right["lora"].mean(axis=1)
        boot = (right["dylora"] - right["lora"]) @ counts.T / n_rows  # seeds x resamples
        interval = Interval.of(per_seed, boot.mean(axis=0))
        covered += interval.lo <= truth <= interval.hi
    return covered / trials


@pytest.mark.slow
@pytest.mark.parametrize("n_seeds", [3, 5])
@pytest.mark.parametrize("regime, n_rows, seed_sd", [("seeds dominate", 2000, 0.03), ("rows dominate", 300, 0.002)])
def test_the_90_percent_interval_covers_the_truth_in_87_to_93_percent_of_trials(n_seeds, regime, n_rows, seed_sd):
    coverage = _coverage(n_seeds, n_rows, seed_sd)
    assert 0.87 <= coverage <= 0.93, f"{regime}, {n_seeds} seeds: coverage {coverage:.3f}"


def test_a_constructed_difference_is_recovered():
    n = 400
    labels = np.random.default_rng(2).integers(0, 2, n)
    lora = labels.copy()
    lora[:60] = 1 - lora[:60]  # wrong on 60 rows
    dylora = labels.copy()
    dylora[:20] = 1 - dylora[:20]  # wrong on 20 of them: right on 40 rows more, 10 points
    counts = resample_counts(n)
    per_seed = np.array([accuracy_score(labels, dylora) - accuracy_score(labels, lora)] * 3) * 100
    boot = (weighted_metric("accuracy", dylora, labels, counts) - weighted_metric("accuracy", lora, labels, counts))
    interval = Interval.of(per_seed, boot * 100)
    assert interval.estimate == pytest.approx(10.0)
    # seeds agree: the rows alone; a difference on 40 of 400 rows has sd sqrt(0.1 * 0.9 / 400) (x 100)
    assert interval.se_rows == pytest.approx(100 * math.sqrt(0.1 * 0.9 / n), rel=0.1)
    assert interval.lo < 10.0 < interval.hi and interval.lo > 5


# ---------------------------------------------------------------------------- verdicts


def _interval(estimate, half, n=5, s_seed=1.0, se_rows=0.5):
    return Interval(estimate, estimate - half, estimate + half, n, s_seed, se_rows)


def test_verdicts_follow_the_thresholds():
    good = {"drop_margin": _interval(5, 1), "avg_gap": _interval(0, 0.5), "gap_at_r_max": _interval(0, 1)}
    assert verdict(good) == "holds"
    assert verdict({**good, "drop_margin": _interval(-3, 1)}) == "fails"  # wholly below 0
    assert verdict({**good, "gap_at_r_max": _interval(3, 0.5)}) == "fails"  # wholly above +2
    assert verdict({**good, "avg_gap": _interval(-1.5, 0.2)}) == "fails"  # wholly below -1
    assert verdict({**good, "gap_at_r_max": _interval(1.5, 1)}) == "undecided"  # spans +2
    assert verdict({**good, "drop_margin": _interval(0.5, 1)}) == "undecided"


def test_seeds_needed_is_the_first_count_whose_interval_clears_the_threshold():
    interval = Interval(1.0, -0.5, 2.5, 3, 2.0, 0.2)  # drop_margin: spans 0
    needed = int(seeds_needed({"drop_margin": interval}))
    for n in (needed - 1, needed):  # brute force, independently of seeds_needed's loop
        half = intervals.quantile(n, 2.0, 0.2) * math.sqrt(4.0 / n + 0.04)
        assert (half < 1.0) == (n == needed)
    # the rows alone span the threshold: no number of seeds decides it
    assert seeds_needed({"drop_margin": Interval(0.1, -0.5, 0.7, 3, 0.5, 0.3)}) == "dev set too small"
    assert seeds_needed({"drop_margin": Interval(1.0, -0.5, 2.5, 1, math.nan, 0.2)}).startswith("needs at least 2")


# ---------------------------------------------------------------------------- from run records


def _record(out, task, method, seed, right, labels, rank0_right):
    """A finished run record whose predictions are right on ``right[b]`` rows at rank b (and rank0_right at 0)."""
    cfg = {"experiment": "ev", "seed": seed, "preset": "none", "model": {"name": "tiny-roberta"},
           "task": {"name": task}, "method": {"name": method, "method": "lora" if method == "lora" else "dylora",
                                                "r_min": 1, "r_max": 4}, "trainer": {}, "data": {}}
    run_dir = records.run_dir_for(out, cfg)
    records.write_config(run_dir, cfg)
    predictions = {records.labels_key("validation"): labels}
    rows = []
    for b in range(0, 5):
        k = rank0_right if b == 0 else right[b]
        p = np.where(np.arange(len(labels)) < k, labels, 1 - labels)
        predictions[records.prediction_key("prefix", b, "validation")] = p
        rows.append(records.MetricRow(task, method, seed, b, "validation", "accuracy", accuracy_score(labels, p)))
    records.write_metrics(run_dir, rows)
    records.write_predictions(run_dir, predictions)
    records.mark_done(run_dir)


def test_the_finding_from_records_with_predictions(tmp_path):
    labels = np.random.default_rng(0).integers(0, 2, 300)
    for seed in (1, 2, 3):
        # rte: LoRA collapses at rank 1, DyLoRA does not; the adapter matters (rank 0 at chance)
        _record(tmp_path, "rte", "lora", seed, {1: 150, 2: 230, 3: 250, 4: 255 + seed}, labels, 150)
        _record(tmp_path, "rte", "dylora", seed, {1: 240 + seed, 2: 248, 3: 252, 4: 254}, labels, 150)
        # sst2: the adapter changes nothing: rank 0 scores as r_max
        _record(tmp_path, "sst2", "lora", seed, {b: 270 for b in range(1, 5)}, labels, 270)
        _record(tmp_path, "sst2", "dylora", seed, {b: 270 + seed for b in range(1, 5)}, labels, 270 + seed)
    exp = load_experiments(tmp_path)["ev"]
    evidence = task_evidence(exp)
    rte = evidence["rte"]
    drop = ((255 + 2 - 150) - (254 - 241 - 1)) / 300 * 100  # seeds' means: LoRA 257 - 150, DyLoRA 254 - 242
    assert rte.criteria["drop_margin"].estimate == pytest.approx(drop)
    assert rte.verdict == "holds" and rte.n_seeds == 3
    assert evidence["sst2"].verdict == "uninformative"
    write_finding(exp, tmp_path)
    csv = (tmp_path / "finding.csv").read_text().splitlines()
    assert csv[0].startswith("task,metric,r_min,r_max,n_seeds,verdict,drop_margin,drop_margin_lo,drop_margin_hi")
    md = (tmp_path / "finding.md").read_text()
    assert "| holds |" in md.replace("**", "") and "uninformative" in md
    # byte for byte again: fixed resampling
    first = (tmp_path / "finding.csv").read_bytes()
    write_finding(exp, tmp_path)
    assert (tmp_path / "finding.csv").read_bytes() == first
