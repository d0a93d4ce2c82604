"""The search-cost experiment: LoRA trained once per rank 1..r_max against one DyLoRA run.

Both sides are real runs (``dylora.runner.execute``) on the same task and training budget; the
times are the wall-clock seconds each run recorded in its env.json (``train_seconds``,
``sweep_seconds``). As the setup doc's section 8 asks, the table gives the per-run time ratio
and the number of trainings each search needs, besides the measured total speed-up, and the
best metric each search finds (LoRA: best over its separately trained ranks, each evaluated at
its own rank; DyLoRA: best over its one rank sweep).

    python -m dylora.lab.search_cost experiment=search_cost_cpu [hydra overrides] [--results DIR]
                                     [--split NAME] [--metric NAME] [--ranks 1,2,4,8]

``--ranks`` limits the LoRA search to those ranks; ``--ranks pow2``: 1, 2, 4, .., r_max (the paper's Table 5).
Sweeps (``task=mrpc,cola method.r_max=32,64``) run one search per combination, each written as
``search_cost_<task>_r<r_max>.*``; a rank trained for two searches is one run, reused. ``--paper-tables``
also writes the paper's EACL Table 1 and Table 5 shapes (``dylora.lab.search_tables``), ranking by
EACL Table 1's metric (MRPC accuracy).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from dylora import records
from dylora.cli.compose import compose_config
from dylora.errors import ConfigError, RecordError, one_line_errors
from dylora.spec import RunSpec

RESULTS_DIR = Path("results") / "search_cost"


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


def lora_config(config: dict, rank: int) -> dict:
    """``config`` (a resolved run config) as plain LoRA trained and evaluated at ``rank``."""
    method = {**config["method"], "name": "lora", "method": "lora", "r_max": rank, "r_min": 1, "eval_ranks": [rank],
              "loss": "sampled"}  # LoRA has no summed loss, whatever the DyLoRA run's
    return {**config, "method": method}


POW2 = "pow2"  # --ranks pow2: 1, 2, 4, ..., r_max (the paper's Table 5 search)


def search_specs(config: dict, ranks: Sequence[int] | str | None = None) -> tuple[RunSpec, list[RunSpec]]:
    """(the DyLoRA run, the LoRA runs at ``ranks``: default every rank 1..r_max; ``"pow2"`` the powers of
    two up to r_max) for a resolved DyLoRA run config."""
    dylora = RunSpec.from_dict(config)
    r_max = dylora.adapter.r_max
    if ranks == POW2:
        if r_max & (r_max - 1):
            raise ConfigError(f"--ranks pow2 needs r_max to be a power of two; method.r_max={r_max}")
        ranks = [2**i for i in range(r_max.bit_length())]
    if dylora.adapter.method != "dylora":
        raise ConfigError(f"the search-cost experiment starts from a DyLoRA config; got method.method="
                          f"{dylora.adapter.method!r}: use method=dylora or method=dylora_frozen")
    if dylora.eval_ranks != list(range(1, r_max + 1)):
        raise ConfigError(f"method.eval_ranks={dylora.eval_ranks}: the DyLoRA search sweeps every rank; leave it null")
    ranks = sorted(set(ranks)) if ranks else list(range(1, r_max + 1))
    if ranks[0] < 1 or ranks[-1] != r_max:
        raise ConfigError(f"--ranks {','.join(map(str, ranks))}: LoRA's ranks must lie in 1..r_max={r_max} and "
                          f"include it (e.g. --ranks 1,2,4,{r_max}), so both searches reach the same rank")
    return dylora, [RunSpec.from_dict(lora_config(config, r)) for r in ranks]


def search_configs(overrides: list[str], ranks: Sequence[int] | str | None = None) -> list[dict]:
    """The resolved configuration of every run the searches of ``overrides`` (sweeps allowed) train, each
    once: what ``make reproduce-paper`` plans and estimates."""
    from dylora.lab.reproduce import expand

    configs: dict[Path, dict] = {}
    for job in expand(overrides):
        dylora, lora = search_specs(compose_config(job), ranks)
        for spec in (*lora, dylora):
            configs.setdefault(records.run_dir_for(spec.out_dir, spec.config), spec.config)
    return list(configs.values())


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


def measure(
    dylora: RunSpec,
    lora: Sequence[RunSpec],
    split: str,
    metric: str,
    execute: Callable[[RunSpec], Path] | None = None,
) -> SearchCost:
    """Run (or reuse the finished records of) every run of both searches and read their costs."""
    if execute is None:
        from dylora.runner import execute
    lora_costs = [run_cost(execute(s), "lora", s.adapter.r_max, split, metric) for s in lora]
    dylora_cost = run_cost(execute(dylora), "dylora", dylora.adapter.r_max, split, metric)
    return SearchCost(dylora.task.name, split, metric, dylora.adapter.r_max, lora_costs, dylora_cost)


# ---------------------------------------------------------------------------- tables

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


# ---------------------------------------------------------------------------- command line


def run(overrides: list[str], results_dir: str | Path = RESULTS_DIR, split: str | None = None,
        metric: str | None = None, ranks: Sequence[int] | str | None = None,
        paper_tables: bool = False) -> tuple[list[SearchCost], list[Path]]:
    """Compose, run both searches of every combination of the sweeps, write the tables: what the command
    line does."""
    from dylora.lab.reproduce import expand

    costs = []
    for job in expand(overrides):
        dylora, lora = search_specs(compose_config(job), ranks)
        default_split, default_name = default_metric(dylora.task.name, "table1" if paper_tables else "table2")
        costs.append(measure(dylora, lora, split or default_split, metric or default_name))
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    if len(costs) == 1:
        paths = write_tables(costs[0], results_dir)
    else:
        paths = [p for c in costs for p in write_tables(c, results_dir, f"search_cost_{c.task}_r{c.r_max}")]
    if paper_tables:
        from dylora.lab.search_tables import write_paper_tables

        paths += write_paper_tables(costs, results_dir)
    return costs, paths


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dylora.lab.search_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides of the DyLoRA run, e.g. experiment=search_cost_cpu trainer.lr=1e-3")
    p.add_argument("--results", default=RESULTS_DIR, metavar="DIR",
                   help="where search_cost.{md,csv,json} go (default: %(default)s)")
    p.add_argument("--split", metavar="NAME", help="split of the metric each search ranks by (default: the task's)")
    p.add_argument("--metric", metavar="NAME", help="metric each search ranks by (default: the task's)")
    p.add_argument("--ranks", type=_ranks, metavar="R,R,..|pow2",
                   help="the ranks LoRA is trained at, ending at r_max, or pow2: 1, 2, 4, .., r_max "
                        "(default: every rank 1..r_max)")
    p.add_argument("--paper-tables", action="store_true",
                   help="also write EACL Table 1 and Table 5 (table1_eacl.*, table5.*, finding.md)")
    return p


def parse_ranks(text: str) -> list[int] | str:
    """``--ranks``'s value: a comma-separated list of ranks, or ``pow2``."""
    if text == POW2:
        return POW2
    try:
        return [int(r) for r in text.split(",")]
    except ValueError:
        raise ConfigError(f"--ranks {text!r} is not a comma-separated list of whole ranks (e.g. 1,2,4,8) "
                          f"or {POW2}") from None


def _ranks(text: str) -> list[int] | str:
    try:
        return parse_ranks(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_intermixed_args(argv)
    with one_line_errors("search_cost"):
        costs, paths = run(args.overrides, args.results, args.split, args.metric, args.ranks, args.paper_tables)
    for cost in costs:
        print(markdown(cost))
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
