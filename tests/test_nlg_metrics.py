"""dylora.metrics.nlg against numbers the OFFICIAL scorers printed (never numbers this code produced).

Where the expected numbers come from
------------------------------------
E2E: tuetschek/e2e-metrics at commit 1b9c4d87fd0bbb171ea966741cdc012588581ed4, Python 3.11,
Java 17, with the METEOR 1.5 / PTB tokenizer jars and paraphrase table of the pycocoevalcap 1.2
wheel (git blob ids equal to the ones the scorer bundles). Inputs from tests/data/nlg_metrics/
cases.json written as the scorer reads them (references one per line, a blank line between
groups; predictions one per line), then

    python measure_scores.py -p e2e_ref.txt e2e_pred.txt          (prints 4 decimals)

and, for the unrounded values, that scorer's own ``load_data`` + ``run_coco_eval`` +
``run_pymteval`` (what ``-p`` prints before rounding).

DART/WebNLG: microsoft/LoRA at commit c4593f060e6a368d7bb5af5273b8e42810cdef90,
examples/NLG/eval/eval.py placed in WebNLG/GenerationEval at commit
80678494f9ae49e8984d78d5efdec482bd37fc1d (as download_evalscript.sh does), nltk 3.5 with the
Punkt English model, pyter3 0.3, the METEOR 1.5 jar above. Inputs written as LoRA's
gpt2_decode.py writes them (files reference0..reference5 holding the first 6 references, padded
with the first one; no trailing newline), then

    python eval.py -R reference -H hyp -nr 6 -m bleu,meteor,ter   (prints 2 decimals)

and, unrounded, that script's ``meteor_score`` / ``ter_score`` functions and its
multi-bleu-detok.perl with the final printf changed from %.2f to %.10f.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dylora.errors import ConfigError, DataError
from dylora.metrics import nlg
from dylora.metrics.nlg import (
    DART_WEBNLG_METRICS,
    E2E_METRICS,
    METRIC_IMPLEMENTATIONS,
    dart_webnlg_metrics,
    e2e_metrics,
)

CASES = json.loads((Path(__file__).parent / "data" / "nlg_metrics" / "cases.json").read_text(encoding="utf-8"))
SHARED_EXAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nlg" / "e2e_scorer_example"

# e2e-metrics on cases.json "e2e" (commands in the module docstring).
# Printed: BLEU 0.5043  NIST 4.7548  METEOR 0.3751  ROUGE_L 0.6567  CIDEr 2.7481
E2E_SMALL = {
    "bleu": 0.5043320971756403,
    "nist": 4.7548190579451175,
    "meteor": 0.37509213097982513,
    "rouge_l": 0.6566567390772218,
    "cider": 2.7480761705164456,
}
# e2e-metrics on its own example-inputs/devel-conc.txt and baseline-output.txt, unrounded
# (same commands). The 4-decimal values in ../shared/.../README.md are checked as well.
E2E_EXAMPLE = {
    "bleu": 0.7202928494322162,
    "nist": 7.788887609555574,
    "meteor": 0.4800716745732023,
    "rouge_l": 0.7909526131515365,
    "cider": 2.303943135258847,
}
# LoRA eval.py on cases.json "dart". Printed: BLEU 41.02  METEOR 0.38  TER 0.49
# (the 5th output's 7th reference equals it; eval.py -nr 6 never sees that reference).
DART_SMALL = {"bleu": 41.0234639556, "meteor": 0.379537025607972, "ter": 0.48571428571428577}
# LoRA eval.py on cases.json "ter_rule". Printed: BLEU 70.71  METEOR 0.48  TER 0.25
TER_RULE = {"bleu": 70.7123355737, "meteor": 0.48152925849722683, "ter": 0.25}


@pytest.fixture(scope="module", autouse=True)
def _stop_meteor():
    yield
    nlg.shutdown_meteor()


def _check(got: dict, want: dict, tol: float) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=tol), name


def _case(name: str) -> tuple[list[str], list[list[str]]]:
    return CASES[name]["predictions"], CASES[name]["references"]


# ----------------------------------------------------------------------------- no Java needed


def test_e2e_bleu_and_nist_match_official_without_java():
    preds, refs = _case("e2e")  # the 3rd output has 2 tokens: n-gram totals go negative there
    hyps = [nlg._mteval_tokens(p) for p in preds]
    toks = [[nlg._mteval_tokens(r) for r in group] for group in refs]
    assert nlg._e2e_bleu(hyps, toks) == pytest.approx(E2E_SMALL["bleu"], abs=1e-12)
    assert nlg._nist(hyps, toks) == pytest.approx(E2E_SMALL["nist"], abs=1e-12)


def test_empty_e2e_output_counts_as_one_unmatched_token():
    # The scorer's MT-Eval port turns "" into [""]: one token in the lengths, matching nothing.
    assert nlg._mteval_tokens("") == nlg._mteval_tokens("  ") == [nlg._NO_TOKENS]
    assert nlg._mteval_tokens("The Eagle, £20.") == ["the", "eagle", ",", "£20", "."]


def test_dart_bleu_matches_official_without_java():
    preds, refs = _case("dart")
    groups = [g[: nlg.MAX_DART_WEBNLG_REFS] for g in refs]
    assert nlg._dart_bleu(preds, groups) == pytest.approx(DART_SMALL["bleu"], abs=1e-9)
    assert round(nlg._dart_bleu(preds, groups), 2) == 41.02


def test_ter_is_mean_over_outputs_of_min_over_references():
    preds, refs = _case("ter_rule")
    hyps = [nlg._word_tokenize(p) for p in preds]
    toks = [[nlg._word_tokenize(r) for r in g] for g in refs]
    ter = nlg._mean_min_ter(hyps, toks)
    assert ter == pytest.approx(TER_RULE["ter"], abs=1e-12)
    # Per output: 1 edit / 14 words and, for the 2nd, min(5/7, 3/7): mean (1/14 + 3/7) / 2 = 0.25.
    # Corpus TER over the same best references is (1 + 3) / (14 + 7) = 0.1905: not what is reported.
    assert ter == pytest.approx((1 / 14 + 3 / 7) / 2)
    assert abs(ter - (1 + 3) / (14 + 7)) > 0.05


def test_ter_of_an_empty_output_is_one():
    assert nlg._mean_min_ter([""], [["a house"]]) == 1.0


def test_every_metric_has_an_implementation_note():
    assert tuple(METRIC_IMPLEMENTATIONS["e2e"]) == E2E_METRICS
    assert tuple(METRIC_IMPLEMENTATIONS["dart_webnlg"]) == DART_WEBNLG_METRICS
    for notes in METRIC_IMPLEMENTATIONS.values():
        assert all(note.strip() for note in notes.values())


@pytest.mark.parametrize("fn", [e2e_metrics, dart_webnlg_metrics])
@pytest.mark.parametrize(
    ("preds", "refs", "message"),
    [
        (["a b"], [["a b"], ["c"]], "1 predictions but 2 reference groups"),
        ([], [], "no predictions"),
        (["a b"], [[]], "non-empty list"),
        (["a b"], ["a b"], "non-empty list of strings"),
        (["a b"], [["a", "  "]], "blank"),
        ([None], [["a"]], "not str"),
        ("a b", [["a b"]], "not a string"),
    ],
)
def test_bad_inputs_raise_data_error(fn, preds, refs, message):
    with pytest.raises(DataError, match=message):
        fn(preds, refs)


@pytest.mark.parametrize("fn", [e2e_metrics, dart_webnlg_metrics])
def test_missing_java_names_the_debian_package(fn, monkeypatch):
    monkeypatch.setattr(nlg.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="default-jre-headless"):
        fn(["a b"], [["a b"]])


# ----------------------------------------------------------------------------- with Java (METEOR)


@pytest.mark.slow
def test_e2e_metrics_match_official_scorer():
    got = e2e_metrics(*_case("e2e"))
    assert list(got) == list(E2E_METRICS)
    _check(got, E2E_SMALL, 1e-12)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_EXAMPLE.is_dir(), reason=f"{SHARED_EXAMPLE} is absent")
def test_e2e_metrics_match_official_scorer_on_its_example():
    # Read as measure_scores.py reads them: stripped lines, blank lines between reference groups.
    groups: list[list[str]] = [[]]
    for line in (SHARED_EXAMPLE / "devel-conc.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            groups[-1].append(line.strip())
        elif groups[-1]:
            groups.append([])
    groups = [g for g in groups if g]
    preds = [line.strip() for line in (SHARED_EXAMPLE / "baseline-output.txt").read_text(encoding="utf-8").splitlines()]
    got = e2e_metrics(preds, groups)
    _check(got, E2E_EXAMPLE, 1e-12)
    # The table of ../shared/data/nlg/e2e_scorer_example/README.md, as the scorer printed it.
    printed = {"bleu": 0.7203, "nist": 7.7889, "meteor": 0.4801, "rouge_l": 0.7910, "cider": 2.3039}
    _check(got, printed, 5e-5)


@pytest.mark.slow
def test_dart_webnlg_metrics_match_official_script():
    got = dart_webnlg_metrics(*_case("dart"))
    assert list(got) == list(DART_WEBNLG_METRICS)
    _check(got, DART_SMALL, 1e-9)
    printed = {"bleu": 41.02, "meteor": 0.38, "ter": 0.49}  # what eval.py printed
    _check(got, printed, 0.005)


@pytest.mark.slow
def test_dart_webnlg_metrics_ter_rule_case():
    _check(dart_webnlg_metrics(*_case("ter_rule")), TER_RULE, 1e-9)
