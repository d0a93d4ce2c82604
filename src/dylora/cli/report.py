"""``dylora-report``: tables, rank curves and summaries for every experiment under ``out_dir``.

    dylora-report out_dir=experiments results_dir=results [experiment=NAME] [tolerance=1.0]

The config is ``conf/report.yaml`` at the repository root, found from this file's location
(``src/dylora/cli/report.py`` -> ``parents[3]``), so it works from an editable install and from
any working directory. It is registered in Hydra's ConfigStore instead of being found through
``config_path=conf/``: that folder also holds dylora-run's config groups, ``conf/experiment/``
among them, and Hydra would read ``experiment=NAME`` as picking a file of that group rather than
setting this app's key. A wheel install has no ``conf/``; ``main`` then says so in one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import pandas as pd
from hydra.utils import to_absolute_path
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from dylora.errors import ConfigError, DyLoRAError
from dylora.report import build_report

CONF_FILE = Path(__file__).resolve().parents[3] / "conf" / "report.yaml"


def _fail(error: Exception) -> None:
    print(f"dylora-report: error: {error}", file=sys.stderr)
    sys.exit(1)  # SystemExit passes through Hydra's handler: no traceback


def _tolerance(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"tolerance={value} is not a number; pass e.g. tolerance=1.0") from None


@hydra.main(version_base="1.3", config_path=None, config_name="report")
def _report(cfg: DictConfig) -> None:
    try:
        written = build_report(
            to_absolute_path(str(cfg.out_dir)),  # relative to where the user ran the command
            to_absolute_path(str(cfg.results_dir)),
            None if cfg.experiment is None else str(cfg.experiment),
            _tolerance(cfg.tolerance),
        )
    except DyLoRAError as e:
        _fail(e)
    for name, paths in written.items():
        print(f"{name}: wrote {len(paths)} files to {paths[0].parent}")
        for path in paths:
            print(f"  {path.name}")
        _print_finding(paths[0].parent / "finding.csv")


def _print_finding(path: Path) -> None:
    finding = pd.read_csv(path)
    if not finding.empty:
        held = ", ".join(finding.loc[finding["holds"], "task"]) or "none"
        print(f"  the paper's finding holds on {int(finding['holds'].sum())} of {len(finding)} task(s): {held} "
              f"(see {path.with_suffix('.md').name})")


def main() -> None:
    if not CONF_FILE.is_file():
        _fail(ConfigError(f"{CONF_FILE} is missing; run dylora-report from an editable install of "
                          "the repository (pip install -e .)"))
    ConfigStore.instance().store(name="report", node=OmegaConf.load(CONF_FILE))
    _report()


if __name__ == "__main__":
    main()
