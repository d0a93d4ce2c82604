"""dylora-run's configuration composed outside the app: ``overrides -> RunSpec``.

The one place besides ``dylora-run`` itself that asks Hydra for a configuration (the reproduce
plan, the search-cost experiment, the benchmarks and the tests use it). The configuration is
the package ``dylora.conf`` (the repository's ``conf/``), so this works from a wheel, from an
editable install and from any working directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from dylora.spec import RunSpec

CONF_MODULE = "dylora.conf"


def compose(overrides: Sequence[str], hydra: bool = False) -> DictConfig:
    """The configuration ``dylora-run overrides`` would run (``hydra=True``: with Hydra's own node)."""
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def compose_config(overrides: Sequence[str]) -> dict[str, Any]:
    """The same, resolved into a plain dict (what ``RunSpec.from_dict`` and the run record take)."""
    return OmegaConf.to_container(compose(overrides), resolve=True)


def compose_spec(overrides: Sequence[str]) -> RunSpec:
    from dylora.spec import RunSpec  # torch: only when a spec is wanted

    return RunSpec.from_dict(compose_config(overrides))
