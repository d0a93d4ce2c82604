"""Footnotes: the settings the runs used, and every departure from the paper's setup."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterator

from dylora.lab import paper
from dylora.lab.report.experiments import NLG, Experiment, config_value, method_label, method_order, task_order
from dylora.records import RunRecord

# The paper's setup (Table 8 of the EACL paper), to name every departure from it.
PAPER_SETUP = {
    "glue": {"model.name": "roberta-base", "method.r_min": 1, "method.r_max": 8, "method.alpha": 16,
             "trainer.epochs": 30, "trainer.lr": 4e-4, "trainer.batch_size": 32, "seeds": 5, "model.max_length": 512},
    "nlg": {"model.name": "gpt2-medium", "method.r_min": 1, "method.r_max": 4, "method.alpha": 32,
            "trainer.epochs": 5, "trainer.lr": 2e-4, "trainer.batch_size": 8, "seeds": 3, "model.max_length": 512},
}
# Which update rule the paper's label means (EACL Tables 2 and 4).
PAPER_UPDATE_RULE = {"dylora": "all", "dylora_frozen": "frozen"}


def setting_values(runs: list[RunRecord], dotted: str, default: Any = None) -> str:
    """A setting over the runs: "4", or "4 (cola 6, rte 2)" when some tasks' runs (per_task) differ.
    Runs recorded before the setting existed count as ``default`` (None: they are left out)."""
    found: dict[str, set[str]] = {}
    for r in runs:
        value = config_value(r.config, dotted)
        value = default if value is None else value
        if value is not None:
            found.setdefault(r.task, set()).add(str(value).lower() if isinstance(value, bool) else str(value))
    if not found:
        return "unset"
    by_task = {task: "/".join(sorted(found[task])) for task in task_order(found)}
    counts = Counter(by_task.values())
    common = max(sorted(counts), key=counts.__getitem__)  # the most tasks' value; ties: the smallest text
    others = [f"{task} {v}" for task, v in by_task.items() if v != common]
    return f"{common} ({', '.join(others)})" if others else common


def settings_notes(exp: Experiment) -> list[str]:
    """The settings that matter, as recorded in the configs of the runs used."""
    runs = exp.used
    seeds = sorted({r.seed for r in runs})
    lines = [
        f"Settings: model {setting_values(runs, 'model.name')}; preset {setting_values(runs, 'preset')}; "
        f"seeds {', '.join(map(str, seeds)) or 'none'} ({len(seeds)}); "
        f"epochs {setting_values(runs, 'trainer.epochs')}; max_steps {setting_values(runs, 'trainer.max_steps')}; "
        f"lr {setting_values(runs, 'trainer.lr')}; batch size {setting_values(runs, 'trainer.batch_size')}; "
        f"precision {setting_values(runs, 'trainer.precision', 'fp32')} "
        f"(base weights {setting_values(runs, 'model.dtype', 'fp32')}, "
        f"TF32 {setting_values(runs, 'trainer.tf32', False)}); "
        f"max_train_samples {setting_values(runs, 'data.max_train_samples')}; "
        f"max_eval_samples {setting_values(runs, 'data.max_eval_samples')}."
    ]
    fewer = _fewer_seeds(exp, seeds)
    if fewer:
        lines.append(fewer)
    for method in method_order(r.method for r in runs):
        lines.append(_method_settings(method, [r for r in runs if r.method == method]))
    if any(m.truncation == "svd" for r in runs for m in r.metrics):
        lines.append("+ SVD: the same trained run with rank b taken as the top-b singular triplets of each module's "
                     "update s(r_max)·B·A (its best rank-b approximation) instead of the first b rows of A and "
                     "columns of B (the paper's truncation); eval.truncation=svd.")
    return lines


def _fewer_seeds(exp: Experiment, seeds: list[int]) -> str:
    """The tasks and methods run at fewer seeds than the experiment's, each with its seeds ("" when none):
    a mean over fewer seeds is a different estimate, and the tables' ± alone does not say so."""
    by_task: dict[str, list[str]] = {}
    for task in task_order({r.task for r in exp.used}):
        for method in method_order({r.method for r in exp.used if r.task == task}):
            have = exp.seeds(task, method)
            if len(have) < len(seeds):
                by_task.setdefault(task, []).append(f"{method_label(method)} {', '.join(map(str, have))}")
    if not by_task:
        return ""
    return (f"Fewer seeds than {', '.join(map(str, seeds))}: "
            + "; ".join(f"{task} ({'; '.join(methods)})" for task, methods in by_task.items()) + ".")


def _method_settings(method: str, runs: list[RunRecord]) -> str:
    text = (f"{method_label(method)}: "
            f"r {setting_values(runs, 'method.r_min')}..{setting_values(runs, 'method.r_max')}, "
            f"alpha {setting_values(runs, 'method.alpha')}, scaling {setting_values(runs, 'method.scaling')}")
    if all(config_value(r.config, "method.method") == "lora" for r in runs):  # p_B, update rule, masking: DyLoRA's
        return text + "."
    p_b = setting_values(runs, "method.distribution")
    if "geometric" in p_b:
        p_b += f" (p {setting_values(runs, 'method.geometric_p')})"
    # the summed loss only where it was used: records from before method.loss existed read unchanged
    loss = ", loss summed over ranks" if any(config_value(r.config, "method.loss") == "sum" for r in runs) else ""
    per_module = any(config_value(r.config, "method.sampling") == "per_module" for r in runs)
    sampling = ", a rank drawn per module each step" if per_module else ""
    return (text + f", p_B {p_b}, update rule {setting_values(runs, 'method.update_rule')}, "
            f"masking {setting_values(runs, 'method.masking')}{loss}{sampling}.")


def _setup_for(task: str) -> dict[str, Any]:
    return PAPER_SETUP["nlg" if task in NLG else "glue"]


def _model_name(name: Any) -> str:
    return str(name).lower().rsplit("/", 1)[-1]  # "FacebookAI/roberta-base" is roberta-base


def departures(exp: Experiment) -> list[str]:
    """Every way the runs used differ from the paper's setup, one line each."""
    tasks_of: dict[str, set[str]] = {}
    for r in exp.used:
        for line in _run_departures(r):
            tasks_of.setdefault(line, set()).add(r.task)
    every_task = {r.task for r in exp.used}
    seeds = len({r.seed for r in exp.used})
    wanted = max((_setup_for(r.task)["seeds"] for r in exp.used), default=0)
    if seeds < wanted:
        tasks_of[f"{seeds} seed(s) (paper: {wanted})"] = every_task
    return [f"Departure from the paper{_for_tasks(tasks_of[line], every_task)}: {line}." for line in sorted(tasks_of)]


def _for_tasks(tasks: set[str], every_task: set[str]) -> str:
    """Nothing when a departure holds for every task, else the tasks it holds for: " (cola, rte)"."""
    return "" if tasks == every_task else f" ({', '.join(task_order(tasks))})"


def _number(value: Any) -> float | None:
    """A config value as a number; None when unset or not numeric (YAML 1.1 reads 4e-4 as text)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _same(value: Any, expected: float) -> bool:
    number = _number(value)
    return number is not None and math.isclose(number, float(expected))


def _run_departures(r: RunRecord) -> Iterator[str]:
    setup, c = _setup_for(r.task), r.config
    if _model_name(config_value(c, "model.name")) != setup["model.name"]:
        yield f"model {config_value(c, 'model.name')} (paper: {setup['model.name']})"
    for key in ("method.r_min", "method.r_max", "method.alpha", "trainer.lr", "trainer.batch_size"):
        value = config_value(c, key)
        if value is not None and not _same(value, setup[key]):
            yield f"{key} {value} (paper: {setup[key]})"
    epochs = _number(config_value(c, "trainer.epochs"))
    if epochs is not None and epochs < setup["trainer.epochs"]:
        yield f"trainer.epochs {config_value(c, 'trainer.epochs')} (paper: {setup['trainer.epochs']})"
    length = _number(config_value(c, "model.max_length"))
    if length is not None and length < setup["model.max_length"]:  # longer inputs are truncated
        yield f"model.max_length {config_value(c, 'model.max_length')} (paper: {setup['model.max_length']})"
    for key in ("trainer.max_steps", "data.max_train_samples", "data.max_eval_samples"):
        cap = _number(config_value(c, key))
        if cap is not None and cap > 0:  # null or -1 means "no cap"
            yield f"{key} {config_value(c, key)} caps training or evaluation (paper: no cap)"
    precision = config_value(c, "trainer.precision")
    if precision not in (None, "fp32"):
        yield f"trainer.precision {precision}: forward passes under {precision} autocast (paper: fp32)"
    if config_value(c, "model.dtype") not in (None, "fp32"):
        yield f"model.dtype {config_value(c, 'model.dtype')}: frozen base weights stored so (paper: fp32)"
    if config_value(c, "trainer.tf32") is True:
        yield "trainer.tf32 true: TF32 matmuls (paper: fp32 on V100s)"
    if config_value(c, "trainer.group_by_length") is True:
        yield "trainer.group_by_length true: batches of similar length (paper: random batches)"
    if config_value(c, "preset") != "paper":
        yield f"preset {config_value(c, 'preset')} (paper: paper)"
    yield from _method_departures(r)


def _method_departures(r: RunRecord) -> Iterator[str]:
    c, method = r.config, r.method
    if method not in PAPER_UPDATE_RULE:
        return
    rule = config_value(c, "method.update_rule")
    if rule is not None and rule != PAPER_UPDATE_RULE[method]:
        meant = PAPER_UPDATE_RULE[method]
        yield f"{method} with update_rule {rule} (the paper's {paper.METHODS[method]} means {meant})"
    if config_value(c, "method.scaling") not in (None, "rank"):
        yield f"{method} scaling {config_value(c, 'method.scaling')} (paper Eq. 7: alpha/b, scaling=rank)"
    if config_value(c, "method.distribution") not in (None, "uniform"):
        yield f"{method} p_B {config_value(c, 'method.distribution')} (paper default: uniform)"
