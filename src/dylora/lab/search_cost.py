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

The measurements (``RunCost``, ``SearchCost``) and their tables live in ``dylora.lab.search_tables``, below
this module; ``dylora.lab.reproduce`` plans these searches from above it.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Callable, Sequence

from dylora import records
from dylora.cli.compose import compose_config
from dylora.errors import ConfigError, one_line_errors
from dylora.lab.search_tables import (
    RunCost,
    SearchCost,
    default_metric,
    markdown,
    run_cost,
    write_paper_tables,
    write_tables,
)
from dylora.spec import RunSpec

# this module's, and the measurements it returns (defined in dylora.lab.search_tables)
__all__ = ["POW2", "RESULTS_DIR", "RunCost", "SearchCost", "default_metric", "expand", "lora_config", "main",
           "markdown", "measure", "parse_ranks", "parser", "run", "run_cost", "search_configs", "search_specs",
           "write_tables"]

RESULTS_DIR = Path("results") / "search_cost"


def expand(overrides: list[str]) -> list[list[str]]:
    """Every job of ``dylora-run -m overrides``: the sweeps' cartesian product, as Hydra's basic sweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(job) for job in itertools.product(*choices)]


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
    configs: dict[Path, dict] = {}
    for job in expand(overrides):
        dylora, lora = search_specs(compose_config(job), ranks)
        for spec in (*lora, dylora):
            configs.setdefault(records.run_dir_for(spec.out_dir, spec.config), spec.config)
    return list(configs.values())


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


# ---------------------------------------------------------------------------- command line


def run(overrides: list[str], results_dir: str | Path = RESULTS_DIR, split: str | None = None,
        metric: str | None = None, ranks: Sequence[int] | str | None = None,
        paper_tables: bool = False) -> tuple[list[SearchCost], list[Path]]:
    """Compose, run both searches of every combination of the sweeps, write the tables: what the command
    line does."""
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
