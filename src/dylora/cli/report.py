"""``dylora-report``: tables, rank curves and summaries for every experiment under ``out_dir``.

    dylora-report out_dir=experiments results_dir=results [experiment=NAME] [tolerance=1.0]

Runs it could not use are printed on the terminal as well as listed in the tables; a corrupted
record makes it exit 1 (missing or unfinished runs do not: grids are often partial on purpose).

The config is ``report.yaml`` of the package ``dylora.conf`` (the repository's ``conf/``), so it
works from a wheel, an editable install and any working directory. It is registered in Hydra's
ConfigStore instead of being found through ``config_path``: that package also holds dylora-run's
config groups, ``experiment/`` among them, and Hydra would read ``experiment=NAME`` as picking a
file of that group rather than setting this app's key.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

import hydra
import pandas as pd
from hydra.core.config_store import ConfigStore
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from dylora.cli.compose import CONF_MODULE
from dylora.errors import ConfigError, DyLoRAError, check_folder_name, os_error_message
from dylora.lab.report import Experiment, report_files, select_experiments, write_report


def _fail(error: object) -> None:
    print(f"dylora-report: error: {error}", file=sys.stderr)
    sys.exit(1)  # SystemExit passes through Hydra's handler: no traceback


def _tolerance(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"tolerance={value} is not a number; pass e.g. tolerance=1.0") from None


@hydra.main(version_base="1.3", config_path=None, config_name="report")
def _report(cfg: DictConfig) -> None:
    corrupted, kept = 0, []
    try:
        tolerance = _tolerance(cfg.tolerance)
        experiment = None if cfg.experiment is None else check_folder_name("experiment", cfg.experiment)
        experiments = select_experiments(to_absolute_path(str(cfg.out_dir)), experiment)  # relative to the cwd
        results_dir = Path(to_absolute_path(str(cfg.results_dir)))
        for name, exp in experiments.items():
            paths = write_report(exp, results_dir, tolerance)
            if not paths and report_files(results_dir / name):
                kept.append(results_dir / name)
                print(f"{name}: no run has metrics: the earlier report in {results_dir / name} is kept as it was",
                      file=sys.stderr)
            else:
                print(f"{name}: wrote {len(paths)} files to {results_dir / name}")
                for path in paths:
                    print(f"  {path.name}")
                _print_finding(results_dir / name / "finding.csv")
            corrupted += _print_issues(exp)
    except DyLoRAError as e:
        _fail(e)
    except OSError as e:  # the environment's: results_dir read-only, under a file, disk full
        _fail(os_error_message(e))
    if corrupted:
        _fail(f"{corrupted} corrupted run record(s), left out of the tables (listed above); "
              "delete each and run it again")
    if kept:
        _fail(f"no run of {', '.join(p.name for p in kept)} has metrics: its earlier report is kept as it was; "
              "finish a run (dylora-run) and report again")


def _print_issues(exp: Experiment) -> int:
    """Print the runs the report could not use (stderr); the number of corrupted ones."""
    for issue in exp.issues:
        seed = "" if issue.seed is None else f" seed {issue.seed}"
        print(f"  {issue.status}: {issue.task} {issue.method}{seed}: {issue.detail}", file=sys.stderr)
    return sum(issue.status in ("corrupted", "unreadable") for issue in exp.issues)


def _print_finding(path: Path) -> None:
    if not path.is_file():  # a search experiment's finding is finding.md alone
        return
    finding = pd.read_csv(path)
    if not finding.empty:
        # finding.csv's verdict per task (holds / fails / undecided / uninformative / no interval)
        by_verdict = finding.groupby("verdict", sort=False)["task"].agg(", ".join)
        said = "; ".join(f"{verdict} on {tasks}" for verdict, tasks in by_verdict.items())
        print(f"  the paper's finding, {len(finding)} task(s): {said} (see {path.with_suffix('.md').name})")


def main() -> None:
    config = files(CONF_MODULE).joinpath("report.yaml").read_text()
    ConfigStore.instance().store(name="report", node=OmegaConf.create(config))
    _report()


if __name__ == "__main__":
    main()
