"""Small E2E / DART / WebNLG files in the LoRA repo's layout, for tests.

`write_nlg_dir(root, task)` writes root/<task dir>/<split files>; pass `root` as
`data.nlg_dir`. Item i of every split has a distinct input with `refs_per_item`
references; file contents depend only on the arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

SPLITS = ("train", "validation", "test")
SEEN_CATEGORY, UNSEEN_CATEGORY = "Airport", "Artist"  # in / not in the 10 seen ones


def e2e_lines(split: str, n_items: int, refs_per_item: int) -> list[str]:
    """Lines ``"<mr>||<text> "``; references of one MR are consecutive, as in LoRA's files."""
    lines = []
    for i in range(n_items):
        mr = f"name : Place {split} {i} | Type : pub | area : riverside | family friendly : yes"
        for j in range(refs_per_item):
            # Trailing space as in LoRA's train.txt; the loader strips it like LoRA does.
            lines.append(f"{mr}||Place {split} {i} is a family friendly pub , version {j} . ")
    return lines


def dart_entries(split: str, n_items: int, refs_per_item: int) -> list[dict]:
    return [
        {
            "tripleset": [
                [f"Tower {split} {i}", "LOCATED_IN", f"City {i}"],
                [f"Tower {split} {i}", "Year_Built", str(1900 + i)],
            ],
            "subtree_was_extended": False,
            "annotations": [
                {"source": "WikiTableQuestions_mturk",
                 "text": f"Tower {split} {i} in City {i} was built in {1900 + i} ({j})."}
                for j in range(refs_per_item)
            ],
        }
        for i in range(n_items)
    ]


def webnlg_entries(split: str, n_items: int, refs_per_item: int) -> dict:
    """Even items in a seen category, odd items in an unseen one; each entry also has one
    'toFix' lexicalisation, which LoRA's converter drops."""
    entries = []
    for i in range(n_items):
        lex = [
            {"comment": "good", "lang": "", "lex": f"Person {i} was born in Town_{i} ({j}).",
             "xml_id": f"Id{j + 1}"}
            for j in range(refs_per_item)
        ]
        lex.append({"comment": "toFix", "lang": "", "lex": "BROKEN", "xml_id": f"Id{refs_per_item + 1}"})
        entry = {
            "category": SEEN_CATEGORY if i % 2 == 0 else UNSEEN_CATEGORY,
            "dbpedialinks": [],
            "lexicalisations": lex,
            "links": [],
            "modifiedtripleset": [
                {"object": f"Town_{i}", "property": "birthPlace", "subject": f"Person_{split}_{i}"},
                {"object": "Astronaut", "property": "occupation", "subject": f"Person_{split}_{i}"},
            ],
            "originaltriplesets": {"originaltripleset": []},
            "shape": "NA",
            "shape_type": "NA",
            "size": "2",
            "xml_id": f"Id{i + 1}",
        }
        entries.append({str(i + 1): entry})
    return {"entries": entries}


_LAYOUT = {
    "e2e": ("e2e", {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}),
    "dart": ("dart", {"train": "dart-v1.1.1-full-train.json", "validation": "dart-v1.1.1-full-dev.json",
                      "test": "dart-v1.1.1-full-test.json"}),
    "webnlg": ("webnlg_challenge_2017", {"train": "train.json", "validation": "dev.json", "test": "test.json"}),
}


def write_nlg_dir(
    root: str | Path,
    task: str,
    n_items: int = 4,
    refs_per_item: int = 2,
    splits: tuple[str, ...] = SPLITS,
) -> Path:
    """Write `task`'s files for `splits` under root/<task dir>/ and return `root`."""
    subdir, files = _LAYOUT[task]
    folder = Path(root) / subdir
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        if task == "e2e":
            text = "".join(line + "\n" for line in e2e_lines(split, n_items, refs_per_item))
        elif task == "dart":
            text = json.dumps(dart_entries(split, n_items, refs_per_item), indent=2)
        else:
            text = json.dumps(webnlg_entries(split, n_items, refs_per_item), indent=4)
        (folder / files[split]).write_text(text, encoding="utf8")
    return Path(root)
