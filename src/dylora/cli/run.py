"""dylora-run: the Hydra app. Composes model x task x method, validates it once, runs it.

    dylora-run task=mrpc method=dylora model=minilm data.glue_dir=../glue
    dylora-run -m method=lora,dylora,dylora_frozen seed=0,1
    dylora-run -m hydra/launcher=local_parallel seed=0,1,2,3   # jobs side by side (joblib)
    torchrun --standalone --nproc_per_node=4 -m dylora.run task=mnli   # one run on 4 GPUs

A failed job of a multirun never stops the others; the command exits 1 once they are all done.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dylora.cli.compose import CONF_MODULE, check_overrides, yaml_problem
from dylora.errors import ConfigError, DyLoRAError, os_error_message

_failures: list[str] = []


class JobFailed(CompactHydraException):
    """A multirun job's error, raised where its launcher runs jobs in other processes: Hydra
    reports it (one line) once the batch of jobs is done and exits 1."""


@hydra.main(version_base="1.3", config_path=f"pkg://{CONF_MODULE}", config_name="config")
def app(cfg: DictConfig) -> str | None:
    from dylora.runner import execute
    from dylora.spec import RunSpec

    try:
        spec = RunSpec.from_dict(OmegaConf.to_container(cfg, resolve=True))
        return str(print_rank_summary(execute(spec), spec.adapter.r_min, spec.adapter.r_max))
    except (DyLoRAError, OSError) as error:  # OSError: the environment's (disk full, read-only, ...)
        e = error if isinstance(error, DyLoRAError) else os_error_message(error)
        print(f"error: {e}", file=sys.stderr, flush=True)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(1)
        failure = f"{HydraConfig.get().job.override_dirname or 'job'}: {e}"
        if not HydraConfig.get().launcher._target_.endswith(".BasicLauncher"):
            raise JobFailed(failure) from None
        _failures.append(failure)  # jobs run in this process: let the others run, then report them all
        return None


def main() -> None:
    try:
        check_overrides(sys.argv[1:])  # a group set to null, or to a path: Hydra's traceback otherwise
        problem = out_dir_problem(sys.argv[1:])
    except ConfigError as e:
        problem = str(e)
    if problem:  # Hydra makes its folder under out_dir before the app runs: say it before, in one line
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
    try:
        with _hydra_errors_in_one_line():
            app()
    finally:
        _leave_process_group()
    if _failures:
        print(f"{len(_failures)} job(s) failed:\n" + "\n".join(_failures), file=sys.stderr)
        sys.exit(1)


def out_dir_problem(argv: list[str], default: str = "experiments") -> str | None:
    """Why ``out_dir`` (from the command line, else its default) cannot be written to; None when it can."""
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("out_dir=")]
    value = given[-1] if given else default  # the last one wins, as in Hydra
    path = Path(value).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"out_dir={value}: {existing} is a file, not a folder; choose another out_dir="
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"out_dir={value}: {existing} cannot be written to (read-only or no permission); choose another out_dir="
    try:  # what os.access cannot tell (a pseudo file system such as /sys): make a folder there, and remove it
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".dylora-probe-"))
    except OSError as e:
        return f"out_dir={value}: no folder can be made in {existing} ({e.strerror or e}); choose another out_dir="
    return None


@contextmanager
def _hydra_errors_in_one_line() -> Iterator[None]:
    """What fails while Hydra reads the configuration or makes its folders, before the app runs, as one line
    and exit status 1 instead of Hydra's traceback: a configuration file PyYAML cannot read (a YAML tag such as
    ``!!python/object/apply:...``) and the environment's errors. Hydra runs each of those steps through its
    ``run_and_report``, which prints any exception but its own compact ones as a traceback: each step is wrapped
    meanwhile (hydra-core 1.3)."""
    from hydra._internal import utils as hydra_utils

    original = getattr(hydra_utils, "run_and_report", None)
    if original is None:  # another Hydra: its own reports
        yield
        return

    def run_and_report(func):
        def one_line():
            try:
                return func()
            except yaml.YAMLError as e:
                problem = yaml_problem(e)
            except OSError as e:
                problem = os_error_message(e)
            print(f"error: {problem}", file=sys.stderr, flush=True)
            sys.exit(1)

        return original(one_line)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


def _leave_process_group() -> None:
    """Under torchrun: destroy the process group once all runs are done (torch warns otherwise)."""
    torch_dist = sys.modules.get("torch.distributed")
    if torch_dist is not None and torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def print_rank_summary(run_dir: Path, r_min: int, r_max: int) -> Path:
    """Print the finished run's rank curve in short (``rank_summary``) on stdout, once (the main process under
    torchrun); return ``run_dir``."""
    from dylora.records import read_metrics

    if os.environ.get("RANK", "0") == "0":
        print("\n".join(rank_summary(read_metrics(run_dir), r_min, r_max, run_dir)), flush=True)
    return run_dir


def rank_summary(rows: list, r_min: int, r_max: int, run_dir: Path | str = "") -> list[str]:
    """A table of each truncation's metrics (``records.MetricRow``s): the value at r_min, at r_max, the mean over
    the ranks 1..r_max evaluated, and the adapter off (rank 0, out of the mean); "-" where a rank was not
    evaluated."""
    if not rows:
        return [f"rank curve: no metrics in {run_dir}"]
    values = {(m.truncation, m.split, m.metric, m.rank): m.value for m in rows}
    off = {(m.split, m.metric): m.value for m in rows if m.rank == 0}  # the base model: one value, any truncation
    first = rows[0]
    ranks = sorted({m.rank for m in rows if m.rank > 0})
    over = f"1..{r_max}" if ranks == list(range(1, r_max + 1)) else ", ".join(map(str, ranks))
    header = ["truncation", "split", "metric", f"rank {r_min} (r_min)", f"rank {r_max} (r_max)",
              f"mean over ranks {over}", "adapter off (rank 0)"]
    table = [header]
    for curve in dict.fromkeys((m.truncation, m.split, m.metric) for m in rows):
        ranked = [v for (*c, r), v in values.items() if tuple(c) == curve and r > 0]
        mean = sum(ranked) / len(ranked) if ranked else None
        cells = [values.get((*curve, r_min)), values.get((*curve, r_max)), mean, off.get(curve[1:])]
        table.append([*curve, *("-" if v is None else f"{v:.4f}" for v in cells)])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [f"rank curve of {first.task} {first.method} seed {first.seed} ({run_dir}):"]
    lines += ["  " + "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in table]
    return lines


if __name__ == "__main__":
    main()
