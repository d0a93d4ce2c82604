"""E2E, DART and WebNLG (2017) loading and encoding, as in the LoRA repo's GPT-2 setup.

Prompts are built exactly as microsoft/LoRA `examples/NLG/src/format_converting_*.py`:

* E2E: each line of `train.txt`/`valid.txt`/`test.txt` is ``"<mr>||<text>"``; the prompt
  is the MR part as written (``"name : X | Type : pub ..."``).
* DART: ``"s : r : o | s : r : o"`` over the tripleset, relation lower-cased.
* WebNLG: the same over `modifiedtripleset` (relation case kept); only lexicalisations
  whose comment is ``"good"`` are used.

Training pairs are one per reference. Evaluation items group every reference with the
same prompt string, in order of first appearance, as `gpt2_decode.py` does (it keys its
reference dictionary by the context string).

`encode_for_lm` follows `gpt2_encode.py` + `data_utils.FT_Dataset`: the model sees
``prompt <|endoftext|> " "+target <|endoftext|>`` and the loss covers only the target and
its closing end-of-text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch

from dylora.errors import ConfigError, DataError

TASKS = ("e2e", "dart", "webnlg")
SPLITS = ("train", "validation", "test")

# WebNLG 2017: the test set's "seen" categories are the 10 training categories
# (list from LoRA's format_converting_webnlg.py).
WEBNLG_SEEN_CATEGORIES = frozenset(
    {
        "Airport", "Astronaut", "Building", "City", "ComicsCharacter",
        "Food", "Monument", "SportsTeam", "University", "WrittenWork",
    }
)

# Layout of LoRA's examples/NLG/data/ directory: task -> (subdirectory, split -> file).
LOCAL_FILES = {
    "e2e": ("e2e", {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}),
    "dart": (
        "dart",
        {s: f"dart-v1.1.1-full-{f}.json" for s, f in
         (("train", "train"), ("validation", "dev"), ("test", "test"))},
    ),
    "webnlg": (
        "webnlg_challenge_2017",
        {"train": "train.json", "validation": "dev.json", "test": "test.json"},
    ),
}

_WHERE_TO_GET = {
    "e2e": "https://github.com/microsoft/LoRA/tree/main/examples/NLG/data/e2e",
    "dart": "https://github.com/Yale-LILY/dart/tree/master/data/v1.1.1",
    "webnlg": "https://github.com/microsoft/LoRA/tree/main/examples/NLG/data/webnlg_challenge_2017",
}

IGNORE_INDEX = -100


@dataclass(frozen=True)
class NLGPair:
    """One training example: a linearised input and one reference text."""

    prompt: str
    target: str


@dataclass(frozen=True)
class NLGItem:
    """One evaluation item: a linearised input and all its references.

    `category`/`seen` are set for WebNLG only (seen = one of the 10 training categories).
    """

    prompt: str
    references: list[str] = field(default_factory=list)
    category: str | None = None
    seen: bool | None = None


# --------------------------------------------------------------------------- linearising


def linearise_triples(triples: Iterable[tuple[str, str, str]], *, lower_relation: bool) -> str:
    """``"s : r : o | s : r : o"``; DART lower-cases the relation, WebNLG does not."""
    return " | ".join(
        f"{s} : {r.lower() if lower_relation else r} : {o}" for s, r, o in triples
    )


def split_e2e_line(line: str, where: str) -> tuple[str, str]:
    """``"<mr>||<text>"`` -> (mr, text), stripped like LoRA's converter."""
    parts = line.strip().split("||")
    if len(parts) != 2:
        raise DataError(
            f"{where}: expected one '||' between the meaning representation and the text "
            f"(LoRA E2E format 'name : X | Type : Y||text'), got: {line.strip()[:80]!r}"
        )
    return parts[0], parts[1]


# --------------------------------------------------------------------------- raw records
# Every reader yields (prompt, reference, category) records in file order.

Record = tuple[str, str, Optional[str]]


def _not_utf8(path: Path) -> DataError:
    """The error for a data file that is not UTF-8: its first undecodable byte, by offset and line."""
    data = path.read_bytes()
    try:
        data.decode("utf8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return DataError(f"{path}:{line}: byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8 text; re-save "
                         "the file as UTF-8 or download it again")
    return DataError(f"{path} is not UTF-8 text; re-save it as UTF-8 or download it again")


def _read_e2e(path: Path) -> Iterator[Record]:
    try:
        with path.open(encoding="utf8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    mr, text = split_e2e_line(line, f"{path}:{lineno}")
                    yield mr, text, None
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf8") as f:
            return json.load(f)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); re-download the file") from e


def _dart_records(entries: Any, where: str) -> Iterator[Record]:
    if not isinstance(entries, list):
        raise DataError(f"{where}: expected a JSON list of DART entries")
    for i, entry in enumerate(entries):
        try:
            prompt = linearise_triples(entry["tripleset"], lower_relation=True)
            texts = [a["text"] for a in entry["annotations"]]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(
                f"{where}: entry {i} is not a DART entry with 'tripleset' "
                f"([subject, relation, object] lists) and 'annotations' ({{'text': ...}}): {e!r}"
            ) from e
        for text in texts:
            yield prompt, text, None


def _webnlg_entry(raw: Any, i: int, where: str) -> dict:
    # LoRA's file wraps entry i as {"<i+1>": {...}}.
    if not (isinstance(raw, dict) and len(raw) == 1):
        raise DataError(f"{where}: entries[{i}] should be a one-key object {{\"{i + 1}\": {{...}}}}")
    return next(iter(raw.values()))


def _webnlg_records(data: Any, where: str) -> Iterator[Record]:
    if not (isinstance(data, dict) and isinstance(data.get("entries"), list)):
        raise DataError(f"{where}: expected a JSON object with an 'entries' list (LoRA WebNLG format)")
    for i, raw in enumerate(data["entries"]):
        entry = _webnlg_entry(raw, i, where)
        try:
            triples = [(t["subject"], t["property"], t["object"]) for t in entry["modifiedtripleset"]]
            good = [lex["lex"] for lex in entry["lexicalisations"] if lex["comment"] == "good"]
            category = entry["category"]
        except (KeyError, TypeError) as e:
            raise DataError(
                f"{where}: entries[{i}] lacks {e} (needs 'category', 'modifiedtripleset' of "
                "subject/property/object, 'lexicalisations' of comment/lex)"
            ) from e
        prompt = linearise_triples(triples, lower_relation=False)
        for text in good:
            yield prompt, text, category


def _read_local(task: str, path: Path) -> Iterator[Record]:
    if task == "e2e":
        return _read_e2e(path)
    if task == "dart":
        return _dart_records(_load_json(path), str(path))
    return _webnlg_records(_load_json(path), str(path))


# --------------------------------------------------------------------------- grouping


def group_references(records: Iterable[Record]) -> list[NLGItem]:
    """One item per distinct prompt (first-appearance order), all its references."""
    items: dict[str, NLGItem] = {}
    for prompt, ref, category in records:
        if prompt not in items:
            seen = None if category is None else category in WEBNLG_SEEN_CATEGORIES
            items[prompt] = NLGItem(prompt, [], category, seen)
        items[prompt].references.append(ref)
    return list(items.values())


def to_pairs(items: Iterable[NLGItem]) -> list[NLGPair]:
    """Flatten evaluation items into (prompt, reference) pairs, e.g. for a validation loss."""
    return [NLGPair(it.prompt, ref) for it in items for ref in it.references]


def select_webnlg(items: list[NLGItem], subset: str) -> list[NLGItem]:
    """WebNLG evaluation subset: ``"all"``, ``"seen"`` or ``"unseen"`` categories."""
    if subset == "all":
        return list(items)
    if subset not in ("seen", "unseen"):
        raise ConfigError(f"WebNLG subset must be 'all', 'seen' or 'unseen', got {subset!r}")
    return [it for it in items if it.seen == (subset == "seen")]


# --------------------------------------------------------------------------- entry point


def local_path(task: str, nlg_dir: str | Path, split: str) -> Path:
    """File for `split`, in DIR/<task dir>/ (LoRA's data/ layout) or directly in DIR."""
    subdir, files = LOCAL_FILES[task]
    root = Path(nlg_dir)
    nested = root / subdir / files[split]
    if nested.exists() or not (root / files[split]).exists():
        return nested
    return root / files[split]


def _check_exists(task: str, path: Path, nlg_dir: str | Path) -> None:
    if not path.is_file():
        subdir, files = LOCAL_FILES[task]
        raise DataError(
            f"{task} {path.name} not found at {path}. Put {', '.join(files.values())} in "
            f"{Path(nlg_dir) / subdir} (source: {_WHERE_TO_GET[task]}), request only the "
            "splits you have, or unset data.nlg_dir to load from the Hugging Face hub."
        )


def _records(task: str, split: str, nlg_dir: str | Path | None) -> Iterator[Record]:
    if nlg_dir is None:
        return hub_records(task, split)
    path = local_path(task, nlg_dir, split)
    _check_exists(task, path, nlg_dir)
    return _read_local(task, path)


def _check_args(task: str, splits: Iterable[str], caps: dict[str, int | None]) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown NLG task {task!r}; choose one of {', '.join(TASKS)}")
    for split in splits:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    for name, cap in caps.items():
        if cap is not None and cap < 1:
            raise ConfigError(f"{name} must be a positive number or unset, got {cap}")


def load_nlg(
    task: str,
    nlg_dir: str | Path | None = None,
    *,
    splits: Iterable[str] = SPLITS,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> dict[str, list]:
    """Load `task` ("e2e", "dart", "webnlg") from LoRA-layout files or the hub.

    Returns ``{"train": [NLGPair...], "validation": [NLGItem...], "test": [NLGItem...]}``
    for the requested `splits`. Caps keep the first N pairs / items (file order).
    """
    splits = tuple(splits)
    _check_args(task, splits, {"max_train_samples": max_train_samples,
                               "max_eval_samples": max_eval_samples})
    out: dict[str, list] = {}
    for split in splits:
        records = _records(task, split, nlg_dir)
        if split == "train":
            out[split] = [NLGPair(p, t) for p, t, _ in records][:max_train_samples]
        else:
            out[split] = group_references(records)[:max_eval_samples]
    return out


# --------------------------------------------------------------------------- hub

# Hub copies of the same data. Their repos hold loading scripts, which `datasets` >= 4
# no longer runs, so we read the hub's automatic parquet export instead.
# task -> (repo, export folder, our split -> hub split).
_SAME_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
_HUB = {
    # Original (uncleaned) E2E, as LoRA; its text is not tokenised like LoRA's files.
    "e2e": ("tuetschek/e2e_nlg", "default", _SAME_SPLITS),
    "dart": ("Yale-LILY/dart", "default", _SAME_SPLITS),
    "webnlg": ("webnlg-challenge/web_nlg", "webnlg_challenge_2017",
               {"train": "train", "validation": "dev", "test": "test"}),
}
_E2E_KEY_NAMES = {"eatType": "Type", "priceRange": "price", "customerrating": "customer rating",
                  "familyFriendly": "family friendly"}


def e2e_mr_to_prompt(mr: str) -> str:
    """Official E2E MR ``"name[X], eatType[pub]"`` -> LoRA's ``"name : X | Type : pub"``."""
    pairs = [part.strip().rstrip("]").split("[", 1) for part in mr.split("],") if part.strip()]
    return " | ".join(f"{_E2E_KEY_NAMES.get(k.strip(), k.strip())} : {v}" for k, v in pairs)


def _columns_to_rows(columns: Any) -> list[dict]:
    # `datasets` stores a sequence of dicts as a dict of lists.
    if isinstance(columns, dict):
        keys = list(columns)
        return [dict(zip(keys, values)) for values in zip(*columns.values())]
    return list(columns)


def hub_row_to_records(task: str, row: dict) -> Iterator[Record]:
    if task == "e2e":
        yield e2e_mr_to_prompt(row["meaning_representation"]), row["human_reference"], None
    elif task == "dart":
        entry = {"tripleset": row["tripleset"], "annotations": _columns_to_rows(row["annotations"])}
        yield from _dart_records([entry], "hub dart row")
    else:
        triples = [t.split(" | ") for t in row["modified_triple_sets"]["mtriple_set"][0]]
        lex = _columns_to_rows(row["lex"])
        entry = {
            "category": row["category"],
            "modifiedtripleset": [dict(zip(("subject", "property", "object"), t)) for t in triples],
            "lexicalisations": [{"comment": x["comment"], "lex": x["text"]} for x in lex],
        }
        yield from _webnlg_records({"entries": [{"1": entry}]}, "hub webnlg row")


def hub_records(task: str, split: str) -> Iterator[Record]:
    """Records from the Hugging Face hub (needs network; never used by the tests)."""
    import datasets

    repo, config, split_names = _HUB[task]
    pattern = f"{config}/{split_names[split]}/*.parquet"
    ds = datasets.load_dataset(
        repo, revision="refs/convert/parquet", data_files={split: pattern}, split=split
    )
    for row in ds:
        yield from hub_row_to_records(task, row)


# --------------------------------------------------------------------------- encoding


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Prompt tokens followed by end-of-text, the separator LoRA puts before the target."""
    return tokenizer.encode(prompt, add_special_tokens=False) + [tokenizer.eos_token_id]


def target_ids(tokenizer, target: str) -> list[int]:
    """``" " + target`` tokens and a closing end-of-text, as LoRA's gpt2_encode.py."""
    return tokenizer.encode(" " + target, add_special_tokens=False) + [tokenizer.eos_token_id]


def encode_for_lm(
    example: NLGPair, tokenizer, max_length: int, *, pad_to_max_length: bool = False
) -> dict[str, list[int]]:
    """input_ids / attention_mask / labels for causal-LM training on one pair.

    Labels are -100 on the prompt and separator (and padding), so the loss covers the
    target and its end-of-text only. Too-long sequences lose their end, as in LoRA.
    """
    context = prompt_ids(tokenizer, example.prompt)
    if len(context) >= max_length:
        raise ConfigError(
            f"prompt of {len(context)} tokens leaves no room for the target within "
            f"max_length={max_length}: raise max_length (prompt: {example.prompt[:60]!r}...)"
        )
    ids = (context + target_ids(tokenizer, example.target))[:max_length]
    labels = [IGNORE_INDEX] * len(context) + ids[len(context):]
    enc = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
    return _pad(enc, max_length, _pad_id(tokenizer)) if pad_to_max_length else enc


def _pad_id(tokenizer) -> int:
    # Real GPT-2 has no pad token; any id works under a zero attention mask.
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _pad(enc: dict[str, list[int]], length: int, pad_id: int) -> dict[str, list[int]]:
    extra = length - len(enc["input_ids"])
    return {
        "input_ids": enc["input_ids"] + [pad_id] * extra,
        "attention_mask": enc["attention_mask"] + [0] * extra,
        "labels": enc["labels"] + [IGNORE_INDEX] * extra,
    }


def collate_lm(features: list[dict[str, list[int]]], pad_token_id: int, multiple: int | None = None
               ) -> dict[str, torch.Tensor]:
    """Right-pad `encode_for_lm` outputs to the longest in the batch (rounded up to ``multiple``), as tensors."""
    length = max(len(f["input_ids"]) for f in features)
    if multiple:
        length = -(-length // multiple) * multiple
    padded = [_pad(f, length, pad_token_id) for f in features]
    return {k: torch.tensor([p[k] for p in padded], dtype=torch.long) for k in padded[0]}
