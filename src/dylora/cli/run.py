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
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dylora.cli.compose import CONF_MODULE
from dylora.errors import DyLoRAError, os_error_message

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
        return str(execute(spec))
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
    problem = out_dir_problem(sys.argv[1:])
    if problem:  # Hydra makes its folder under out_dir before the app runs: say it before, in one line
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
    try:
        app()
    finally:
        _leave_process_group()
    if _failures:
        print(f"{len(_failures)} job(s) failed:\n" + "\n".join(_failures), file=sys.stderr)
        sys.exit(1)


def out_dir_problem(argv: list[str], default: str = "experiments") -> str | None:
    """Why ``out_dir`` (from the command line, else its default) cannot be written to; None when it can."""
    value = next((a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("out_dir=")), default)
    path = Path(value).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"out_dir={value}: {existing} is a file, not a folder; choose another out_dir="
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"out_dir={value}: {existing} cannot be written to (read-only or no permission); choose another out_dir="
    return None


def _leave_process_group() -> None:
    """Under torchrun: destroy the process group once all runs are done (torch warns otherwise)."""
    torch_dist = sys.modules.get("torch.distributed")
    if torch_dist is not None and torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


if __name__ == "__main__":
    main()
