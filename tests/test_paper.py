"""The paper's published numbers: every row parses, lookups return what the CSV prints."""

from pathlib import Path

import pytest

from dylora.errors import ConfigError, DataError
from dylora.lab import paper

REFERENCE = Path("/work/shared/reference/dylora_paper_results.csv")


def test_every_row_parses_with_its_source():
    df = paper.paper_results()
    assert list(df.columns) == list(paper.COLUMNS)
    assert len(df) == 570
    assert df["value"].dtype == float and df["value"].notna().all()
    assert set(df["paper_version"]) == {paper.EACL, paper.WORKSHOP}
    assert (df["table"] != "").all() and (df["rank"] != "").all()


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared reference copy not on this machine")
def test_packaged_copy_equals_the_reference():
    assert paper.PAPER_CSV.read_bytes() == REFERENCE.read_bytes()


def test_paper_results_is_a_copy():
    df = paper.paper_results()
    df.loc[0, "value"] = -1.0
    assert paper.paper_results().loc[0, "value"] != -1.0


def test_a_malformed_value_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "bad.csv"
    lines = paper.PAPER_CSV.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].replace(",89.14,", ",89.1.4,")]) + "\n")
    monkeypatch.setattr(paper, "PAPER_CSV", bad)
    paper._load.cache_clear()
    try:
        with pytest.raises(DataError, match="rows \\[2\\]"):
            paper.paper_results()
    finally:
        paper._load.cache_clear()  # the next test reads the real file again


@pytest.mark.parametrize(
    "args, kwargs, expected",
    [
        # CSV line 101: DyLoRA CoLA rank 3, Table 2
        (("Table 2", "dylora", "cola", "matthews_correlation", 3), {}, 60.97),
        (("Table 2", "DyLoRA", "CoLA", "matthews_corr", "3"), {}, 60.97),
        # line 145: DyLoRA (Frozen) MRPC F1 rank 5
        (("Table 2", "dylora_frozen", "mrpc", "f1", 5), {}, 91.28),
        # line 26: LoRA MNLI rank 1 (the collapse)
        (("Table 2", "lora", "mnli", "accuracy", 1), {}, 34.6),
        # line 489: DyLoRA DART BLEU rank 2, Table 9
        (("Table 9", "dylora", "dart", "bleu", 2), {}, 46.05),
        # lines 565 and 539: the workshop table records one metric per task
        (("Table 1", "dylora", "mrpc", None, 8), {"paper_version": paper.WORKSHOP}, 89.46),
        (("Table 1", "lora", "cola", None, "avg_1_8"), {"paper_version": paper.WORKSHOP}, 32.07),
    ],
)
def test_paper_value_matches_the_csv(args, kwargs, expected):
    assert paper.paper_value(*args, **kwargs) == pytest.approx(expected)


def test_paper_entry_carries_std_and_source():
    entry = paper.paper_entry("Table 2", "dylora", "cola", "matthews_correlation", 3)
    assert entry.std == pytest.approx(2.01)  # "std=2.01" in the CSV's notes
    assert entry.source == f"{paper.EACL} Table 2"
    assert paper.paper_entry("Table 1", "dylora", "mrpc", None, 8, paper.WORKSHOP).std is None


@pytest.mark.parametrize(
    "args",
    [
        ("Table 2", "lora", "synthetic", "accuracy", 1),  # a task the paper never ran
        ("Table 2", "lora", "cola", "matthews_correlation", 9),  # a rank it does not print
        ("Table 2", "lora", "mrpc", "accuracy", 1),  # Table 2 prints MRPC F1 only
        ("Table 1", "dylora_frozen", "mrpc", None, 8),  # the workshop has no frozen rows
    ],
)
def test_absent_numbers_are_none(args):
    version = paper.WORKSHOP if args[3] is None else paper.EACL
    assert paper.paper_value(*args, paper_version=version) is None


def test_unknown_table_names_the_known_ones():
    with pytest.raises(ConfigError, match="Table 42.*eacl2023_arxiv_v2/Table 2"):
        paper.paper_value("Table 42", "lora", "cola", None, 1)


def test_ambiguous_lookup_is_refused():
    # Table 4 has two DyLoRA rows per task and rank, told apart only by p_B in the notes.
    with pytest.raises(ConfigError, match="2 numbers"):
        paper.paper_value("Table 4", "dylora", "cola", "matthews_correlation", 8)


@pytest.mark.parametrize(
    "ours, theirs, to_paper, to_ours",
    [
        ("sst2", "SST-2", paper.paper_task, paper.our_task),
        ("stsb", "STS-B", paper.paper_task, paper.our_task),
        ("dylora_frozen", "DyLoRA (Frozen)", paper.paper_method, paper.our_method),
        ("matthews_correlation", "matthews_corr", paper.paper_metric, paper.our_metric),
    ],
)
def test_name_mapping_both_ways(ours, theirs, to_paper, to_ours):
    assert to_paper(ours) == theirs
    assert to_ours(theirs) == ours


def test_every_csv_label_maps_to_a_config_name():
    df = paper.paper_results()
    tasks = set(df["task"]) - {"Avg", "all"}
    assert {paper.our_task(t) for t in tasks} == set(paper.TASKS)
    table2 = df[df["table"] == "Table 2"]
    assert {paper.our_method(m) for m in set(table2["method"]) - {"Fine-Tune"}} == set(paper.METHODS)


@pytest.mark.parametrize("helper", [paper.paper_task, paper.our_method, paper.paper_metric])
def test_unknown_name_is_named_in_the_error(helper):
    with pytest.raises(ConfigError, match="'nonsense'"):
        helper("nonsense")
