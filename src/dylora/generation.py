"""Beam-search decoding and output post-processing as in the LoRA repo's NLG examples.

Defaults follow LoRA's `gpt2_beam.py` runs: 10 beams, length penalty 0.8, no repeated
4-gram, 64 new tokens. Two things differ from a plain HF `generate` call:

* LoRA bans repeated n-grams among the generated tokens only, while HF's
  `no_repeat_ngram_size` also counts the prompt (which for data-to-text would forbid
  copying entity names from the input). `NoRepeatNGramOnGenerated` does the former.
* LoRA's beam search runs until `max_new_tokens` and keeps the best finished hypothesis;
  HF's `early_stopping="never"` is the equivalent, and is the default here.

Post-processing follows `gpt2_decode.py`: cut at end-of-text and at the first blank line,
strip (`clean_generation`); for DART and WebNLG, hypotheses and references are also
lower-cased and split on non-word characters (its ``--lower --tokenize`` flags), while E2E
text goes to the E2E scorer as is (`postprocess`).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from transformers import LogitsProcessor, LogitsProcessorList, NoRepeatNGramLogitsProcessor

from dylora.errors import ConfigError
from dylora.tasks.nlg import prompt_ids

END_OF_TEXT = "<|endoftext|>"


class NoRepeatNGramOnGenerated(LogitsProcessor):
    """Ban any n-gram that would repeat one already generated; prompt tokens don't count.

    `prompt_length` is the width of the (left-padded) prompt batch passed to `generate`.
    With left padding every row's prompt ends at that column, whatever its own length,
    so generated tokens are exactly ``input_ids[:, prompt_length:]`` in every row and
    every beam.
    """

    def __init__(self, ngram_size: int, prompt_length: int):
        if prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {prompt_length}")
        self.prompt_length = prompt_length
        self._ban = NoRepeatNGramLogitsProcessor(ngram_size)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # HF's processor applied to the generated part alone is exactly LoRA's rule.
        return self._ban(input_ids[:, self.prompt_length :], scores)


# --------------------------------------------------------------------------- post-processing


def clean_generation(text: str) -> str:
    """Cut at end-of-text and at the first blank line, then strip (gpt2_decode.py)."""
    return text.split(END_OF_TEXT)[0].split("\n\n")[0].strip()


def standard_tokenize(text: str) -> str:
    """gpt2_decode.py's `stardard_tokenize`: split off every non-word character."""
    return " ".join(" ".join(re.split(r"(\W)", text)).split())


def postprocess(text: str, task: str) -> str:
    """Text as LoRA scores it, for hypotheses and references alike.

    E2E: cleaned only (the E2E scorer tokenises itself). DART/WebNLG: cleaned, lower-cased,
    tokenised, as LoRA's README runs gpt2_decode.py with ``--tokenize --lower``.
    """
    if task not in ("e2e", "dart", "webnlg"):
        raise ConfigError(f"unknown NLG task {task!r}; choose e2e, dart or webnlg")
    text = clean_generation(text)
    return text if task == "e2e" else standard_tokenize(text.lower())


# --------------------------------------------------------------------------- decoding


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + r for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def _keep_last(ids: list[int], n: int | None) -> list[int]:
    return ids[-n:] if n else ids


def _cut_at(ids: list[int], stop_id: int) -> list[int]:
    return ids[: ids.index(stop_id)] if stop_id in ids else ids


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _generate_chunk(model, tokenizer, rows: list[list[int]], settings: dict, extra) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    input_ids, attention_mask = _left_pad(rows, _pad_id(tokenizer), next(model.parameters()).device)
    width = input_ids.shape[1]
    processors = LogitsProcessorList(extra)
    if settings["no_repeat_ngram_size"] > 0:
        processors.append(NoRepeatNGramOnGenerated(settings["no_repeat_ngram_size"], width))
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_processor=processors,
        do_sample=False,
        num_beams=settings["num_beams"],
        num_return_sequences=1,
        length_penalty=settings["length_penalty"],
        early_stopping=settings["early_stopping"],
        max_new_tokens=settings["max_new_tokens"],
        no_repeat_ngram_size=0,  # never HF's prompt-counting variant
        repetition_penalty=1.0,
        eos_token_id=eos,
        pad_token_id=_pad_id(tokenizer),
    )
    return [_cut_at(row, eos) for row in out[:, width:].tolist()]


def generate_token_ids(
    model,
    tokenizer,
    prompts: list[str],
    *,
    num_beams: int = 10,
    length_penalty: float = 0.8,
    no_repeat_ngram_size: int = 4,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    early_stopping: bool | str = "never",
    max_prompt_tokens: int | None = None,
    logits_processor: Iterable[LogitsProcessor] = (),
) -> list[list[int]]:
    """Beam-search each prompt; return the generated ids up to (excluding) end-of-text.

    `prompts` are `NLGItem.prompt` strings: the end-of-text separator is appended here,
    as in training. `max_prompt_tokens` keeps each prompt's last tokens (LoRA keeps
    seq_len - eval_len). `logits_processor` adds processors (e.g. constraints) before
    the n-gram ban. Results do not depend on `batch_size`.
    """
    if batch_size < 1 or num_beams < 1 or max_new_tokens < 1:
        raise ConfigError("batch_size, num_beams and max_new_tokens must all be >= 1")
    rows = [_keep_last(prompt_ids(tokenizer, p), max_prompt_tokens) for p in prompts]
    settings = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                    no_repeat_ngram_size=no_repeat_ngram_size, max_new_tokens=max_new_tokens)
    # Longest first, so each batch holds prompts of similar length (less padding).
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    results: list[list[int]] = [[] for _ in rows]
    with _eval_mode(model), torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            outs = _generate_chunk(model, tokenizer, [rows[i] for i in chunk], settings, logits_processor)
            for i, ids in zip(chunk, outs):
                results[i] = ids
    return results


def generate_batch(
    model,
    tokenizer,
    prompts: list[str],
    *,
    num_beams: int = 10,
    length_penalty: float = 0.8,
    no_repeat_ngram_size: int = 4,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    early_stopping: bool | str = "never",
    max_prompt_tokens: int | None = None,
    logits_processor: Iterable[LogitsProcessor] = (),
) -> list[str]:
    """`generate_token_ids`, decoded and cleaned (`clean_generation`).

    Apply `postprocess(text, task)` to these and to the references before scoring.
    """
    ids = generate_token_ids(
        model, tokenizer, prompts, num_beams=num_beams, length_penalty=length_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size, max_new_tokens=max_new_tokens,
        batch_size=batch_size, early_stopping=early_stopping,
        max_prompt_tokens=max_prompt_tokens, logits_processor=logits_processor,
    )
    return [clean_generation(tokenizer.decode(row, skip_special_tokens=False)) for row in ids]
