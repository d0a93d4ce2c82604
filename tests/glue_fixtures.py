"""Small, realistic GLUE folders for tests, written from scratch (no download).

``write_glue_dir(root)`` writes ``root/<CoLA|SST-2|...>/<train|dev...>.tsv`` in exactly the
layout of GLUE's ``download_glue_data.py``: CoLA without a header, MRPC's header with a UTF-8
byte-order mark, MNLI's parse-tree columns with ``gold_label`` last, STS-B scores as ``%.3f``.
Every 4th text starts with an unpaired ``"`` and every 4th (offset 2) has one inside, so a
reader that honours quoting merges lines and fails.

The texts carry a learnable signal: each class has its own cue words, and an STS-B score is
the number of content words the two sentences share (plus a little noise), so a tiny model
trained on a few hundred rows can beat chance.

``make_examples(task, split, n, seed)`` gives back exactly what ``write_glue_dir`` wrote for a
split, as ``Example(text_a, text_b, label)`` with the hub's label ids (float score for stsb),
so tests can compare what a loader returns against it. Split names are the loader's:
``train``, ``validation`` (MNLI: ``validation_matched``, ``validation_mismatched``).

Usage from another test module (pytest puts ``tests/`` on ``sys.path``)::

    from glue_fixtures import write_glue_dir
    glue_dir = write_glue_dir(tmp_path / "glue", tasks=("sst2",), n_train=200, n_dev=40)
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ALL_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")

# Written independently of dylora.tasks.glue, so that loading these files checks the loader.
DIR_NAMES = {
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP",
    "stsb": "STS-B", "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE",
}
SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv"}
MNLI_SPLIT_FILES = {
    "train": "train.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}
# Label as spelled in each file, by hub id.
FILE_LABELS = {
    "cola": ("0", "1"), "sst2": ("0", "1"), "mrpc": ("0", "1"), "qqp": ("0", "1"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"), "rte": ("entailment", "not_entailment"),
}
# Words that appear only with one class: the signal a small model can learn.
CUES = {
    "cola": (("himself", "been had"), ("quietly", "the old")),
    "sst2": (("dull", "awful", "boring"), ("great", "wonderful", "moving")),
    "mrpc": (("however", "unlike"), ("likewise", "similarly")),
    "qqp": (("instead", "versus"), ("same", "equivalent")),
    "mnli": (("indeed", "certainly"), ("perhaps", "maybe"), ("never", "nobody")),
    "qnli": (("because", "answer"), ("although", "unrelated")),
    "rte": (("indeed", "certainly"), ("never", "nobody")),
}
WORDS = (
    "report committee river village teacher market engine garden council doctor letter window "
    "morning station company winter museum bridge farmer signal harbor program student budget "
    "painter soldier library kitchen airport vote storm ticket"
).split()
PAIR_TASKS = ("mrpc", "qqp", "stsb", "mnli", "qnli", "rte")


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None  # None for cola and sst2
    label: int | float  # hub class id, or the stsb score as written (3 decimals)


def split_files(task: str) -> dict[str, str]:
    """Split name -> file name in the task folder."""
    return MNLI_SPLIT_FILES if task == "mnli" else SPLIT_FILES


def make_examples(task: str, split: str, n: int, seed: int = 0) -> list[Example]:
    """The ``n`` examples ``write_glue_dir(..., seed=seed)`` writes for ``task``/``split``."""
    if split not in split_files(task):
        raise ValueError(f"{task} has no split {split!r}; it has {list(split_files(task))}")
    rng = random.Random(f"{seed}/{task}/{split}")  # str seeds are stable across processes
    return [_example(task, i, rng) for i in range(n)]


def write_glue_dir(
    root: Path, tasks: Iterable[str] = ALL_TASKS, n_train: int = 64, n_dev: int = 32, seed: int = 0
) -> Path:
    """Write a GLUE folder for ``tasks`` under ``root`` (created if needed) and return ``root``."""
    if n_train < 1 or n_dev < 1:
        raise ValueError(f"n_train and n_dev must be positive, got {n_train} and {n_dev}")
    root = Path(root)
    for task in tasks:
        folder = root / DIR_NAMES[task]
        folder.mkdir(parents=True, exist_ok=True)
        for split, name in split_files(task).items():
            examples = make_examples(task, split, n_train if split == "train" else n_dev, seed)
            lines = _format_file(task, split, examples)
            (folder / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return root


# ---------------------------------------------------------------------------- text


def _sentence(words: list[str], i: int, sentence_case: bool = True) -> str:
    text = " ".join(words)
    text = text[0].upper() + text[1:] + " ." if sentence_case else text + " "  # SST-2 style: lower, trailing space
    if i % 4 == 0:
        return '" ' + text  # an unpaired quote at the start of a field
    if i % 4 == 2:
        return text.replace(" ", ' " ', 1)  # and one inside
    return text


def _with_cue(rng: random.Random, task: str, label: int, n_words: int) -> list[str]:
    words = rng.sample(WORDS, n_words)
    words.insert(rng.randrange(n_words + 1), rng.choice(CUES[task][label]))
    return words


def _example(task: str, i: int, rng: random.Random) -> Example:
    if task == "stsb":
        return _stsb_example(i, rng)
    label = rng.randrange(len(FILE_LABELS[task]))
    if task not in PAIR_TASKS:
        return Example(_sentence(_with_cue(rng, task, label, rng.randint(3, 9)), i, task != "sst2"), None, label)
    first = rng.sample(WORDS, rng.randint(4, 9))
    second = _with_cue(rng, task, label, rng.randint(3, 7))
    if task == "qnli":  # question, then a sentence that may answer it
        return Example("What " + " ".join(first) + " ?", _sentence(second, i), label)
    return Example(_sentence(first, i), _sentence(second, i + 1), label)


def _stsb_example(i: int, rng: random.Random) -> Example:
    first = rng.sample(WORDS, 5)
    shared = rng.randrange(6)
    second = first[:shared] + rng.sample([w for w in WORDS if w not in first], 5 - shared)
    rng.shuffle(second)
    score = f"{min(5.0, max(0.0, shared + rng.uniform(-0.4, 0.4))):.3f}"
    return Example(_sentence(first, i), _sentence(second, i + 1), float(score))


# ---------------------------------------------------------------------------- file layouts


def _format_file(task: str, split: str, examples: list[Example]) -> list[str]:
    """Header (if any) and data lines of one GLUE TSV file."""
    rows = [_ROW[task](i, ex, split) for i, ex in enumerate(examples)]
    header = _header(task, split)
    return ["\t".join(row) for row in ([header] if header else []) + rows]


def _header(task: str, split: str) -> list[str] | None:
    if task == "mnli":
        judgments = ["label1"] if split == "train" else [f"label{k}" for k in range(1, 6)]
        return [*_MNLI_COLUMNS, *judgments, "gold_label"]
    return _HEADERS[task]


_HEADERS = {
    "cola": None,
    "sst2": ["sentence", "label"],
    "mrpc": ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
    "stsb": "index genre filename year old_index source1 source2 sentence1 sentence2 score".split(),
    "qnli": ["index", "question", "sentence", "label"],
    "rte": ["index", "sentence1", "sentence2", "label"],
}
_MNLI_COLUMNS = (
    "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
    "sentence1_parse sentence2_parse sentence1 sentence2"
).split()


def _file_label(task: str, ex: Example) -> str:
    return f"{ex.label:.3f}" if task == "stsb" else FILE_LABELS[task][ex.label]


def _mnli_row(i: int, ex: Example, split: str) -> list[str]:
    genre = "fiction" if split != "validation_mismatched" else "letters"
    parses = [f"( {ex.text_a} )", f"( {ex.text_b} )", f"(ROOT (S {ex.text_a}))", f"(ROOT (S {ex.text_b}))"]
    gold = _file_label("mnli", ex)
    judgments = [gold] * (1 if split == "train" else 5)
    return [str(i), str(1000 + i), f"{1000 + i}e", genre, *parses, ex.text_a, ex.text_b, *judgments, gold]


_ROW = {
    "cola": lambda i, ex, split: ["gj04", _file_label("cola", ex), "" if ex.label else "*", ex.text_a],
    "sst2": lambda i, ex, split: [ex.text_a, _file_label("sst2", ex)],
    "mrpc": lambda i, ex, split: [
        _file_label("mrpc", ex), str(700000 + 2 * i), str(700001 + 2 * i), ex.text_a, ex.text_b
    ],
    "qqp": lambda i, ex, split: [str(i), str(2 * i + 1), str(2 * i + 2), ex.text_a, ex.text_b, _file_label("qqp", ex)],
    "stsb": lambda i, ex, split: [
        str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", ex.text_a, ex.text_b,
        _file_label("stsb", ex),
    ],
    "mnli": _mnli_row,
    "qnli": lambda i, ex, split: [str(i), ex.text_a, ex.text_b, _file_label("qnli", ex)],
    "rte": lambda i, ex, split: [str(i), ex.text_a, ex.text_b, _file_label("rte", ex)],
}
