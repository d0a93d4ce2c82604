"""E2E / DART / WebNLG loading and LM encoding (dylora.tasks.nlg)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dylora._tiny_bpe import build_tiny_gpt2_tokenizer
from dylora.errors import ConfigError, DataError
from dylora.tasks.nlg import (
    IGNORE_INDEX,
    NLGItem,
    NLGPair,
    collate_lm,
    e2e_mr_to_prompt,
    encode_for_lm,
    hub_row_to_records,
    load_nlg,
    select_webnlg,
    to_pairs,
)
from nlg_fixtures import write_nlg_dir

REAL_NLG = Path(__file__).resolve().parents[2] / "shared/data/nlg"
SEEN = {"Airport", "Astronaut", "Building", "City", "ComicsCharacter",
        "Food", "Monument", "SportsTeam", "University", "WrittenWork"}


# ---------------------------------------------------------------- LoRA's converters, re-done
# Independent re-statements of format_converting_{e2e,dart,webnlg}.py (context, completion,
# cate) lines and of gpt2_decode.py's grouping (dict keyed by context).

def lora_e2e(path):
    out = []
    for line in open(path, encoding="utf8"):
        items = line.strip().split("||")
        out.append((items[0], items[1].strip("\n"), None))
    return out


def lora_dart(path):
    out = []
    for example in json.load(open(path, encoding="utf8")):
        src = " | ".join("{} : {} : {}".format(s, r.lower(), o) for s, r, o in example["tripleset"])
        out += [(src, sent["text"], None) for sent in example["annotations"]]
    return out


def lora_webnlg(path):
    out = []
    for i, example in enumerate(json.load(open(path, encoding="utf8"))["entries"]):
        e = example[str(i + 1)]
        src = " | ".join("{} : {} : {}".format(t["subject"], t["property"], t["object"])
                         for t in e["modifiedtripleset"])
        out += [(src, s["lex"], e["category"] in SEEN) for s in e["lexicalisations"] if s["comment"] == "good"]
    return out


def lora_grouped(lines):
    refer = {}
    for context, completion, cate in lines:
        refer.setdefault(context, ([], cate))[0].append(completion)
    return [(ctx, refs, cate) for ctx, (refs, cate) in refer.items()]


def as_tuples(items):
    return [(it.prompt, it.references, it.seen) for it in items]


LORA = {"e2e": lora_e2e, "dart": lora_dart, "webnlg": lora_webnlg}
FILES = {"e2e": ("e2e", "train.txt", "valid.txt"),
         "dart": ("dart", "dart-v1.1.1-full-train.json", "dart-v1.1.1-full-dev.json"),
         "webnlg": ("webnlg_challenge_2017", "train.json", "dev.json")}


# ---------------------------------------------------------------- fixtures in each format

@pytest.mark.parametrize("task", ["e2e", "dart", "webnlg"])
def test_fixture_matches_lora_converter(tmp_path, task):
    write_nlg_dir(tmp_path, task, n_items=3, refs_per_item=2)
    data = load_nlg(task, tmp_path)
    subdir, train_file, dev_file = FILES[task]
    expected_train = LORA[task](tmp_path / subdir / train_file)
    assert [(p.prompt, p.target) for p in data["train"]] == [(c, t) for c, t, _ in expected_train]
    assert as_tuples(data["validation"]) == lora_grouped(LORA[task](tmp_path / subdir / dev_file))
    assert len(data["validation"]) == 3 and all(len(it.references) == 2 for it in data["validation"])


def test_e2e_prompt_and_references_literal(tmp_path):
    write_nlg_dir(tmp_path, "e2e", n_items=2, refs_per_item=2)
    item = load_nlg("e2e", tmp_path, splits=["test"])["test"][1]
    assert item == NLGItem(
        "name : Place test 1 | Type : pub | area : riverside | family friendly : yes",
        ["Place test 1 is a family friendly pub , version 0 .",
         "Place test 1 is a family friendly pub , version 1 ."],
    )


def test_e2e_groups_repeated_mr_even_when_not_consecutive(tmp_path):
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "valid.txt").write_text("A : 1||x\nB : 2||y\nA : 1||z\n", encoding="utf8")
    items = load_nlg("e2e", tmp_path, splits=["validation"])["validation"]
    assert items == [NLGItem("A : 1", ["x", "z"]), NLGItem("B : 2", ["y"])]


def test_dart_prompt_lowercases_relation(tmp_path):
    write_nlg_dir(tmp_path, "dart", n_items=1, refs_per_item=1)
    (pair,) = load_nlg("dart", tmp_path, splits=["train"])["train"]
    assert pair == NLGPair("Tower train 0 : located_in : City 0 | Tower train 0 : year_built : 1900",
                           "Tower train 0 in City 0 was built in 1900 (0).")


def test_webnlg_prompt_good_lexicalisations_and_seen_flags(tmp_path):
    write_nlg_dir(tmp_path, "webnlg", n_items=4, refs_per_item=2)
    test = load_nlg("webnlg", tmp_path, splits=["test"])["test"]
    assert test[1] == NLGItem(
        "Person_test_1 : birthPlace : Town_1 | Person_test_1 : occupation : Astronaut",
        ["Person 1 was born in Town_1 (0).", "Person 1 was born in Town_1 (1)."],
        category="Artist", seen=False,
    )
    assert [it.seen for it in test] == [True, False, True, False]
    assert [it.prompt for it in select_webnlg(test, "seen")] == [test[0].prompt, test[2].prompt]
    assert [it.prompt for it in select_webnlg(test, "unseen")] == [test[1].prompt, test[3].prompt]
    assert select_webnlg(test, "all") == test
    with pytest.raises(ConfigError, match="'some'"):
        select_webnlg(test, "some")


def test_splits_and_caps(tmp_path):
    # DART train is often missing: asking only for the evaluation splits must work.
    write_nlg_dir(tmp_path, "dart", n_items=5, refs_per_item=2, splits=("validation", "test"))
    data = load_nlg("dart", tmp_path, splits=["validation", "test"], max_eval_samples=2)
    assert set(data) == {"validation", "test"}
    assert [len(v) for v in data.values()] == [2, 2]
    write_nlg_dir(tmp_path, "e2e", n_items=5, refs_per_item=2)
    train = load_nlg("e2e", tmp_path, splits=["train"], max_train_samples=3)["train"]
    assert train == load_nlg("e2e", tmp_path, splits=["train"])["train"][:3]


def test_to_pairs_flattens_references():
    items = [NLGItem("p", ["a", "b"]), NLGItem("q", ["c"])]
    assert to_pairs(items) == [NLGPair("p", "a"), NLGPair("p", "b"), NLGPair("q", "c")]


def test_e2e_mr_to_prompt_hub_format():
    mr = "name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5], familyFriendly[no]"
    assert e2e_mr_to_prompt(mr) == (
        "name : The Vaults | Type : pub | price : more than £30 | customer rating : 5 out of 5 | family friendly : no"
    )


def test_hub_rows_map_to_the_same_records():
    # Row shapes as in the hub dataset cards; `datasets` turns a list of dicts into a dict of lists.
    dart = {"tripleset": [["Mars Hill College", "JOINED", "1973"]], "subtree_was_extended": True,
            "annotations": {"source": ["WikiSQL_decl_sents"], "text": ["A school joined in 1973."]}}
    assert list(hub_row_to_records("dart", dart)) == [
        ("Mars Hill College : joined : 1973", "A school joined in 1973.", None)]
    webnlg = {"category": "Airport", "size": 1,
              "modified_triple_sets": {"mtriple_set": [["Aarhus | leaderName | Jacob_Bundsgaard"]]},
              "lex": {"comment": ["good", "toFix"], "lid": ["Id1", "Id2"], "lang": ["", ""],
                      "text": ["The leader of Aarhus is Jacob Bundsgaard.", "BROKEN"]}}
    assert list(hub_row_to_records("webnlg", webnlg)) == [
        ("Aarhus : leaderName : Jacob_Bundsgaard", "The leader of Aarhus is Jacob Bundsgaard.", "Airport")]
    e2e = {"meaning_representation": "name[Alimentum], area[city centre]", "human_reference": "Hi."}
    assert list(hub_row_to_records("e2e", e2e)) == [("name : Alimentum | area : city centre", "Hi.", None)]


# ---------------------------------------------------------------- bad input

def test_missing_file_names_path_and_source(tmp_path):
    write_nlg_dir(tmp_path, "dart", splits=("validation", "test"))
    with pytest.raises(DataError) as err:
        load_nlg("dart", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "dart" / "dart-v1.1.1-full-train.json") in msg
    assert "github.com/Yale-LILY/dart" in msg and "nlg_dir" in msg


def test_malformed_e2e_line_reports_file_and_line(tmp_path):
    write_nlg_dir(tmp_path, "e2e", n_items=1, refs_per_item=2)
    path = tmp_path / "e2e" / "valid.txt"
    path.write_text(path.read_text(encoding="utf8") + "name : X | area : riverside\n", encoding="utf8")
    with pytest.raises(DataError, match=rf"{path}:3: expected one '\|\|'"):
        load_nlg("e2e", tmp_path, splits=["validation"])


def test_invalid_json_reports_file_and_line(tmp_path):
    (tmp_path / "webnlg_challenge_2017").mkdir()
    path = tmp_path / "webnlg_challenge_2017" / "dev.json"
    path.write_text('{"entries": [\n  {"1": }\n]}', encoding="utf8")
    with pytest.raises(DataError, match=rf"{path}:2: invalid JSON"):
        load_nlg("webnlg", tmp_path, splits=["validation"])


def test_bad_dart_entry_names_entry(tmp_path):
    write_nlg_dir(tmp_path, "dart", n_items=2, splits=("validation",))
    path = tmp_path / "dart" / "dart-v1.1.1-full-dev.json"
    entries = json.loads(path.read_text(encoding="utf8"))
    del entries[1]["tripleset"]
    path.write_text(json.dumps(entries), encoding="utf8")
    with pytest.raises(DataError, match=r"entry 1 is not a DART entry"):
        load_nlg("dart", tmp_path, splits=["validation"])


def test_bad_webnlg_entry_names_entry(tmp_path):
    write_nlg_dir(tmp_path, "webnlg", n_items=2, splits=("validation",))
    path = tmp_path / "webnlg_challenge_2017" / "dev.json"
    data = json.loads(path.read_text(encoding="utf8"))
    del data["entries"][1]["2"]["category"]
    path.write_text(json.dumps(data), encoding="utf8")
    with pytest.raises(DataError, match=r"entries\[1\] lacks 'category'"):
        load_nlg("webnlg", tmp_path, splits=["validation"])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"task": "xsum"}, "unknown NLG task 'xsum'"),
     ({"task": "e2e", "splits": ["dev"]}, "unknown split 'dev'"),
     ({"task": "e2e", "max_train_samples": 0}, "max_train_samples must be a positive")],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_nlg(nlg_dir=tmp_path, **kwargs)


# ---------------------------------------------------------------- LM encoding

def test_labels_mask_prompt_and_separator_only():
    tok = build_tiny_gpt2_tokenizer()
    pair = NLGPair("name : Red Fox | area : riverside", "Red Fox is in the riverside area .")
    enc = encode_for_lm(pair, tok, max_length=128)
    # Independent: one call over the whole LoRA-style string; special tokens split it.
    full = tok.encode(f"{pair.prompt}<|endoftext|> {pair.target}<|endoftext|>", add_special_tokens=False)
    n_prompt = len(tok.encode(pair.prompt, add_special_tokens=False)) + 1
    assert enc["input_ids"] == full
    assert enc["attention_mask"] == [1] * len(full)
    assert enc["labels"] == [IGNORE_INDEX] * n_prompt + full[n_prompt:]
    assert tok.decode(enc["labels"][n_prompt:]) == f" {pair.target}<|endoftext|>"


def test_padding_and_truncation():
    tok = build_tiny_gpt2_tokenizer()
    pair = NLGPair("Oslo : country : Norway", "Oslo is in Norway .")
    full = encode_for_lm(pair, tok, max_length=128)
    n = len(full["input_ids"])
    padded = encode_for_lm(pair, tok, max_length=n + 3, pad_to_max_length=True)
    assert padded["input_ids"] == full["input_ids"] + [tok.pad_token_id] * 3
    assert padded["attention_mask"] == [1] * n + [0] * 3
    assert padded["labels"] == full["labels"] + [IGNORE_INDEX] * 3
    cut = encode_for_lm(pair, tok, max_length=n - 2)
    assert cut == {k: v[: n - 2] for k, v in full.items()}


def test_prompt_longer_than_max_length_is_a_config_error():
    tok = build_tiny_gpt2_tokenizer()
    pair = NLGPair("name : The Golden Spoon | Type : restaurant | food : Italian", "x")
    with pytest.raises(ConfigError, match="max_length=5"):
        encode_for_lm(pair, tok, max_length=5)


def test_collate_pads_to_longest():
    feats = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
        {"input_ids": [8], "attention_mask": [1], "labels": [8]},
    ]
    batch = collate_lm(feats, pad_token_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["input_ids"].dtype == torch.long


# ---------------------------------------------------------------- the real files

needs_real = pytest.mark.skipif(not REAL_NLG.is_dir(), reason=f"no real NLG data at {REAL_NLG}")


@needs_real
def test_real_e2e_counts_and_grouping():
    data = load_nlg("e2e", REAL_NLG)
    assert len(data["train"]) == 42061
    valid_lines = lora_e2e(REAL_NLG / "e2e" / "valid.txt")
    assert len(valid_lines) == 4672
    assert sum(len(it.references) for it in data["validation"]) == 4672
    assert as_tuples(data["validation"]) == lora_grouped(valid_lines)
    assert len(data["validation"]) == len({mr for mr, _, _ in valid_lines}) == 547
    assert sum(len(it.references) for it in data["test"]) == 4693


@needs_real
def test_real_webnlg_dev_and_test_subsets():
    data = load_nlg("webnlg", REAL_NLG, splits=["validation", "test"])
    dev_path = REAL_NLG / "webnlg_challenge_2017" / "dev.json"
    assert len(json.load(open(dev_path, encoding="utf8"))["entries"]) == 872
    assert as_tuples(data["validation"]) == lora_grouped(lora_webnlg(dev_path))
    test = data["test"]
    assert (len(test), len(select_webnlg(test, "seen")), len(select_webnlg(test, "unseen"))) == (1862, 971, 891)


@needs_real
def test_real_dart_dev():
    dev_path = REAL_NLG / "dart" / "dart-v1.1.1-full-dev.json"
    assert len(json.load(open(dev_path, encoding="utf8"))) == 2768
    items = load_nlg("dart", REAL_NLG, splits=["validation"])["validation"]
    assert as_tuples(items) == lora_grouped(lora_dart(dev_path))
    assert sum(len(it.references) for it in items) == 6980
