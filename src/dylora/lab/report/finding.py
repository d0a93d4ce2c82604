"""The paper's finding, task by task: LoRA loses more than DyLoRA when truncated to r_min."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from dylora.lab import paper
from dylora.lab.report.experiments import SVD, Experiment, method_label, task_order
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


def svd_findings(exp: Experiment) -> list[str]:
    """Per task with DyLoRA and LoRA + SVD rows: is DyLoRA better than the best rank-b compression of an
    ordinary LoRA at low ranks (b <= r_max / 2)? Table 1's metric, seed means, and how many seeds agree."""
    sc, _ = scores(exp, "table1")
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
        if abs(diff) < SVD_RESOLUTION:
            answer = f"not resolved (under {SVD_RESOLUTION:g} point)"
        else:
            answer = "DyLoRA is better" if diff > 0 else "LoRA + SVD is better"
        others = ", ".join(f"{method_label(m)} {means[m]:.2f}" for m in ("lora", "dylora" + SVD) if m in means)
        lines.append(f"{paper.TASKS.get(task, task)} ({of_task['metric'].iloc[0]}), mean over ranks {r_min}..{top}: "
                     f"DyLoRA {means['dylora']:.2f}, LoRA + SVD {means['lora' + SVD]:.2f} ({others}); "
                     f"difference {diff:+.2f}, DyLoRA ahead at {ahead} of {len(seeds)} seed(s): {answer}.")
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


def write_finding(exp: Experiment, dest: Path, margin: float = 3.0, gap: float = 2.0,
                  ablations: list[str] | None = None) -> list[Path]:
    """finding.{csv,md}: the paper's Table 1 finding per task; then one line per ablation table's claim."""
    finding = paper_finding(exp, margin, gap)
    paths = [dest / "finding.csv", dest / "finding.md"]
    finding.to_csv(paths[0], index=False)
    md = f"# The paper's finding, task by task ({exp.name})\n\n"
    if finding.empty:
        md += "No task has finished LoRA and DyLoRA runs over the same ranks.\n"
    else:
        text = [[(_finding_cell(col, v), False) for col, v in zip(FINDING_COLUMNS, r)]
                for r in finding.astype(object).itertuples(index=False)]
        md += markdown_table(FINDING_COLUMNS, text)
        held = int(finding["holds"].sum())
        md += f"\nThe finding holds on {held} of {len(finding)} task(s), judged on the means over seeds.\n"
    unpaired = sorted({r.task for r in exp.used} - set(finding["task"]))
    if unpaired:
        md += f"\nNot compared (no finished LoRA and DyLoRA runs over the same ranks): {', '.join(unpaired)}.\n"
    md += (
        "\n- Table 1's metric, mean over seeds, in points (percent).\n"
        "- drop = value at r_max − value at r_min; drop_margin = lora_drop − dylora_drop; "
        "gap_at_r_max = DyLoRA − LoRA at r_max; avg = mean over ranks r_min..r_max.\n"
        f"- holds: drop_margin >= {margin:g} (LoRA loses more when truncated), dylora_avg >= lora_avg, "
        f"and |gap_at_r_max| <= {gap:g}.\n"
        "- per_seed: the same verdict on each seed's curves alone, naming the checks it fails "
        "(drop, avg, r_max).\n"
    )
    if ablations:
        md += "\n## The ablations' claims\n\n" + "".join(f"- {line}\n" for line in ablations)
    svd = svd_findings(exp)
    if svd:
        md += ("\n## Does DyLoRA beat LoRA compressed by SVD at low ranks?\n\n"
               "LoRA + SVD: the same LoRA run with rank b taken as the best rank-b approximation of its update, "
               "a post-hoc compression the paper does not compare with. Table 1's metric, mean over seeds.\n\n"
               + "".join(f"- {line}\n" for line in svd))
    paths[1].write_text(md)
    return paths
