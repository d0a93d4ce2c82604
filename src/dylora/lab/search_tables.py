"""A rank search's measurements (``dylora.lab.search_cost`` runs the searches) and every table written from them.

* ``search_cost.{md,csv,json}`` (``write_tables``): one search, LoRA at each rank against one DyLoRA run,
  the runs' measured seconds and the best metric each search finds.
* ``table1_eacl.{md,csv,tex}``: EACL Table 1, LoRA trained separately at each rank; the best rank per
  task in bold (the paper's point: it differs by task).
* ``table5.{md,csv,tex}``: EACL Table 5, the LoRA search (separate trainings) against one DyLoRA run
  at the same r_max: the rank each picks, its metric, and the relative training cost, ours measured
  (LoRA's summed training seconds over DyLoRA's), the paper's a count of trainings.
* ``finding.md``: one line per table, the paper's claim and whether ours shows it.

``dylora.lab.search_cost --paper-tables`` writes them as it measures; ``dylora-report`` writes them
again from a search experiment's run records (``report_search``).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

from dylora import records
from dylora.errors import ConfigError, RecordError
from dylora.lab import paper
from dylora.lab.report.experiments import Experiment, Issue, config_value, metric_scale, search_rank, task_order
from dylora.lab.report.render import latex_table, markdown_table
from dylora.lab.report.tables import RESOLUTION

# Table 5's claim: a DyLoRA run costs about one LoRA training, so the LoRA search costs about its
# number of trainings; "shown" when the measured ratio is at least this share of that count.
COST_SHARE = 0.9
Cell = tuple[str, bool]


# ---------------------------------------------------------------------------- the measured searches


@dataclass
class RunCost:
    """One training of a search, as measured."""

    method: str  # "lora" or "dylora"
    r_max: int
    train_seconds: float
    sweep_seconds: float
    best_rank: int
    best_value: float
    run_dir: str

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.sweep_seconds


@dataclass
class SearchCost:
    task: str
    split: str
    metric: str
    r_max: int
    lora: list[RunCost]  # one per rank 1..r_max
    dylora: RunCost

    def summary(self) -> dict:
        lora_total = sum(r.seconds for r in self.lora)
        lora_train = sum(r.train_seconds for r in self.lora)
        best_lora = max(self.lora, key=lambda r: r.best_value)
        at_r_max = next(r for r in self.lora if r.r_max == self.r_max)
        return {
            "task": self.task, "split": self.split, "metric": self.metric, "r_max": self.r_max,
            "lora_trainings": len(self.lora),
            "dylora_trainings": 1,
            "power_of_two_trainings": int(math.log2(self.r_max)) + 1,  # ranks 1, 2, 4, ..., <= r_max
            "lora_total_seconds": lora_total,
            "dylora_total_seconds": self.dylora.seconds,
            "lora_train_seconds": lora_train,
            "dylora_train_seconds": self.dylora.train_seconds,
            "speedup": lora_total / self.dylora.seconds,
            "train_speedup": lora_train / self.dylora.train_seconds,
            # one DyLoRA training against one LoRA training at the same r_max (the paper's 408 s vs 400 s)
            "per_run_train_ratio": self.dylora.train_seconds / at_r_max.train_seconds,
            "lora_best_rank": best_lora.best_rank,
            "lora_best_value": best_lora.best_value,
            "dylora_best_rank": self.dylora.best_rank,
            "dylora_best_value": self.dylora.best_value,
        }


def default_metric(task: str, table: str = "table2") -> tuple[str, str]:
    """(split, metric) the paper's ``table`` ("table2": EACL Table 2; "table1": Table 1's per-task metric,
    which EACL Table 1 shares) reports for ``task``, as its task definition says; accuracy on validation
    for a task without one (the synthetic task)."""
    from dylora.tasks.registry import table_metric

    defined = table_metric(task, table)
    return (defined.splits[0], defined.metric) if defined else ("validation", "accuracy")


def run_cost(run_dir: Path, method: str, r_max: int, split: str, metric: str) -> RunCost:
    """The measured seconds and the best (rank, value) of ``metric`` on ``split`` of one finished run."""
    record = records.read_run(run_dir, weights=False)  # metrics and seconds only: committed records lack weights
    if not record.done:
        raise RecordError(f"{run_dir} is not a finished run ({record.problem})")
    env = record.env
    if "train_seconds" not in env or "sweep_seconds" not in env:
        raise RecordError(f"{run_dir}/env.json lacks train_seconds/sweep_seconds; delete {run_dir} and run it again")
    values = [(m.value, m.rank) for m in record.metrics  # the paper's truncation, as the search picks ranks
              if m.split == split and m.metric == metric and m.truncation == "prefix" and m.rank > 0]
    if not values:
        found = sorted({(m.split, m.metric) for m in record.metrics})
        raise ConfigError(f"{run_dir} has no {split}/{metric}; it has {found}: pass --split and --metric")
    value, rank = max(values, key=lambda vr: (vr[0], -vr[1]))  # ties: the smallest rank
    return RunCost(method, r_max, float(env["train_seconds"]), float(env["sweep_seconds"]), rank, value, str(run_dir))


# ---------------------------------------------------------------------------- one search's tables

CSV_FIELDS = ["method", "r_max", "train_seconds", "sweep_seconds", "seconds", "best_rank", "best_value", "run_dir"]


def _rows(cost: SearchCost) -> list[dict]:
    return [{**asdict(r), "seconds": r.seconds} for r in [*cost.lora, cost.dylora]]


def _lora_ranks(cost: SearchCost) -> str:
    ranks = [r.r_max for r in cost.lora]
    return f"every rank 1..{cost.r_max}" if ranks == list(range(1, cost.r_max + 1)) else \
        "ranks " + ", ".join(map(str, ranks))


def markdown(cost: SearchCost) -> str:
    s = cost.summary()
    lines = [
        f"# Search cost: LoRA at {_lora_ranks(cost)} vs one DyLoRA run "
        f"({s['task']}, {s['split']} {s['metric']})",
        "",
        "| run | trained r_max | train s | rank sweep s | total s | best rank | best value |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in [*cost.lora, cost.dylora]:
        lines.append(f"| {r.method} | {r.r_max} | {r.train_seconds:.2f} | {r.sweep_seconds:.2f} | {r.seconds:.2f} | "
                     f"{r.best_rank} | {r.best_value:.4f} |")
    lines += [
        "",
        "| search | trainings | total s (train + eval) | train s | best rank | best value |",
        "|---|---:|---:|---:|---:|---:|",
        f"| LoRA, {_lora_ranks(cost)} | {s['lora_trainings']} | {s['lora_total_seconds']:.2f} | "
        f"{s['lora_train_seconds']:.2f} | {s['lora_best_rank']} | {s['lora_best_value']:.4f} |",
        f"| DyLoRA, one run | 1 | {s['dylora_total_seconds']:.2f} | {s['dylora_train_seconds']:.2f} | "
        f"{s['dylora_best_rank']} | {s['dylora_best_value']:.4f} |",
        "",
        f"- one DyLoRA training / one LoRA training at r_max={s['r_max']}: **{s['per_run_train_ratio']:.3f}** "
        f"(paper, MRPC: 408.39 s / 399.95 s = {408.39 / 399.95:.3f})",
        f"- measured speed-up of the exhaustive search: **{s['speedup']:.2f}x** in total time, "
        f"{s['train_speedup']:.2f}x in training time ({s['lora_trainings']} LoRA trainings vs 1)",
        f"- a power-of-two LoRA search (ranks 1, 2, 4, ..) needs {s['power_of_two_trainings']} trainings; "
        f"the speed-up is about the number of trainings a search needs times the inverse per-run ratio",
    ]
    return "\n".join(lines) + "\n"


def write_tables(cost: SearchCost, out_dir: str | Path, stem: str = "search_cost") -> list[Path]:
    """<stem>.{md,csv,json} in ``out_dir``."""
    out_dir = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_rows(cost))
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "json")]
    records.atomic_write_text(paths[0], markdown(cost))
    records.atomic_write_text(paths[1], buffer.getvalue())
    records.atomic_write_json(paths[2], {"summary": cost.summary(), "runs": _rows(cost)})
    return paths


# ---------------------------------------------------------------------------- the paper's tables


def _fmt(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _percent(cost, value: float) -> float:
    return value * metric_scale(cost.task, cost.metric)


def _write(out_dir: Path, stem: str, title: str, header: list[str], rows: list[list[Cell]], notes: list[str],
           csv_rows: list[dict]) -> list[Path]:
    md = f"# {title}\n\n{markdown_table(header, rows)}\n" + "".join(f"- {n}\n" for n in notes)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(csv_rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "tex")]
    for path, text in zip(paths, (md, buffer.getvalue(), latex_table(header, rows, title, notes))):
        records.atomic_write_text(path, text)
    return paths


# ---------------------------------------------------------------------------- EACL Table 1


def lora_by_rank(costs: Sequence) -> dict[str, dict[int, float]]:
    """Per task, LoRA's metric (percent) at each rank it was trained at; a rank trained for two searches
    (r_max 32 and 64) is one run, read once."""
    out: dict[str, dict[int, float]] = {}
    for cost in costs:
        for run in cost.lora:
            out.setdefault(cost.task, {})[run.r_max] = _percent(cost, run.best_value)
    return out


def table1_eacl(costs: Sequence, out_dir: Path) -> tuple[list[Path], str]:
    ours = lora_by_rank(costs)
    metric = {c.task: c.metric for c in costs}
    ranks = sorted({r for by_rank in ours.values() for r in by_rank})
    header = ["Task", "Metric", "Source", *(f"r={r}" for r in ranks), "best rank"]
    rows, csv_rows, best = [], [], {}
    for task, by_rank in ours.items():
        theirs = {r: paper.paper_value("Table 1", "lora", task, None, r, paper.EACL) for r in ranks}
        for source, values in (("ours", by_rank), ("paper", theirs)):
            known = {r: v for r, v in values.items() if v is not None}
            top = max(known, key=lambda r: (known[r], -r)) if known else None  # ties: the smaller rank
            best[(task, source)] = top
            rows.append([(paper.TASKS.get(task, task), False), (metric[task], False), (source, False),
                         *((_fmt(values.get(r)), r == top) for r in ranks), (str(top or "–"), False)])
            csv_rows += [dict(task=task, metric=metric[task], source=source, rank=r, value=values.get(r),
                              best=r == top) for r in ranks]
    tasks = list(ours)

    def best_ranks(source: str) -> str:
        return ", ".join(f"{paper.TASKS.get(t, t)} {best[(t, source)]}" for t in tasks)

    differs = len({best[(t, "ours")] for t in tasks}) > 1
    finding = (f"EACL Table 1, the best LoRA rank differs by task (paper: {best_ranks('paper')}): ours "
               f"{best_ranks('ours')}: {'shown' if differs else 'not shown'}"
               + ("" if len(tasks) > 1 else " (one task: nothing to compare)") + ".")
    notes = [
        "LoRA trained separately at each rank r (r_max = r, alpha and every other setting fixed) and evaluated "
        "at r; percent. Bold: the best rank per row (the smaller rank on ties).",
        f"paper = {paper.EACL} Table 1 (RoBERTa-base, one number each; MRPC accuracy as there).",
        "Finding: " + finding,
        *_setting_notes(costs),
    ]
    title = "EACL Table 1: LoRA trained separately at each rank"
    return _write(out_dir, "table1_eacl", title, header, rows, notes, csv_rows), finding


# ---------------------------------------------------------------------------- Table 5


def _paper_search(task: str, r_max: int) -> dict[str, tuple[float, str] | None]:
    """The paper's (value, rank) per search and its cost in trainings, at ``r_max``."""
    df = paper.paper_results()
    rows = df[(df["paper_version"] == paper.EACL) & (df["table"] == "Table 5")
              & df["notes"].str.contains(f"r_max={r_max};", regex=False)]
    out: dict[str, tuple[float, str] | None] = {}
    for label in ("LoRA (Search)", "DyLoRA (Frozen)"):
        hit = rows[(rows["method"] == label) & (rows["task"] == paper.TASKS.get(task, task))]
        out[label] = (float(hit["value"].iloc[0]), str(hit["rank"].iloc[0])) if len(hit) == 1 else None
        cost = rows[(rows["method"] == label) & (rows["task"] == "all")]
        out[label + " cost"] = (float(cost["value"].iloc[0]), "") if len(cost) == 1 else None
    return out


def table5(costs: Sequence, out_dir: Path) -> tuple[list[Path], list[str]]:
    header = ["Task", "Search", "Source", "r_max", "trainings", "best rank", "metric", "train s", "relative cost"]
    rows, csv_rows, findings = [], [], []
    for cost in costs:
        s = cost.summary()
        theirs = _paper_search(cost.task, cost.r_max)
        task = paper.TASKS.get(cost.task, cost.task)
        lora_value, dy_value = _percent(cost, s["lora_best_value"]), _percent(cost, s["dylora_best_value"])
        ours = [("LoRA (Search)", s["lora_trainings"], s["lora_best_rank"], lora_value, s["lora_train_seconds"],
                 s["train_speedup"]),
                (_dylora_label(cost), 1, s["dylora_best_rank"], dy_value, s["dylora_train_seconds"], 1.0)]
        for label, trainings, rank, value, seconds, relative in ours:
            rows.append([(task, False), (label, False), ("ours", False), (str(cost.r_max), False),
                         (str(trainings), False), (str(rank), False), (_fmt(value), False), (_fmt(seconds), False),
                         (f"{relative:.2f}x", False)])
            csv_rows.append(dict(task=cost.task, search=label, source="ours", r_max=cost.r_max, trainings=trainings,
                                 best_rank=rank, value=value, train_seconds=seconds, relative_cost=relative))
        for label in ("LoRA (Search)", "DyLoRA (Frozen)"):
            found, spent = theirs[label], theirs[label + " cost"]
            if found is None:
                continue
            rows.append([(task, False), (label, False), ("paper", False), (str(cost.r_max), False),
                         (f"{spent[0]:.0f}" if spent else "–", False), (found[1], False), (_fmt(found[0]), False),
                         ("–", False), (f"{spent[0]:.0f}x" if spent else "–", False)])
            csv_rows.append(dict(task=cost.task, search=label, source="paper", r_max=cost.r_max,
                                 trainings=spent[0] if spent else None, best_rank=found[1], value=found[0],
                                 train_seconds=None, relative_cost=spent[0] if spent else None))
        findings.append(_table5_finding(cost, lora_value, dy_value, s))
    notes = [
        "LoRA (Search): the best of separate LoRA trainings at the ranks shown in trainings; DyLoRA: one run "
        "(the paper's: DyLoRA (Frozen)) evaluated at every rank 1..r_max, its best rank picked. metric: percent.",
        "relative cost, ours: LoRA's summed training seconds over DyLoRA's, measured on this machine (train_seconds "
        "in each env.json; the rank sweeps excluded); the paper's is a count of trainings.",
        f"paper = {paper.EACL} Table 5 (RoBERTa-base; its MRPC metric is not labelled: Table 1's is accuracy).",
        *(f"Finding: {f}" for f in findings),
        *_setting_notes(costs),
    ]
    title = "EACL Table 5: the LoRA rank search against one DyLoRA run"
    return _write(out_dir, "table5", title, header, rows, notes, csv_rows), findings


def _dylora_label(cost) -> str:
    """The search's DyLoRA run as its method is called (DyLoRA, or the paper's DyLoRA (Frozen))."""
    method = records.read_config(Path(cost.dylora.run_dir))["method"]["name"]
    return paper.METHODS.get(method, method)


def _table5_finding(cost, lora_value: float, dy_value: float, s: dict) -> str:
    gap, ratio, count = lora_value - dy_value, s["train_speedup"], s["lora_trainings"]
    claim = (f"EACL Table 5, {paper.TASKS.get(cost.task, cost.task)} r_max {cost.r_max}: DyLoRA's chosen rank "
             f"scores within {RESOLUTION:g} point of the LoRA search's best at a cost ratio of at least {COST_SHARE} x "
             f"the {count} LoRA trainings: gap {gap:+.2f}, ratio {ratio:.2f}x")
    misses = []  # every part of the claim that fails, so the verdict names each
    if gap > RESOLUTION:
        misses.append(f"DyLoRA trails the search's best by {gap:.2f} points, more than the {RESOLUTION:g} allowed")
    if ratio < COST_SHARE * count:
        misses.append(f"the measured ratio is under {COST_SHARE} x {count} = {COST_SHARE * count:.1f}: a DyLoRA "
                      "training costs more than the search's average LoRA training")
    return claim + (f": not shown ({'; '.join(misses)})." if misses else ": shown.")


def _setting_notes(costs: Sequence) -> list[str]:
    runs = {run.run_dir for c in costs for run in [*c.lora, c.dylora]}
    configs = [records.read_config(Path(d)) for d in sorted(runs)]
    models = sorted({str(c["model"]["name"]) for c in configs})
    presets = sorted({str(c.get("preset")) for c in configs})
    precisions = sorted({str(c["trainer"].get("precision", "fp32")) for c in configs})
    seeds = sorted({int(c["seed"]) for c in configs})
    return [f"Settings: model {', '.join(models)} (paper: roberta-base); preset {', '.join(presets)}; precision "
            f"{', '.join(precisions)}; seed {', '.join(map(str, seeds))} (one seed: effects under {RESOLUTION:g} "
            "point are not resolved)."]


def write_paper_tables(costs: Sequence, out_dir: str | Path) -> list[Path]:
    """table1_eacl.*, table5.* and finding.md in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths1, finding1 = table1_eacl(costs, out_dir)
    paths5, findings5 = table5(costs, out_dir)
    finding = out_dir / "finding.md"
    records.atomic_write_text(finding, "# The paper's rank-search claims on our runs\n\n"
                              + "".join(f"- {line}\n" for line in [finding1, *findings5]))
    return paths1 + paths5 + [finding]


# ---------------------------------------------------------------------------- from run records


def search_costs(exp: Experiment) -> list:
    """Every search of a search experiment's records, as ``search_cost`` measured it: per DyLoRA run (task,
    r_max), the LoRA runs of its task and seed at ranks up to r_max. One seed is reported (the smallest), as
    the searches are run; the runs of any other seed are listed as unused."""
    seed = min(r.seed for r in exp.used)
    exp.issues += [Issue(r.task, r.method, r.seed, "unused", f"{r.path.name}: the search tables take one seed "
                         f"({seed}); report another seed from an out_dir of its own")
                   for r in exp.used if r.seed != seed]
    runs = [r for r in exp.used if r.seed == seed]
    costs = []
    for task in task_order(r.task for r in runs):
        split, metric = default_metric(task, "table1")  # EACL Table 1's, as --paper-tables ranks
        lora = sorted((r for r in runs if r.task == task and search_rank(r) is not None), key=search_rank)
        for dylora in sorted((r for r in runs if r.task == task and search_rank(r) is None),
                             key=lambda r: int(config_value(r.config, "method.r_max"))):
            r_max = int(config_value(dylora.config, "method.r_max"))
            searched = [run_cost(r.path, "lora", search_rank(r), split, metric) for r in lora
                        if search_rank(r) <= r_max]
            if searched and searched[-1].r_max == r_max:  # a search reaches DyLoRA's r_max, or it is no search
                costs.append(SearchCost(task, split, metric, r_max, searched,
                                        run_cost(dylora.path, "dylora", r_max, split, metric)))
            else:
                exp.issues.append(Issue(task, "lora", seed, "absent", f"no finished LoRA run at rank {r_max}: the "
                                        f"search against {dylora.path.name} is left out"))
    return costs


def report_search(exp: Experiment, dest: Path) -> list[Path]:
    """``search_cost_<task>_r<r_max>.*`` per search, EACL Tables 1 and 5 and ``finding.md`` in ``dest``, from
    the records of a search experiment; run folders are named relative to the out_dir read."""
    costs = search_costs(exp)
    if not costs:
        return []
    paths = []
    for cost in costs:
        shown = replace(cost, lora=[_relative(r, exp.root) for r in cost.lora], dylora=_relative(cost.dylora, exp.root))
        paths += write_tables(shown, dest, f"search_cost_{cost.task}_r{cost.r_max}")
    return paths + write_paper_tables(costs, dest)


def _relative(run, root: Path | None):
    return replace(run, run_dir=Path(run.run_dir).relative_to(root).as_posix()) if root else run
