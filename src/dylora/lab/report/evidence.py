"""The finding's evidence: every criterion with its interval, from the runs' kept predictions.

Per task (Table 1's metric, in points), from the finished LoRA and DyLoRA runs whose records hold
``predictions.safetensors``, at their common seeds:

* ``drop_margin``: LoRA's drop from r_max to r_min minus DyLoRA's; ``avg_gap``: DyLoRA's average over
  ranks r_min..r_max minus LoRA's; ``gap_at_r_max``: DyLoRA minus LoRA at r_max. Each is computed per
  seed on the whole dev set, and gets its interval from ``intervals`` (seeds and rows);
* the verdict: ``uninformative`` when, for both methods, the mean score at r_max lies within the
  interval of the rank-0 score (the adapter off, the trained head on): the adapter does not change
  the score, so the task cannot test the finding; else holds / fails / undecided (``intervals.verdict``)
  and, for an undecided task, the seeds it would take;
* the rank curves' bands: the interval of each method's mean at each rank (rank 0 included);
* the SVD question: DyLoRA minus LoRA + SVD, averaged over ranks r_min..r_max/2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dylora import records
from dylora.lab.report.experiments import SVD, Experiment, metric_scale, task_order
from dylora.lab.report.intervals import Interval, resample_counts, resampled, seeds_needed, verdict
from dylora.lab.report.scoring import metric_spec, scores

CRITERIA = ("drop_margin", "avg_gap", "gap_at_r_max")


@dataclass
class TaskEvidence:
    task: str
    metric: str
    r_min: int
    r_max: int
    n_seeds: int  # the common seeds of LoRA and DyLoRA
    criteria: dict[str, Interval] = field(default_factory=dict)
    verdict: str = "no interval"
    seeds_needed: str = ""
    rank0: dict[str, Interval] = field(default_factory=dict)  # method -> the adapter-off score
    at_r_max: dict[str, float] = field(default_factory=dict)  # method -> the mean score at r_max
    curves: dict[tuple[str, int], Interval] = field(default_factory=dict)  # (method, rank) -> the mean score
    svd_gap: Interval | None = None  # DyLoRA - LoRA + SVD over ranks r_min..r_max/2


@dataclass
class _Scores:
    """One method's scores of one task at ``ranks``: on the whole dev set (seeds x ranks) and on each
    resample of its rows (resamples x seeds x ranks)."""

    ranks: list[int]
    whole: np.ndarray
    resampled: np.ndarray  # resamples x seeds x ranks


def task_evidence(exp: Experiment, table: str = "table1") -> dict[str, TaskEvidence]:
    """The evidence of every task with finished LoRA and DyLoRA runs over the same ranks, on ``table``'s
    metric; a task whose runs lack predictions gets its verdict "no interval"."""
    sc, _ = scores(exp, table)
    metrics = exp.metrics()
    out = {}
    for task in task_order(sc["task"].unique()):
        methods = set(sc.loc[sc["task"] == task, "method"])
        ranges = {exp.rank_range(task, m) for m in ("lora", "dylora")} if {"lora", "dylora"} <= methods else set()
        if len(ranges) != 1:
            continue
        r_min, r_max = ranges.pop()
        spec = metric_spec(task, table, metrics)
        common = sorted(set(exp.seeds(task, "lora")) & set(exp.seeds(task, "dylora")))
        evidence = TaskEvidence(task, spec.metric, r_min, r_max, len(common))
        ranks = [0, *range(r_min, r_max + 1)]
        rows = _Rows.of(exp, task, spec.splits)
        scored = {name: _scores(exp, task, name, ranks if SVD not in name else ranks[1:], spec.metric, rows, common)
                  for name in ("lora", "dylora", "lora" + SVD)} if rows else {}
        if scored.get("lora") is not None and scored.get("dylora") is not None:
            _fill(evidence, {k: v for k, v in scored.items() if v is not None})
        out[task] = evidence
    return out


def curve_bands(exp: Experiment, task: str, table: str = "table2") -> dict[tuple[str, int], Interval]:
    """(method, rank) -> the interval of the method's mean over its seeds at that rank (rank 0 for the
    prefix methods), for every method whose runs all kept predictions; {} when none did."""
    sc, _ = scores(exp, table)
    spec = metric_spec(task, table, exp.metrics())
    rows = _Rows.of(exp, task, spec.splits) if spec is not None else None
    if rows is None:
        return {}
    out = {}
    for name in sc.loc[sc["task"] == task, "method"].unique():
        r_min, r_max = exp.rank_range(task, name)
        ranks = [*([0] if SVD not in name else []), *range(r_min, r_max + 1)]
        scored = _scores(exp, task, name, ranks, spec.metric, rows, exp.seeds(task, name))
        if scored is not None:
            out |= {(name, b): Interval.of(scored.whole[:, i], scored.resampled[:, :, i].mean(axis=1))
                    for i, b in enumerate(scored.ranks)}
    return out


@dataclass
class _Rows:
    """A task's dev rows as every run of it saw them: labels per split and the bootstrap's draws of them."""

    splits: tuple[str, ...]
    labels: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    kept: dict[tuple[str, int], dict[str, np.ndarray]]  # (method, seed) -> its predictions

    @classmethod
    def of(cls, exp: Experiment, task: str, splits: tuple[str, ...]) -> "_Rows | None":
        """None when some run of the task kept no predictions, or the runs' labels differ (unpaired rows)."""
        runs = [r for r in exp.used if r.task == task]
        kept = {(r.method, r.seed): records.read_predictions(r.path) for r in runs}
        if not kept or any(not p for p in kept.values()):
            return None
        first = next(iter(kept.values()))
        labels = {s: first.get(records.labels_key(s)) for s in splits}
        if any(v is None or any(not np.array_equal(p.get(records.labels_key(s)), v) for p in kept.values())
               for s, v in labels.items()):
            return None
        return cls(splits, labels, {s: resample_counts(len(v)) for s, v in labels.items()}, kept)


def _scores(exp: Experiment, task: str, name: str, ranks: list[int], metric: str, rows: _Rows,
            seeds: list[int]) -> _Scores | None:
    """``name``'s scores (``<method>+svd``: its runs under the SVD truncation) at ``ranks`` for ``seeds``, in
    points, on the whole dev set and on each resample; None when a prediction is missing."""
    method, truncation = (name.removesuffix(SVD), "svd") if name.endswith(SVD) else (name, "prefix")
    arrays = [[[rows.kept.get((method, seed), {}).get(records.prediction_key(truncation, b, s)) for s in rows.splits]
               for b in ranks] for seed in seeds]
    if not seeds or any(a is None for seed in arrays for rank in seed for a in rank):
        return None
    scale = metric_scale(task, metric)

    def score(rank: list[np.ndarray], counts: dict[str, np.ndarray] | None) -> np.ndarray:
        return np.mean([resampled(metric, a, rows.labels[s], np.ones((1, len(a))) if counts is None else counts[s])
                        for a, s in zip(rank, rows.splits)], axis=0)

    whole = np.array([[score(rank, None)[0] for rank in seed] for seed in arrays]) * scale
    boot = np.array([[score(rank, rows.counts) for rank in seed] for seed in arrays]) * scale  # seeds x ranks x B
    return _Scores(ranks, whole, boot.transpose(2, 0, 1))


def _fill(evidence: TaskEvidence, scored: dict[str, _Scores]) -> None:
    lora, dylora = scored["lora"], scored["dylora"]
    r_min, r_max = evidence.r_min, evidence.r_max

    def at(s: _Scores, rank: int) -> tuple[np.ndarray, np.ndarray]:
        i = s.ranks.index(rank)
        return s.whole[:, i], s.resampled[:, :, i]

    def avg(s: _Scores, top: int) -> tuple[np.ndarray, np.ndarray]:
        cols = [s.ranks.index(b) for b in range(r_min, top + 1)]
        return s.whole[:, cols].mean(axis=1), s.resampled[:, :, cols].mean(axis=2)

    def interval(per_seed: np.ndarray, per_resample: np.ndarray) -> Interval:
        return Interval.of(per_seed, per_resample.mean(axis=1))  # resampled: the mean over seeds

    (l_top, lb_top), (l_low, lb_low) = at(lora, r_max), at(lora, r_min)
    (d_top, db_top), (d_low, db_low) = at(dylora, r_max), at(dylora, r_min)
    (l_avg, lb_avg), (d_avg, db_avg) = avg(lora, r_max), avg(dylora, r_max)
    evidence.criteria = {
        "drop_margin": interval((l_top - l_low) - (d_top - d_low), (lb_top - lb_low) - (db_top - db_low)),
        "avg_gap": interval(d_avg - l_avg, db_avg - lb_avg),
        "gap_at_r_max": interval(d_top - l_top, db_top - lb_top),
    }
    for name, s in scored.items():
        for i, rank in enumerate(s.ranks):
            evidence.curves[(name, rank)] = interval(s.whole[:, i], s.resampled[:, :, i])
    evidence.rank0 = {m: evidence.curves[(m, 0)] for m in ("lora", "dylora")}
    evidence.at_r_max = {m: evidence.curves[(m, r_max)].estimate for m in ("lora", "dylora")}
    if all(evidence.rank0[m].lo <= evidence.at_r_max[m] <= evidence.rank0[m].hi for m in ("lora", "dylora")):
        evidence.verdict = "uninformative"
    else:
        evidence.verdict = verdict(evidence.criteria)
        if evidence.verdict == "undecided":
            evidence.seeds_needed = seeds_needed(evidence.criteria)
    if "lora" + SVD in scored:
        top = max(r_min, r_max // 2)
        (s_avg, sb_avg), (d_low_avg, db_low_avg) = avg(scored["lora" + SVD], top), avg(dylora, top)
        evidence.svd_gap = interval(d_low_avg - s_avg, db_low_avg - sb_avg)
