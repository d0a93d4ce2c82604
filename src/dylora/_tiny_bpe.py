"""A tiny GPT-2-style tokenizer built offline, for the `tiny-gpt2` test model.

It is a byte-level BPE like GPT-2's (any text encodes, nothing maps to unk), trained on
first use from a small built-in corpus of E2E/DART/WebNLG-like text, so tests and smoke
runs never touch the network. Training is deterministic: same corpus, same
vocabulary, same ids.
"""

from __future__ import annotations

import json
from functools import lru_cache

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"
TINY_VOCAB_SIZE = 768

# Hand-written sentences in the style of the three NLG tasks: the LoRA prompt format
# ("key : value | ..." and "subject : relation : object | ...") and plain references.
_CORPUS = [
    "name : The Golden Spoon | Type : restaurant | food : Italian | price : cheap | area : riverside",
    "name : Blue Lantern | Type : coffee shop | customer rating : 5 out of 5 | family friendly : yes",
    "name : The Old Mill | Type : pub | food : English | price : more than £ 30 | near : Green Park",
    "name : Red Fox | area : city centre | family friendly : no | near : The Bridge Cafe",
    "The Golden Spoon is a cheap Italian restaurant in the riverside area .",
    "Blue Lantern is a family friendly coffee shop with a customer rating of 5 out of 5 .",
    "Near Green Park , The Old Mill pub serves English food for more than £ 30 .",
    "Red Fox is in the city centre near The Bridge Cafe , but it is not family - friendly .",
    "There is a coffee shop called Blue Lantern that has a high customer rating .",
    "The Old Mill is a pub near Green Park . It serves English food and it is expensive .",
    "Riverside Tower : architect : Jane Smith | Riverside Tower : location : Oslo",
    "Oslo : country : Norway | Norway : capital : Oslo | Norway : language : Norwegian",
    "Lake Vale Airport : runwayLength : 2500.0 | Lake Vale Airport : cityServed : Lake Vale",
    "Anna Berg : birthPlace : Bergen | Anna Berg : occupation : Astronaut",
    "Riverside Tower was designed by the architect Jane Smith and is located in Oslo .",
    "Oslo is the capital of Norway , where the language spoken is Norwegian .",
    "Lake Vale Airport serves the city of Lake Vale and has a runway length of 2500.0 .",
    "Anna Berg , who was born in Bergen , worked as an astronaut .",
    "The team : league : Premier League | The team : ground : North Stadium | 1998 : year : season",
    "The team plays in the Premier League and its ground is North Stadium .",
    "In 1998 , the school joined the conference and moved to a new location .",
    "The book was written by John Green and published in 2005 by Harbor Press .",
    "The dish comes from Italy and its main ingredients are rice , cheese and tomato .",
    "A low - priced family restaurant serving Chinese food is located near the river .",
    "It has a rating of 1 out of 5 , the price range is £ 20 - 25 and it is kid friendly .",
    "The university in Dublin has 17,000 students and was founded in 1592 .",
]


def _train_byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[END_OF_TEXT, PAD],
        # All 256 byte symbols, so no text ever needs the unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return tok


def _merges(tok: Tokenizer) -> list[tuple[str, str]]:
    return [tuple(pair) for pair in json.loads(tok.to_str())["model"]["merges"]]


@lru_cache(maxsize=1)
def _build() -> PreTrainedTokenizerFast:
    trained = _train_byte_level_bpe()
    # Rebuild as transformers' GPT-2 tokenizer class so it behaves exactly like the real
    # gpt2 tokenizer (same pre-tokeniser, decoder and special-token handling).
    return GPT2TokenizerFast(
        vocab=trained.get_vocab(),
        merges=_merges(trained),
        unk_token=END_OF_TEXT,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=PAD,
    )


def build_tiny_gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny-gpt2 tokenizer; `len(tok)` is the vocab size to give the model config.

    Built once per process and cached; callers must not mutate it (add tokens, change
    padding side): `generation.generate_batch` pads by hand and needs no such changes.
    """
    return _build()
