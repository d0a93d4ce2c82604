"""dylora-run's configuration composed outside the app: ``overrides -> RunSpec``.

The one place besides ``dylora-run`` itself that asks Hydra for a configuration (the reproduce
plan, the search-cost experiment, the benchmarks and the tests use it). The configuration is
the package ``dylora.conf`` (the repository's ``conf/``), so this works from a wheel, from an
editable install and from any working directory.
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Sequence

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import DictConfig, OmegaConf

from dylora.errors import ConfigError, check_folder_name

if TYPE_CHECKING:
    from dylora.spec import RunSpec

CONF_MODULE = "dylora.conf"
# dylora-run's config groups: a choice is a file name of the group (no path), never null (Hydra's own answer
# to task=null is a ValueError traceback)
GROUPS = ("model", "task", "method", "trainer", "logger", "preset", "experiment")


def compose(overrides: Sequence[str], hydra: bool = False) -> DictConfig:
    """The configuration ``dylora-run overrides`` would run (``hydra=True``: with Hydra's own node)."""
    check_overrides(overrides)
    try:
        with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)
    except yaml.YAMLError as e:
        raise ConfigError(yaml_problem(e)) from None


def group_options(group: str) -> list[str]:
    """The choices the package's configuration offers for ``group`` (``--config-dir`` may add more)."""
    folder = files(CONF_MODULE).joinpath(group)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def check_overrides(overrides: Sequence[str]) -> None:
    """A ConfigError, before Hydra composes anything, for a config group override it would take badly: null for
    a group a run needs, or a choice that is a path (``task=../experiment/demo`` reads another group's file)."""
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if override.startswith("-") or not sep or key not in GROUPS:
            continue
        if value.strip() in ("null", "~"):
            none = " (or leave experiment= out: none)" if key == "experiment" else ""
            raise ConfigError(f"{key}=null is not a choice: choose one of {', '.join(group_options(key))}{none}")
        for choice in (c.strip().strip("'\"") for c in value.split(",")):  # a sweep's choices
            try:
                check_folder_name(key, choice)
            except ConfigError:
                raise ConfigError(f"{key}={choice} is not a plain name: a {key} is a file of conf/{key}/ named without "
                                  f"a path; choose one of {', '.join(group_options(key))}") from None


def yaml_problem(error: yaml.YAMLError) -> str:
    """One line for a configuration file PyYAML cannot read: the file, the line and the fix. A tag that would
    build a Python object (``!!python/object/apply:...``) or an unknown one (``!custom``) is refused."""
    mark = getattr(error, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}" if mark is not None else "a configuration file"
    problem = " ".join(str(getattr(error, "problem", None) or error).split())
    tag = re.search(r"tag '([^']*)'", problem)
    if isinstance(error, yaml.constructor.ConstructorError) and tag:
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return (f"{where}: the YAML tag {name} is not allowed: configuration files are plain YAML (tags that "
                "build objects are never read); remove the tag")
    return f"{where}: not valid YAML ({problem}); fix that line"


def compose_config(overrides: Sequence[str]) -> dict[str, Any]:
    """The same, resolved into a plain dict (what ``RunSpec.from_dict`` and the run record take)."""
    return OmegaConf.to_container(compose(overrides), resolve=True)


def compose_spec(overrides: Sequence[str]) -> RunSpec:
    from dylora.spec import RunSpec  # torch: only when a spec is wanted

    return RunSpec.from_dict(compose_config(overrides))
