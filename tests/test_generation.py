"""Beam-search decoding and post-processing (dylora.generation) on a tiny random GPT-2."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessor, SuppressTokensLogitsProcessor

from dylora._tiny_bpe import build_tiny_gpt2_tokenizer
from dylora.errors import ConfigError
from dylora.generation import (
    NoRepeatNGramOnGenerated,
    clean_generation,
    generate_batch,
    generate_token_ids,
    postprocess,
)
from dylora.tasks.nlg import prompt_ids

PROMPTS = [
    "name : Red Fox | area : city centre",
    "Oslo : country : Norway",
    "name : The Golden Spoon | Type : restaurant | food : Italian | price : cheap | area : riverside",
    "a",
]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_gpt2_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=len(tok),
        initializer_range=0.3,  # peaked next-token distributions: no near-ties between beams
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(config).eval()


class ScriptBoost(LogitsProcessor):
    """Test helper: push each row to emit a fixed token script after its prompt.

    Adds a large bonus (not -inf elsewhere) so a ban on the scripted token still wins.
    Rows are matched to scripts by their unpadded prompt, so batching order doesn't matter.
    """

    def __init__(self, scripts: dict[tuple[int, ...], list[int]], pad_id: int, bonus: float = 1000.0):
        self.scripts, self.pad_id, self.bonus, self.width = scripts, pad_id, bonus, None

    def __call__(self, input_ids, scores):
        self.width = self.width or input_ids.shape[1]  # first call sees the bare prompt
        step = input_ids.shape[1] - self.width
        scores = scores.clone()
        for row, ids in enumerate(input_ids[:, : self.width].tolist()):
            script = self.scripts.get(tuple(t for t in ids if t != self.pad_id), [])
            if step < len(script):
                scores[row, script[step]] += self.bonus
        return scores


def boost(tok, scripts: dict[str, list[int]]) -> ScriptBoost:
    return ScriptBoost({tuple(prompt_ids(tok, p)): s for p, s in scripts.items()}, tok.pad_token_id)


def hf_generate(model, tok, ids, processors, **kw):
    """Plain HF beam search on one unpadded prompt; generated ids up to end-of-text."""
    out = model.generate(
        input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        logits_processor=processors, do_sample=False, num_beams=4, length_penalty=0.8,
        early_stopping="never", max_new_tokens=12, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **kw,
    )[0, len(ids):].tolist()
    return out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out


def ngrams(ids: list[int], n: int = 4) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def repeated_ngrams(ids: list[int], n: int = 4) -> list[tuple[int, ...]]:
    grams = ngrams(ids, n)
    return sorted({g for g in grams if grams.count(g) > 1})


# ---------------------------------------------------------------- the n-gram processor


def test_processor_bans_exactly_the_generated_ngram_continuations():
    gen = torch.Generator().manual_seed(1)
    width, vocab = 5, 4  # small vocab: many repeats, in prompts and generations
    for length in range(width, width + 12):
        ids = torch.randint(0, vocab, (6, length), generator=gen)
        ids[3, :2] = 9  # left padding in some rows must not matter
        scores = torch.zeros(6, 10)
        out = NoRepeatNGramOnGenerated(3, width)(ids, scores.clone())
        for row in range(6):
            gen_ids = ids[row, width:].tolist()
            banned = {gen_ids[i + 2] for i in range(len(gen_ids) - 2) if gen_ids[i : i + 2] == gen_ids[-2:]}
            assert {t for t in range(10) if out[row, t] == -float("inf")} == banned
            assert (out[row][out[row] != -float("inf")] == 0).all()


def test_prompt_ngram_may_be_copied_unlike_hf_builtin(model, tok):
    prompt = PROMPTS[0]
    ids = prompt_ids(tok, prompt)
    copy = ids[:4]  # a 4-gram of the prompt
    script = {prompt: copy + [tok.eos_token_id]}
    ours = generate_token_ids(model, tok, [prompt], num_beams=4, max_new_tokens=12,
                              logits_processor=[boost(tok, script)])
    assert ours == [copy]
    # HF's built-in counts the prompt, so it must refuse the copy somewhere.
    theirs = hf_generate(model, tok, ids, [boost(tok, script)], no_repeat_ngram_size=4)
    assert tuple(copy) not in ngrams(theirs)


def test_ngram_repeated_within_generation_is_banned(model, tok):
    prompt = PROMPTS[1]
    a, b, c, d = tok.encode(" The Golden Spoon is", add_special_tokens=False)
    script = [a, b, c, d, a, b, c, d, tok.eos_token_id]
    kw = dict(num_beams=4, max_new_tokens=12)
    free = generate_token_ids(model, tok, [prompt], no_repeat_ngram_size=0,
                              logits_processor=[boost(tok, {prompt: script})], **kw)[0]
    assert free == script[:-1] and repeated_ngrams(free) == [(a, b, c, d)]  # the control repeats
    (banned,) = generate_token_ids(model, tok, [prompt], logits_processor=[boost(tok, {prompt: script})], **kw)
    # Beam search deviates from the script at its cheapest point, but never repeats a 4-gram.
    assert banned != free and repeated_ngrams(banned) == []
    assert len(banned) == len(free)  # one token swapped, not a truncated output


# ---------------------------------------------------------------- batching, cutting


def test_batched_equals_one_at_a_time_and_plain_hf(model, tok):
    no_eos = SuppressTokensLogitsProcessor([tok.eos_token_id])  # full-length, non-trivial beams
    kw = dict(num_beams=4, max_new_tokens=12, logits_processor=[no_eos])
    batched = generate_token_ids(model, tok, PROMPTS, batch_size=4, **kw)
    singles = [generate_token_ids(model, tok, [p], batch_size=1, **kw)[0] for p in PROMPTS]
    assert batched == singles
    assert [len(x) for x in batched] == [12] * 4 and len(set(map(tuple, batched))) == 4
    for p, out in zip(PROMPTS, batched):
        ids = prompt_ids(tok, p)
        assert hf_generate(model, tok, ids, [no_eos, NoRepeatNGramOnGenerated(4, len(ids))]) == out


def test_max_prompt_tokens_keeps_the_end_of_the_prompt(model, tok):
    no_eos = SuppressTokensLogitsProcessor([tok.eos_token_id])
    ids = prompt_ids(tok, PROMPTS[2])
    (out,) = generate_token_ids(model, tok, [PROMPTS[2]], num_beams=4, max_new_tokens=12,
                                max_prompt_tokens=6, logits_processor=[no_eos])
    assert out == hf_generate(model, tok, ids[-6:], [no_eos, NoRepeatNGramOnGenerated(4, 6)])


def test_output_cut_at_end_of_text_and_blank_line(model, tok):
    eos = tok.eos_token_id
    short = tok.encode(" Red Fox", add_special_tokens=False)
    blank = tok.encode(" Oslo\n\nNorway", add_special_tokens=False)
    longer = tok.encode(" The Golden Spoon is a cheap restaurant .", add_special_tokens=False)
    scripts = {PROMPTS[0]: short + [eos] + longer, PROMPTS[1]: blank + [eos], PROMPTS[2]: longer + [eos]}
    texts = generate_batch(model, tok, PROMPTS[:3], num_beams=4, max_new_tokens=12,
                           logits_processor=[boost(tok, scripts)])
    assert texts == ["Red Fox", "Oslo", "The Golden Spoon is a cheap restaurant ."]


def test_model_mode_restored_and_bad_settings(model, tok):
    model.train()
    generate_token_ids(model, tok, ["a"], num_beams=2, max_new_tokens=2)
    assert model.training
    model.eval()
    with pytest.raises(ConfigError, match="batch_size"):
        generate_batch(model, tok, ["a"], batch_size=0)


# ---------------------------------------------------------------- post-processing


def test_clean_generation():
    assert clean_generation("  The Vaults is a pub . <|endoftext|> junk") == "The Vaults is a pub ."
    assert clean_generation(" first line\n\nsecond <|endoftext|>") == "first line"
    assert clean_generation("one\nline  ") == "one\nline"


@pytest.mark.parametrize(
    "task, expected",
    [
        ("e2e", "Alimentum, located in the city-centre, isn't cheap!"),
        ("webnlg", "alimentum , located in the city - centre , isn ' t cheap !"),
        ("dart", "alimentum , located in the city - centre , isn ' t cheap !"),
    ],
)
def test_postprocess_by_task(task, expected):
    assert postprocess(" Alimentum, located in the city-centre, isn't cheap!\n\nmore", task) == expected


def test_postprocess_unicode_and_numbers():
    # Python's \w keeps accented letters inside words, as in gpt2_decode.py.
    assert postprocess("Café  Zoë's price: £20-25.", "dart") == "café zoë ' s price : £ 20 - 25 ."
    with pytest.raises(ConfigError, match="unknown NLG task 'xsum'"):
        postprocess("x", "xsum")
