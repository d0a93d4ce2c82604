"""The ``dylora-allocate`` workflow: a rank per module under a budget, from one finished DyLoRA run, and what
it scores (``dylora.cli.allocate`` parses the command line and calls ``run``).

The ranks are searched on a selection split (``dylora.allocation``): the training rows the run held out
(``data.selection_rows``), or, for a run trained without them, the slice of training rows ``selection``
names (rows it was trained on: say so when you report it). Never the dev split. Then each budget (an
average rank, or ``params:N`` adapter parameters) is evaluated on the dev split twice: every module at the
largest uniform rank the budget holds, and at the allocated ranks. Written to ``out``: ``allocation.json``
(the profile, the ranks, every metric, the search's cost), ``budget.{csv,md}``, ``budget_curve.{png,svg}``,
and with ``export`` a PEFT LoRA adapter per budget (``peft_<budget>/``, its per-module ranks in
``rank_pattern`` and ``alpha_pattern``).
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Sequence

import torch
import yaml

from dylora import records
from dylora.adapters import export_peft, merged
from dylora.allocation import allocate, budget_of, mean_loss, parameters, profile, unit_costs
from dylora.errors import ConfigError
from dylora.precision import autocast
from dylora.spec import RunSpec
from dylora.tasks.registry import table_metric

FALLBACK_METRICS = ("accuracy", "f1", "matthews_correlation", "pearson", "bleu")
DEFAULT_ROOT = Path("allocations")  # the default output folder's parent: allocations/<run folder name>


# ---------------------------------------------------------------------------- inputs


def run_spec(run_dir: Path, overrides: list[str]) -> RunSpec:
    """The finished run's spec, its recorded config changed by ``key=value`` overrides."""
    record = records.read_run(run_dir)
    if not record.done:
        raise ConfigError(f"{run_dir} is not a finished run ({record.problem}); pass a run folder with a DONE file")
    if not (run_dir / records.ADAPTER).is_file():
        raise ConfigError(f"{run_dir} holds no {records.ADAPTER} (a record committed without weights?); "
                          "train the run again or use a copy that kept its adapter")
    config = record.config
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not KEY=VALUE, e.g. data.glue_dir=../shared/data/glue")
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return RunSpec.from_dict(config)


def budgets(text: str | None, r_min: int, r_max: int, costs: dict[str, int]) -> list[tuple[str, float]]:
    """(label, adapter parameters) per budget: ``--budget``'s average ranks or ``params:`` counts."""
    if text is None:
        return [(f"avg{b}", budget_of(b, costs)) for b in range(r_min, r_max + 1)]
    try:
        if text.startswith("params:"):
            return [(f"params{int(n)}", float(int(n))) for n in text[len("params:"):].split(",")]
        return [(f"avg{float(a):g}", budget_of(float(a), costs)) for a in text.split(",")]
    except ValueError:
        raise ConfigError(f"--budget {text!r} is not a list of average ranks (e.g. 2,4) or of adapter-parameter "
                          "counts (e.g. params:20000,40000)") from None


def selection_rows(spec: RunSpec, data, text: str | None, max_rows: int) -> tuple[list[dict], str]:
    """The rows the search runs on, and where they come from."""
    if text is None:
        if not data.selection:
            raise ConfigError("this run was trained without data.selection_rows, so no rows were held out: name "
                              "training rows with --selection train:0:256 (rows it was trained on), or train it "
                              "again with data.selection_rows=256")
        rows, source = data.selection, f"the {len(data.selection)} training rows held out (data.selection_rows)"
    else:
        parts = text.split(":")
        if len(parts) != 3 or parts[0] != "train" or not all(p.isdigit() for p in parts[1:]):
            raise ConfigError(f"--selection {text!r} must be train:START:END (rows of the training split; never "
                              "the dev split the tables report), e.g. train:0:256")
        start, end = int(parts[1]), int(parts[2])
        rows = data.train[start:end]
        if not rows:
            raise ConfigError(f"--selection {text} holds no rows: the training split has {len(data.train)}")
        source = f"training rows {start}..{start + len(rows) - 1} (the run trained on them)"
    if len(rows) > max_rows:
        rows, source = rows[:max_rows], f"the first {max_rows} of {source}"
    return list(rows), source


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


# ---------------------------------------------------------------------------- where the outputs go


def default_out(run_dir: Path) -> Path:
    """``allocations/<run folder name>``: the folder's own name (``.`` and ``..`` resolved), never a path."""
    name = Path(run_dir).resolve().name
    if not name:
        raise ConfigError(f"{run_dir} has no folder name to name the outputs after: pass --out DIR")
    return DEFAULT_ROOT / name


def check_out(run_dir: Path, out: Path) -> Path:
    """``out`` if the outputs may go there: a path without ``..`` components (it cannot climb out of where it
    is given) or NUL, not a file, and not in a run record (the run's, or any with a DONE file: it checks every
    file there); else a ConfigError."""
    text = str(out)
    if not text.strip() or "\0" in text:
        raise ConfigError(f"--out {text!r} is not a folder name; e.g. --out {DEFAULT_ROOT / 'mine'}")
    if ".." in out.parts:
        raise ConfigError(f"--out {text} has a '..' component: name the folder without climbing out of where "
                          f"it is given, e.g. --out {DEFAULT_ROOT / out.name if out.name != '..' else DEFAULT_ROOT}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {text} is a file, not a folder: choose another --out")
    inside = next((p for p in (out.resolve(), *out.resolve().parents)
                   if p == Path(run_dir).resolve() or (p / records.DONE).is_file()), None)
    if inside is not None:
        raise ConfigError(f"--out {text} is inside the run record {inside}, which must stay as it was finished: "
                          f"choose a folder outside it, e.g. --out {default_out(run_dir)}")
    return out


# ---------------------------------------------------------------------------- the search and its curve


def dev_metric(spec: RunSpec, results: dict[str, dict[str, float]]) -> tuple[str, float]:
    """(name, value) of the metric the paper's Table 2 shows for the task (mean over its splits), else the
    first fallback metric measured."""
    wanted = table_metric(spec.task.name, "table2")
    if wanted is not None:
        return wanted.metric, sum(results[s][wanted.metric] for s in wanted.splits) / len(wanted.splits)
    for metric in FALLBACK_METRICS:
        for values in results.values():
            if metric in values:
                return metric, values[metric]
    return next(iter(next(iter(results.values())).items()))


def run(run_dir: Path, overrides: Sequence[str] = (), out: Path | None = None, budget: str | None = None,
        selection: str | None = None, max_rows: int = 512, truncation: str = "prefix", export: bool = False) -> Path:
    """Search the ranks of the finished run ``run_dir`` (its config changed by ``overrides``), evaluate each
    budget uniform and allocated, write the outputs into ``out`` (default: ``default_out``) and return it."""
    from dylora.runner import load_finished

    run_dir = Path(run_dir)
    out = check_out(run_dir, default_out(run_dir) if out is None else Path(out))
    spec = run_spec(run_dir, list(overrides))
    device = _device(spec.trainer.device)
    model, data = load_finished(spec, run_dir, device)
    rows, source = selection_rows(spec, data, selection, max_rows)
    config, costs = spec.adapter, unit_costs(model)
    precision = spec.trainer.precision

    def loss_at() -> float:
        return mean_loss(model, rows, data.collate, spec.trainer.eval_batch_size, device, data.loss, precision)

    found = profile(model, loss_at, truncation, progress=True)
    points = []
    for label, parameters_budget in budgets(budget, config.r_min, config.r_max, costs):
        uniform_rank = min(config.r_max, math.floor(parameters_budget / sum(costs.values())))
        if uniform_rank < config.r_min:
            raise ConfigError(f"budget {label} ({parameters_budget:g} parameters) is below every module at "
                              f"r_min={config.r_min} ({budget_of(config.r_min, costs):g}); raise it")
        ranks = allocate(found, costs, parameters_budget, config.r_min)
        point = {"budget": label, "budget_parameters": parameters_budget, "uniform_rank": uniform_rank,
                 "uniform_parameters": parameters(dict.fromkeys(costs, uniform_rank), costs),
                 "allocated_parameters": parameters(ranks, costs),
                 "allocated_average_rank": sum(ranks.values()) / len(ranks), "ranks": ranks}
        for kind, chosen in (("uniform", dict.fromkeys(costs, uniform_rank)), ("allocated", ranks)):
            with merged(model, chosen, truncation), autocast(precision, device):
                results = data.evaluate(model, uniform_rank)
            point[f"{kind}_metrics"] = results
            point["metric"], point[kind] = dev_metric(spec, results)
        if export:
            export_peft(model, ranks, out / f"peft_{label}", truncation=truncation)
        points.append(point)
    # the search's cost in evaluations (its seconds go to the terminal: files regenerate byte for byte)
    cost = {"evaluations": found.evaluations, "rows": len(rows), "modules": len(costs), "selection": source}
    print(f"search: {found.evaluations} evaluations of {len(rows)} rows in {found.seconds:.1f} s", file=sys.stderr)
    return write_outputs(out, run_dir, spec, truncation, found, points, cost)


# ---------------------------------------------------------------------------- outputs


def write_outputs(out: Path, run_dir: Path, spec: RunSpec, truncation: str, found, points: list[dict],
                  cost: dict) -> Path:
    """allocation.json, then what ``render`` makes of it, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {"run": run_dir.resolve().name, "task": spec.task.name, "method": spec.method_name,
               "truncation": truncation, "search": cost,
               "profile": {"at_r_max": found.at_r_max, "loss": found.loss}, "budgets": points}
    records.atomic_write_json(out / "allocation.json", summary)
    render(out, summary)
    return out


def render(out: Path, summary: dict) -> None:
    """budget.csv (the metric as recorded, like metrics.jsonl), budget.md and budget_curve.{png,svg} (in points,
    percent where the metric is a fraction) from an allocation.json's ``summary``: a committed allocation
    re-renders from its allocation.json alone."""
    from dylora.lab.report.experiments import metric_scale
    from dylora.lab.report.figures import plt, save_figure

    points, cost, task = summary["budgets"], summary["search"], summary["task"]
    fields = ["budget", "budget_parameters", "uniform_rank", "uniform_parameters", "uniform", "allocated_average_rank",
              "allocated_parameters", "allocated", "metric"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(points)
    records.atomic_write_text(out / "budget.csv", buffer.getvalue())
    metric = points[0]["metric"]
    scale = metric_scale(task, metric)
    unit = " (%)" if scale == 100 else ""
    lines = [f"# Per-module ranks under a budget: {task}, {summary['method']} ({summary['truncation']} truncation)",
             "", f"Dev-split {metric}{unit}: every module at one rank (uniform) against ranks chosen per module "
             f"(allocated) on {cost['selection']}; the search took {cost['evaluations']} evaluations of "
             f"{cost['rows']} rows ({cost['modules']} modules x ranks below r_max, and r_max once).", "",
             "| budget | uniform rank | uniform | allocated avg rank | allocated params | allocated | Δ |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in points:
        lines.append(f"| {p['budget']} | {p['uniform_rank']} | {p['uniform'] * scale:.2f} | "
                     f"{p['allocated_average_rank']:.2f} | {p['allocated_parameters']} | "
                     f"{p['allocated'] * scale:.2f} | {(p['allocated'] - p['uniform']) * scale:+.2f} |")
    records.atomic_write_text(out / "budget.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, x in (("uniform", "uniform_parameters"), ("allocated", "allocated_parameters")):
        ax.plot([p[x] for p in points], [p[kind] * scale for p in points], marker="o", label=kind)
    ax.set(xlabel="adapter parameters", ylabel=f"dev {metric}{unit}", title=f"{task}: budget vs {metric}")
    ax.legend()
    ax.grid(alpha=0.3)
    for ext in ("png", "svg"):
        save_figure(fig, out / f"budget_curve.{ext}")
    plt.close(fig)