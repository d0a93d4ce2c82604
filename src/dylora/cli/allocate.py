"""``dylora-allocate``: a rank per module under a budget, from one finished DyLoRA run, and what it scores.

    dylora-allocate RUN_DIR [--budget 1,2,4 | --budget params:20000,40000] [--selection train:0:256]
                    [--max-rows 512] [--truncation prefix|svd] [--out DIR] [--export] [data.glue_dir=DIR ...]

The ranks are searched on a selection split (``dylora.allocation``): the training rows the run held out
(``data.selection_rows``), or, for a run trained without them, the slice of training rows ``--selection``
names (rows it was trained on: say so when you report it). Never the dev split. Then each budget (an
average rank, or ``params:N`` adapter parameters) is evaluated on the dev split twice: every module at the
largest uniform rank the budget holds, and at the allocated ranks. Written to ``--out``:
``allocation.json`` (the profile, the ranks, every metric, the search's cost), ``budget.{csv,md}``,
``budget_curve.{png,svg}``, and with ``--export`` a PEFT LoRA adapter per budget (``peft_<budget>/``, its
per-module ranks in ``rank_pattern`` and ``alpha_pattern``). Overrides (``key=value``) change the run's
recorded configuration, e.g. where its data is on this machine.

The workflow is ``dylora.lab.allocate``; this module parses the command line and calls it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dylora.adapters import TRUNCATIONS
from dylora.errors import one_line_errors
from dylora.lab.allocate import run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dylora-allocate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("run_dir", type=Path, help="a finished run's directory (with its adapter.safetensors)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="changes to the run's recorded config")
    p.add_argument("--budget", default=None, metavar="A,A,..|params:N,N,..",
                   help="average ranks, or params: adapter-parameter counts (default: every rank r_min..r_max)")
    p.add_argument("--selection", metavar="train:START:END",
                   help="training rows to search on, for a run trained without data.selection_rows")
    p.add_argument("--max-rows", type=int, default=512, help="selection rows used at most (default: %(default)s)")
    p.add_argument("--truncation", choices=TRUNCATIONS, default="prefix", help="how each rank is taken")
    p.add_argument("--out", type=Path, help="output folder (default: allocations/<run folder name>)")
    p.add_argument("--export", action="store_true", help="write a PEFT LoRA adapter per budget")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_intermixed_args(argv)
    with one_line_errors("dylora-allocate"):
        out = run(args.run_dir, args.overrides, args.out, args.budget, args.selection, args.max_rows, args.truncation,
                  args.export)
    print((out / "budget.md").read_text())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
