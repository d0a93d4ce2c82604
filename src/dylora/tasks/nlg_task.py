"""E2E, DART and WebNLG as a runner task: GPT-2 training rows, and decoding + scoring at a rank.

Training follows the LoRA repo's GPT-2 setup (``dylora.tasks.nlg``): the loss covers the target
and its end-of-text only, label-smoothed when ``trainer.label_smoothing`` > 0. Evaluation at rank
b beam-searches every evaluation item (``dylora.generation``; the runner has merged the adapter
at b), post-processes hypotheses and references as LoRA's ``gpt2_decode.py`` and scores them:

* E2E: ``e2e_metrics`` -> bleu (0..1), nist (raw), meteor (0..1), rouge_l (0..1), cider (raw);
* DART, WebNLG: ``dart_webnlg_metrics`` -> bleu (0..100, as multi-bleu prints it), meteor (0..1),
  ter (edit rate, lower is better).

Values are recorded as those functions return them; ``dylora.lab.report`` scales them per task.
WebNLG is scored on each category subset as its own split (``test_all``, ``test_seen``,
``test_unseen``). The scored hypotheses are saved as ``<run_dir>/outputs/rank<b>.<split>.txt``
(``rank<b>.svd.<split>.txt`` under the SVD truncation; one line per item) beside
``<split>.references.txt`` (each item's references, then a blank line: the E2E scorer's
multi-reference format), so the official scorers can be run on them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dylora.adapters import get_truncation as truncation
from dylora.errors import ConfigError
from dylora.generation import generate_batch, postprocess
from dylora.precision import pad_multiple
from dylora.records import atomic_write_text
from dylora.tasks.base import TableMetric, TaskData, TaskKind
from dylora.tasks.nlg import (
    IGNORE_INDEX,
    TASKS,
    NLGItem,
    collate_lm,
    encode_for_lm,
    load_nlg,
    local_path,
    select_webnlg,
)

OUTPUTS = "outputs"


def smoothed_lm_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Next-token cross-entropy with label smoothing, averaged over the labelled (target) tokens.

    ``labels`` are unshifted as for HF causal LMs (position t predicts labels[t+1]); -100 is
    ignored. Per token: (1 - eps) * NLL + eps * mean over the vocabulary of -log p, which is LoRA's
    GPT-2 loss (``model.py``, ``label_smooth``) and torch's ``label_smoothing``.
    """
    logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, label_smoothing=smoothing)


def eval_sets(task: str, split: str, items: list[NLGItem], subsets: list[str]) -> dict[str, list[int]]:
    """Recorded split name -> indices into ``items``: WebNLG one per category subset, else the split."""
    if task != "webnlg":
        return {split: list(range(len(items)))}
    return {f"{split}_{s}": _positions(items, select_webnlg(items, s)) for s in subsets}


def _positions(items: list[NLGItem], chosen: list[NLGItem]) -> list[int]:
    keep = {id(it) for it in chosen}  # the same objects; NLGItem holds a list, so it is unhashable
    return [i for i, it in enumerate(items) if id(it) in keep]


def score(task: str, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    from dylora.metrics.nlg import dart_webnlg_metrics, e2e_metrics

    metric = e2e_metrics if task == "e2e" else dart_webnlg_metrics
    return metric(predictions, references)


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _write_references(out: Path, split: str, items: list[NLGItem], task: str) -> None:
    groups = ["\n".join(_one_line(postprocess(r, task)) for r in it.references) + "\n" for it in items]
    atomic_write_text(out / f"{split}.references.txt", "\n".join(groups))


@dataclass(frozen=True)
class NLGOptions:
    """``task.*`` of E2E, DART and WebNLG: which splits to decode, WebNLG's category subsets, and
    the beam search."""

    eval_splits: list[str] = field(default_factory=lambda: ["test"])
    webnlg_subsets: list[str] = field(default_factory=lambda: ["all", "seen", "unseen"])
    num_beams: int = 10
    length_penalty: float = 0.8
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        for name in ("num_beams", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"task.{name}={value!r} must be a positive number")
        if self.no_repeat_ngram_size < 0:
            raise ConfigError(f"task.no_repeat_ngram_size={self.no_repeat_ngram_size!r} must be >= 0 (0: no ban)")
        bad = [s for s in self.eval_splits if s not in ("validation", "test")]
        if bad or not self.eval_splits:
            raise ConfigError(f"task.eval_splits={self.eval_splits!r} must list validation and/or test")
        bad = [s for s in self.webnlg_subsets if s not in ("all", "seen", "unseen")]
        if bad or not self.webnlg_subsets:
            raise ConfigError(f"task.webnlg_subsets={self.webnlg_subsets!r} must list all, seen and/or unseen")


def table_metric(task: str, table: str) -> TableMetric | None:
    """EACL Table 2's shape for NLG (Tables 6 and 9): BLEU on the test set, WebNLG on all categories."""
    if task not in TASKS or table != "table2":
        return None
    return TableMetric("bleu", ("test_all",) if task == "webnlg" else ("test",))


def build_nlg(spec, base, tokenizer, device, run_dir: Path | None = None) -> TaskData:
    t, task = spec.task.options, spec.task.name
    room = spec.model.max_length - t.max_new_tokens
    if room < 2:
        raise ConfigError(
            f"model.max_length={spec.model.max_length} leaves no room for a prompt before "
            f"task.max_new_tokens={t.max_new_tokens} generated tokens: raise model.max_length"
        )
    data = load_nlg(task, spec.data.nlg_dir, splits=("train", *t.eval_splits),
                    max_train_samples=spec.data.max_train_samples, max_eval_samples=spec.data.max_eval_samples)
    train = [encode_for_lm(pair, tokenizer, spec.model.max_length) for pair in data.pop("train")]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    smoothing = spec.trainer.label_smoothing
    loss = partial(smoothed_lm_loss, smoothing=smoothing) if smoothing else None
    decode = partial(generate_batch, tokenizer=tokenizer, num_beams=t.num_beams, length_penalty=t.length_penalty,
                     no_repeat_ngram_size=t.no_repeat_ngram_size, max_new_tokens=t.max_new_tokens,
                     batch_size=spec.trainer.eval_batch_size, max_prompt_tokens=room)
    evaluate = nlg_evaluator(task, data, t.webnlg_subsets, decode, run_dir)
    multiple = pad_multiple(spec.trainer.precision, torch.device(device).type)
    return TaskData(train, partial(collate_lm, pad_token_id=pad, multiple=multiple), evaluate, loss)


def nlg_evaluator(task: str, splits: dict[str, list[NLGItem]], subsets: list[str], decode: Callable,
                  run_dir: Path | None) -> Callable[[nn.Module, int], dict[str, dict[str, float]]]:
    """evaluate(model, rank): decode each split once, then score (and save) every recorded split."""
    out = None if run_dir is None else Path(run_dir) / OUTPUTS
    sets = {split: _non_empty(eval_sets(task, split, items, subsets)) for split, items in splits.items()}

    def evaluate(model: nn.Module, rank: int) -> dict[str, dict[str, float]]:
        results = {}
        for split, items in splits.items():
            hyps = [postprocess(h, task) for h in decode(model, prompts=[it.prompt for it in items])]
            for name, index in sets[split].items():
                preds = [hyps[i] for i in index]
                if out is not None:  # evaluation runs on the main process only: the one writer
                    out.mkdir(parents=True, exist_ok=True)
                    _write_references(out, name, [items[i] for i in index], task)
                    stem = f"rank{rank}" + ("" if truncation(model) == "prefix" else f".{truncation(model)}")
                    atomic_write_text(out / f"{stem}.{name}.txt", "".join(_one_line(p) + "\n" for p in preds))
                refs = [[postprocess(r, task) for r in items[i].references] for i in index]
                results[name] = score(task, preds, refs)
        return results

    return evaluate


def _non_empty(sets: dict[str, list[int]]) -> dict[str, list[int]]:
    """Drop subsets without items (a capped WebNLG test set may hold no unseen category), saying so."""
    for name in [n for n, index in sets.items() if not index]:
        print(f"warning: {name} has no items (data.max_eval_samples too small?); it is not scored", file=sys.stderr)
    return {n: index for n, index in sets.items() if index}


def data_files(spec) -> list[Path]:
    """The files a run reads from ``data.nlg_dir`` (none from the hub)."""
    if spec.data.nlg_dir is None:
        return []
    return [local_path(spec.task.name, spec.data.nlg_dir, split) for split in ("train", *spec.task.options.eval_splits)]


KIND = TaskKind("nlg", "decoder", NLGOptions, lambda task: None, build_nlg, table_metric, data_files)
