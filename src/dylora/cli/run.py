"""dylora-run: the Hydra app. Composes model x task x method, validates it once, runs it.

    dylora-run task=mrpc method=dylora model=minilm data.glue_dir=../glue
    dylora-run -m method=lora,dylora,dylora_frozen seed=0,1
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dylora.errors import DyLoRAError

CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")
_failures: list[str] = []


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig) -> str | None:
    from dylora.runner import execute
    from dylora.spec import RunSpec

    try:
        spec = RunSpec.from_dict(OmegaConf.to_container(cfg, resolve=True))
        return str(execute(spec))
    except DyLoRAError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(1)
        _failures.append(f"{HydraConfig.get().job.override_dirname or 'job'}: {e}")  # let the other jobs run
        return None


def main() -> None:
    app()
    if _failures:
        print(f"{len(_failures)} job(s) failed:\n" + "\n".join(_failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
