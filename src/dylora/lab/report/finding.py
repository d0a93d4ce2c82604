"""The paper's finding, task by task: LoRA loses more than DyLoRA when truncated to r_min."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from dylora.lab import paper
from dylora.lab.report.evidence import CRITERIA, TaskEvidence, task_evidence
from dylora.lab.report.experiments import SVD, Experiment, method_label, task_order
from dylora.lab.report.intervals import LEVEL, RESAMPLE_SEED, RESAMPLES
from dylora.lab.report.render import markdown_table
from dylora.lab.report.scoring import scores

FINDING_COLUMNS = ["task", "metric", "r_min", "r_max", "n_seeds", "lora_drop", "dylora_drop", "drop_margin",
                   "lora_avg", "dylora_avg", "gap_at_r_max", "drop_ok", "avg_ok", "r_max_ok", "holds", "per_seed"]
CHECKS = {"drop_ok": "drop", "avg_ok": "avg", "r_max_ok": "r_max"}  # a failed check, as per_seed names it


def paper_finding(exp: Experiment, margin: float = 3.0, gap: float = 2.0) -> pd.DataFrame:
    """Per task with LoRA and DyLoRA runs, whether Table 1's metric (seed means) shows the paper's
    finding: LoRA's drop from r_max to r_min exceeds DyLoRA's by at least ``margin`` points
    (drop_ok), DyLoRA's average over ranks r_min..r_max is at least LoRA's (avg_ok), and at r_max
    the two are within ``gap`` points (r_max_ok). ``per_seed``: the same verdict on each seed's own
    curves, with the checks it fails ("43 no (drop, r_max)")."""
    sc, _ = scores(exp, "table1")
    rows = []
    for task in task_order(sc["task"].unique()):
        of_task = sc[sc["task"] == task]
        if not {"lora", "dylora"} <= set(of_task["method"]):
            continue
        ranges = {exp.rank_range(task, m) for m in ("lora", "dylora")}
        if len(ranges) != 1:  # the two curves must span the same ranks to be compared
            continue
        r_min, r_max = ranges.pop()
        in_range = of_task[of_task["rank"].between(r_min, r_max)]
        row = _verdict(in_range, r_min, r_max, margin, gap)  # the seed means
        if row is None:
            continue
        seeds = sorted(set(in_range.loc[in_range["method"] == "lora", "seed"])
                       & set(in_range.loc[in_range["method"] == "dylora", "seed"]))
        each = {s: _verdict(in_range[in_range["seed"] == s], r_min, r_max, margin, gap) for s in seeds}
        row.update(task=task, metric=str(of_task["metric"].iloc[0]), r_min=r_min, r_max=r_max,
                   n_seeds=int(of_task["seed"].nunique()),
                   per_seed="; ".join(_seed_text(s, v) for s, v in each.items() if v is not None))
        rows.append(row)
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


def _verdict(sc: pd.DataFrame, r_min: int, r_max: int, margin: float, gap: float) -> dict[str, Any] | None:
    """The finding's numbers and checks on ``sc``'s curves (LoRA and DyLoRA, averaged over its seeds);
    None when a curve lacks r_min or r_max."""
    curve = {m: sc[sc["method"] == m].groupby("rank")["value"].mean() for m in ("lora", "dylora")}
    if any(not {r_min, r_max} <= set(c.index) for c in curve.values()):
        return None
    drop = {m: c[r_max] - c[r_min] for m, c in curve.items()}
    avg = {m: float(c.mean()) for m, c in curve.items()}
    row = dict(lora_drop=drop["lora"], dylora_drop=drop["dylora"], drop_margin=drop["lora"] - drop["dylora"],
               lora_avg=avg["lora"], dylora_avg=avg["dylora"],
               gap_at_r_max=curve["dylora"][r_max] - curve["lora"][r_max])
    row.update(drop_ok=row["drop_margin"] >= margin, avg_ok=avg["dylora"] >= avg["lora"],
               r_max_ok=abs(row["gap_at_r_max"]) <= gap)
    row["holds"] = row["drop_ok"] and row["avg_ok"] and row["r_max_ok"]
    return row


SVD_RESOLUTION = 1.0  # points: a smaller difference of the low-rank means is reported as not resolved


def svd_findings(exp: Experiment, evidence: dict[str, TaskEvidence] | None = None) -> list[str]:
    """Per task with DyLoRA and LoRA + SVD rows: is DyLoRA better than the best rank-b compression of an
    ordinary LoRA at low ranks (b <= r_max / 2)? Table 1's metric, seed means, how many seeds agree, and the
    difference's interval where the runs kept predictions (it then decides the answer)."""
    sc, _ = scores(exp, "table1")
    evidence = task_evidence(exp) if evidence is None else evidence
    lines = []
    for task in task_order(sc["task"].unique()):
        of_task = sc[sc["task"] == task]
        if not {"dylora", "lora" + SVD} <= set(of_task["method"]):
            continue
        r_min, r_max = exp.rank_range(task, "dylora")
        top = max(r_min, r_max // 2)  # the low half of the ranks
        low = of_task[of_task["rank"].between(r_min, top)]
        means = low.groupby("method")["value"].mean()
        per_seed = low.groupby(["method", "seed"])["value"].mean()
        seeds = sorted(set(per_seed["dylora"].index) & set(per_seed["lora" + SVD].index))
        ahead = sum(per_seed["dylora"][s] > per_seed["lora" + SVD][s] for s in seeds)
        diff = means["dylora"] - means["lora" + SVD]
        interval = evidence[task].svd_gap if task in evidence else None
        if interval is not None:
            answer = ("DyLoRA is better" if interval.lo > 0 else "LoRA + SVD is better" if interval.hi < 0
                      else "not resolved (the interval spans 0)")
            diff_text = f"{diff:+.2f} [{interval.lo:+.2f}, {interval.hi:+.2f}]"
        elif abs(diff) < SVD_RESOLUTION:
            answer, diff_text = f"not resolved (under {SVD_RESOLUTION:g} point; no interval)", f"{diff:+.2f}"
        else:
            answer = ("DyLoRA is better" if diff > 0 else "LoRA + SVD is better") + " (no interval)"
            diff_text = f"{diff:+.2f}"
        others = ", ".join(f"{method_label(m)} {means[m]:.2f}" for m in ("lora", "dylora" + SVD) if m in means)
        lines.append(f"{paper.TASKS.get(task, task)} ({of_task['metric'].iloc[0]}), mean over ranks {r_min}..{top}: "
                     f"DyLoRA {means['dylora']:.2f}, LoRA + SVD {means['lora' + SVD]:.2f} ({others}); "
                     f"difference {diff_text}, DyLoRA ahead at {ahead} of {len(seeds)} seed(s): {answer}.")
    return lines


def _seed_text(seed: int, verdict: dict[str, Any]) -> str:
    failed = [name for check, name in CHECKS.items() if not verdict[check]]
    return f"{seed} yes" if verdict["holds"] else f"{seed} no ({', '.join(failed)})"


def _finding_cell(column: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return (f"{value:+.2f}" if column in ("lora_drop", "dylora_drop", "drop_margin", "gap_at_r_max")
                else f"{value:.2f}")
    return str(value)


EVIDENCE_COLUMNS = ["task", "metric", "r_min", "r_max", "n_seeds", "verdict",
                    *[f"{c}{end}" for c in CRITERIA for end in ("", "_lo", "_hi")], "seeds_needed",
                    "lora_rank0", "lora_rank0_lo", "lora_rank0_hi", "dylora_rank0", "dylora_rank0_lo",
                    "dylora_rank0_hi", "lora_at_r_max", "dylora_at_r_max", "point_verdict"]


def evidence_table(exp: Experiment, margin: float = 3.0, gap: float = 2.0,
                   evidence: dict[str, TaskEvidence] | None = None) -> pd.DataFrame:
    """Per task: the verdict with each criterion's interval (``evidence``), and the point-estimate verdict
    of ``paper_finding`` beside it (the paper's own single numbers are judged that way)."""
    points = paper_finding(exp, margin, gap).set_index("task")
    rows = []
    for task, ev in (task_evidence(exp) if evidence is None else evidence).items():
        row: dict[str, Any] = {"task": task, "metric": ev.metric, "r_min": ev.r_min, "r_max": ev.r_max,
                               "n_seeds": ev.n_seeds, "verdict": ev.verdict, "seeds_needed": ev.seeds_needed}
        for name in CRITERIA:
            interval = ev.criteria.get(name)
            if interval is None and task in points.index:  # no predictions: the point estimate alone
                value = points.loc[task, "dylora_avg"] - points.loc[task, "lora_avg"] if name == "avg_gap" \
                    else points.loc[task, name]
                row[name] = float(value)
            elif interval is not None:
                row.update({name: interval.estimate, f"{name}_lo": interval.lo, f"{name}_hi": interval.hi})
        for method, interval in ev.rank0.items():
            row.update({f"{method}_rank0": interval.estimate, f"{method}_rank0_lo": interval.lo,
                        f"{method}_rank0_hi": interval.hi, f"{method}_at_r_max": ev.at_r_max[method]})
        row["point_verdict"] = ("holds" if points.loc[task, "holds"] else "fails") if task in points.index else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=EVIDENCE_COLUMNS)


def _interval_cell(row: pd.Series, name: str) -> str:
    if pd.isna(row.get(name)):
        return "–"
    if pd.isna(row.get(f"{name}_lo")):
        return f"{row[name]:+.2f} (no interval)"
    return f"{row[name]:+.2f} [{row[f'{name}_lo']:+.2f}, {row[f'{name}_hi']:+.2f}]"


def _rank0_cell(row: pd.Series) -> str:
    if pd.isna(row.get("lora_rank0")):
        return "–"
    return " / ".join(f"{row[f'{m}_rank0']:.1f} [{row[f'{m}_rank0_lo']:.1f}, {row[f'{m}_rank0_hi']:.1f}] → "
                      f"{row[f'{m}_at_r_max']:.1f}" for m in ("lora", "dylora"))


def write_finding(exp: Experiment, dest: Path, margin: float = 3.0, gap: float = 2.0,
                  ablations: list[str] | None = None) -> list[Path]:
    """finding.{csv,md}: the paper's Table 1 finding per task, with intervals; the point-estimate checks
    beside it; then one line per ablation table's claim and the SVD question."""
    intervals = task_evidence(exp)
    evidence = evidence_table(exp, margin, gap, intervals)
    finding = paper_finding(exp, margin, gap)
    paths = [dest / "finding.csv", dest / "finding.md"]
    evidence.to_csv(paths[0], index=False)
    md = f"# The paper's finding, task by task ({exp.name})\n\n"
    if evidence.empty:
        md += "No task has finished LoRA and DyLoRA runs over the same ranks.\n"
    else:
        md += "The claim of Table 1 (workshop paper) and Table 2 (EACL), on Table 1's metric.\n\n"
        header = ["task", "seeds", "verdict", "drop_margin > 0", "avg_gap > -1", "|gap_at_r_max| < 2",
                  "seeds needed", "adapter off → r_max (LoRA / DyLoRA)", "point verdict"]
        text = [[(f"{r.task} ({r.metric})", False), (str(r.n_seeds), False), (r.verdict, True),
                 (_interval_cell(r, "drop_margin"), False), (_interval_cell(r, "avg_gap"), False),
                 (_interval_cell(r, "gap_at_r_max"), False), (str(r.seeds_needed or "–"), False),
                 (_rank0_cell(r), False), (r.point_verdict or "–", False)] for _, r in evidence.iterrows()]
        md += markdown_table(header, text)
        counts = evidence["verdict"].value_counts()
        md += "\n" + ", ".join(f"{v}: {counts[v]}" for v in VERDICT_ORDER if v in counts) + " (tasks).\n"
    unpaired = sorted({r.task for r in exp.used} - set(evidence["task"]))
    if unpaired:
        md += f"\nNot compared (no finished LoRA and DyLoRA runs over the same ranks): {', '.join(unpaired)}.\n"
    md += (
        "\n- Points (percent) of Table 1's metric, mean over the seeds LoRA and DyLoRA share; each criterion is "
        "computed per seed on the whole dev set. drop = value at r_max − value at r_min; drop_margin = LoRA's "
        "drop − DyLoRA's; avg_gap = DyLoRA's mean over ranks r_min..r_max − LoRA's; gap_at_r_max = DyLoRA − "
        "LoRA at r_max.\n"
        f"- [lo, hi]: the {LEVEL:.0%} interval of the mean over seeds, from the between-seed variance and a paired "
        f"bootstrap of the dev rows ({RESAMPLES} resamples, seed {RESAMPLE_SEED}; the same rows for every seed, "
        "method and rank; the metric recomputed on them), Student's t (seeds - 1 degrees of freedom) and the "
        "normal quantile weighted by the seeds' and rows' shares of the variance (dylora.lab.report.intervals). "
        "Each bound is a one-sided test at 5 %. With one seed the interval holds the dev rows' uncertainty only: "
        "training noise is not in it.\n"
        "- verdict: uninformative when, for both methods, the score at r_max lies within the interval of the "
        "rank-0 score (the adapter off, the trained head on); else holds when drop_margin > 0, avg_gap > −1 "
        "(non-inferiority) and −2 < gap_at_r_max < 2 (two one-sided tests) all pass; fails when some interval "
        "lies wholly on the wrong side; else undecided, with the seeds it would take at the observed variances "
        "(\"dev set too small\" when the rows alone span the threshold). \"no interval\": the runs kept no "
        "predictions (records made before they did).\n"
        f"- point verdict: the earlier check on the means alone: drop_margin >= {margin:g}, DyLoRA's average >= "
        f"LoRA's, |gap_at_r_max| <= {gap:g}.\n"
    )
    if not finding.empty:
        per_seed = "; ".join(f"{r.task}: {r.per_seed}" for r in finding.itertuples())
        md += f"- point verdict per seed (the checks each seed's curves fail): {per_seed}.\n"
    if ablations:
        md += ("\n## The ablations' claims\n\nJudged on point estimates (the ablation runs are one seed each): "
               "these lines carry no interval.\n\n" + "".join(f"- {line}\n" for line in ablations))
    svd = svd_findings(exp, intervals)
    if svd:
        md += ("\n## Does DyLoRA beat LoRA compressed by SVD at low ranks?\n\n"
               "LoRA + SVD: the same LoRA run with rank b taken as the best rank-b approximation of its update, "
               "a post-hoc compression the paper does not compare with. Table 1's metric, mean over seeds; "
               f"[lo, hi]: the {LEVEL:.0%} interval of the difference, as above.\n\n"
               + "".join(f"- {line}\n" for line in svd))
    paths[1].write_text(md)
    return paths


VERDICT_ORDER = ("holds", "fails", "undecided", "uninformative", "no interval")
