"""NLG scores computed the way the official scorers of the LoRA paper's GPT-2 setup compute them.

- ``e2e_metrics``: the E2E NLG Challenge scorer (github.com/tuetschek/e2e-metrics,
  ``measure_scores.py ref pred -p``): BLEU and NIST of its pure-Python MT-Eval port, METEOR,
  ROUGE-L and CIDEr of the MS-COCO caption evaluator.
- ``dart_webnlg_metrics``: the WebNLG/DART scorer of the LoRA repository
  (``examples/NLG/eval/eval.py``, from WebNLG GenerationEval, run with ``-nr 6 -m bleu,meteor,ter``).

Scales follow what those scorers print (see ``METRIC_IMPLEMENTATIONS``): E2E ``bleu`` is 0..1,
DART/WebNLG ``bleu`` is 0..100, ``nist`` and ``cider`` are raw (unbounded), ``meteor``,
``rouge_l`` are 0..1 and ``ter`` is an edit rate (0 best, may exceed 1).

METEOR 1.5 and the Stanford PTB tokenizer are the jars shipped in the ``pycocoevalcap`` wheel
(byte-identical to the ones e2e-metrics bundles) and need a Java runtime (Java 8 or newer).
METEOR runs as one long-lived ``-stdio`` process per Python process: loading its paraphrase
table takes ~10 s, so it is started on first use and reused by later calls (``shutdown_meteor``
stops it; it also stops at interpreter exit). The PTB tokenizer runs once per ``e2e_metrics`` call.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence

from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from dylora.errors import ConfigError, DataError

E2E_METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider")
DART_WEBNLG_METRICS = ("bleu", "meteor", "ter")
# gpt2_decode.py writes --ref_num 6 reference files and eval.py is run with -nr 6.
MAX_DART_WEBNLG_REFS = 6

_E2E_SCORER = "tuetschek/e2e-metrics@1b9c4d8 `measure_scores.py ref pred -p`"
_DART_SCORER = "microsoft/LoRA@c4593f0 examples/NLG/eval/eval.py -nr 6 -m bleu,meteor,ter"
_NO_PUNKT = (
    " Word tokenization is NLTK's word tokenizer per line (nltk.word_tokenize(preserve_line=True)): "
    "the official script first splits sentences with Punkt, a model download this project cannot "
    "rely on. Equal on text whose sentence-final periods are already split off (LoRA's "
    "gpt2_decode.py --tokenize --lower output: 1200 DART test items agreed exactly); on raw "
    "multi-sentence text a period inside it stays on its word (same 1200 items raw: METEOR -0.0005, "
    "TER +0.0044)."
)
_EXACT = "Measured equal (|diff| < 1e-12) on the scorer's example and on 616 E2E test MRs with short and empty outputs."

# Which implementation produced each number, on which scale, and how close it is to the
# official scorer (measured; tests/test_nlg_metrics.py holds official reference numbers).
METRIC_IMPLEMENTATIONS: dict[str, dict[str, str]] = {
    "e2e": {
        "bleu": (
            "0..1 (as the scorer prints it). sacrebleu corpus-BLEU statistics (13a tokenizer, lowercased, "
            f"floor 1e-15), with n-gram totals counted as {_E2E_SCORER} counts them (len-n+1 per output, "
            "negative for very short outputs; an empty output is one unmatched token). "
            + _EXACT + " Differs only when a total is <= 0 (nearly all outputs under 4 tokens): 0.0 here."
        ),
        "nist": (
            f"raw (0..~15). NIST-5 as {_E2E_SCORER} computes it (mteval-v13a definition: information "
            "weights from all references, clipped matches, penalty on the mean reference length), "
            "implemented in this module on sacrebleu's 13a tokenizer, lowercased. " + _EXACT
        ),
        "meteor": (
            "0..1. METEOR 1.5 (pycocoevalcap's jar, -stdio -l en -norm, corpus score of one EVAL) on "
            "Stanford PTBTokenizer 3.4.1 output (-preserveLines -lowerCase, COCO punctuation removed), "
            f"as {_E2E_SCORER}. " + _EXACT
        ),
        "rouge_l": (
            "0..1. pycocoevalcap Rouge (LCS F-measure, beta 1.2, mean over outputs) on the PTB tokens, "
            f"as {_E2E_SCORER}. " + _EXACT
        ),
        "cider": (
            f"raw (0..10). pycocoevalcap Cider (idf from these references) on the PTB tokens, as {_E2E_SCORER}. "
            + _EXACT
        ),
    },
    "dart_webnlg": {
        "bleu": (
            "0..100 (as multi-bleu-detok.perl prints it, unrounded here; it prints 2 decimals). "
            f"sacrebleu corpus BLEU (13a tokenizer, case-sensitive, no smoothing) over the first "
            f"{MAX_DART_WEBNLG_REFS} references, as {_DART_SCORER}. Measured equal to 1e-10 against its "
            "perl script (printf widened) on 1200 DART test items, raw and tokenized."
        ),
        "meteor": (
            f"0..1. METEOR 1.5 (pycocoevalcap's jar, -l en -norm) over the first {MAX_DART_WEBNLG_REFS} "
            f"references, driven in -stdio mode (equal to the file mode of {_DART_SCORER})." + _NO_PUNKT
        ),
        "ter": (
            "0 best, may exceed 1. pyter3 0.3 (the library the official script imports) TER of each output "
            f"against each of its first {MAX_DART_WEBNLG_REFS} references (whitespace tokens after word "
            f"tokenization, case-sensitive): minimum per output, mean over outputs, as {_DART_SCORER} "
            "(not corpus TER; sacrebleu's tercom-style TER differs on 36% of sentences). That script, "
            "given files that end in a newline, also averages in one extra empty line scored 1.0; this "
            "value does not." + _NO_PUNKT
        ),
    },
}

_JAVA_HINT = "install a Java runtime (Debian/Ubuntu: apt-get install -y default-jre-headless)"
# What the PTB tokenizer or METEOR would read as a line break (they work line by line).
_NEWLINES = re.compile("[\r\n\x0b\x0c\x85\u2028\u2029]+")


def e2e_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """E2E scores of ``predictions`` (one per meaning representation) against their reference groups.

    Returns ``{"bleu", "nist", "meteor", "rouge_l", "cider"}`` on the official scorer's scales
    (BLEU 0..1, NIST raw, METEOR 0..1, ROUGE-L 0..1, CIDEr raw); see ``METRIC_IMPLEMENTATIONS``.
    """
    _check_inputs(predictions, references)
    java = _java()
    hyps = [_mteval_tokens(p) for p in predictions]
    refs = [[_mteval_tokens(r) for r in group] for group in references]
    scores = {"bleu": _e2e_bleu(hyps, refs), "nist": _nist(hyps, refs)}
    scores.update(_coco_scores(java, predictions, references))
    return {name: scores[name] for name in E2E_METRICS}


def dart_webnlg_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """DART/WebNLG scores of ``predictions`` against their references (the first 6 of each group).

    Returns ``{"bleu", "meteor", "ter"}`` on the official scorer's scales (BLEU 0..100,
    METEOR 0..1, TER 0 best, mean of per-output minimum over references); see
    ``METRIC_IMPLEMENTATIONS`` for where it can differ from the official script.
    """
    _check_inputs(predictions, references)
    java = _java()
    preds = [_one_line(p) for p in predictions]
    groups = [[_one_line(r) for r in group[:MAX_DART_WEBNLG_REFS]] for group in references]
    hyps_tok = [_word_tokenize(p) for p in preds]
    refs_tok = [[_word_tokenize(r) for r in group] for group in groups]
    return {
        "bleu": _dart_bleu(preds, groups),
        "meteor": _meteor_score(java, hyps_tok, refs_tok),
        "ter": _mean_min_ter(hyps_tok, refs_tok),
    }


# ----------------------------------------------------------------------------- input checks


def _check_inputs(predictions, references) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise DataError("predictions and references must be lists (of strings / of lists of strings), not a string")
    if len(predictions) == 0:
        raise DataError("no predictions to score")
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} predictions but {len(references)} reference groups: they must pair up")
    for i, pred in enumerate(predictions):
        if not isinstance(pred, str):
            raise DataError(f"prediction {i} is {type(pred).__name__}, not str")
    for i, group in enumerate(references):
        if isinstance(group, str) or not isinstance(group, Sequence) or len(group) == 0:
            raise DataError(f"reference group {i} must be a non-empty list of strings, got {group!r}")
        for ref in group:
            if not isinstance(ref, str) or not ref.strip():
                raise DataError(
                    f"reference group {i} holds a blank or non-string reference {ref!r}: leave missing "
                    "references out (groups may differ in size; a blank one would count as an empty "
                    "reference in BLEU's brevity penalty, as GenerationEval's padding does)"
                )


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ConfigError(f"METEOR 1.5 and the PTB tokenizer need `java` on PATH: {_JAVA_HINT}")
    return java


def _require(module: str, pip_name: str):
    """Import ``module`` (a heavy or Java-side dependency) when a metric first needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{module} is missing: pip install {pip_name}") from err


def _one_line(text: str) -> str:
    return _NEWLINES.sub(" ", text)


# ----------------------------------------------------------------------------- BLEU and NIST


def _mteval_tokens(text: str) -> list[str]:
    """mteval-v13a tokenization of the lowercased text, as the E2E scorer's MT-Eval port does it.

    That port turns a text with no tokens into one empty token (``"".split(" ")``), which
    counts in the lengths and matches nothing; ``_NO_TOKENS`` stands for it here.
    """
    return _tokenizer_13a()(text.lower()).split() or [_NO_TOKENS]


_NO_TOKENS = "\x00"


@functools.lru_cache(maxsize=1)
def _tokenizer_13a() -> Tokenizer13a:
    return Tokenizer13a()


def _ref_streams(groups: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference slot, None where a group has fewer."""
    width = max(len(g) for g in groups)
    return [[g[k] if k < len(g) else None for g in groups] for k in range(width)]


def _e2e_bleu(hyps: list[list[str]], refs: list[list[list[str]]]) -> float:
    bleu = BLEU(tokenize="none", smooth_method="floor", smooth_value=1e-15, force=True)
    stats = bleu.corpus_score([" ".join(h) for h in hyps], _ref_streams([[" ".join(r) for r in g] for g in refs]))
    # The E2E scorer adds len-n+1 n-grams per output even when that is negative.
    totals = [t + sum(min(0, len(h) - n) for h in hyps) for n, t in enumerate(stats.totals)]
    if min(totals) <= 0:
        return 0.0
    score = BLEU.compute_bleu(list(stats.counts), totals, stats.sys_len, stats.ref_len, "floor", 1e-15)
    return score.score / 100.0


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _nist(hyps: list[list[str]], refs: list[list[list[str]]], max_n: int = 5) -> float:
    """NIST (Doddington 2002) as mteval-v13a defines it, per the E2E scorer's MT-Eval port."""
    counts: Counter = Counter()  # n-gram -> occurrences in all references; () -> reference words
    for group in refs:
        for ref in group:
            counts[()] += len(ref)
            for n in range(1, max_n + 1):
                counts.update(_ngrams(ref, n))
    info = [0.0] * max_n
    totals = [0] * max_n
    for hyp, group in zip(hyps, refs):
        for n in range(1, max_n + 1):
            totals[n - 1] += len(hyp) - n + 1
            clip = Counter()
            for ref in group:
                clip |= _ngrams(ref, n)
            for gram, count in _ngrams(hyp, n).items():
                hits = min(count, clip[gram])
                if hits:
                    info[n - 1] += hits * math.log2(counts[gram[:-1]] / counts[gram])
    score = sum(i / t for i, t in zip(info, totals) if t != 0)
    sys_len = sum(len(h) for h in hyps)
    avg_ref_len = sum(sum(len(r) for r in g) / len(g) for g in refs)
    return score * _nist_penalty(sys_len, avg_ref_len)


def _nist_penalty(sys_len: int, avg_ref_len: float) -> float:
    if avg_ref_len <= 0 or sys_len <= 0:
        return 0.0
    ratio = sys_len / avg_ref_len
    if ratio >= 1:
        return 1.0
    beta = -math.log(0.5) / math.log(1.5) ** 2  # penalty 0.5 at 2/3 of the reference length
    return math.exp(-beta * math.log(ratio) ** 2)


def _dart_bleu(preds: list[str], groups: list[list[str]]) -> float:
    bleu = BLEU(tokenize="13a", smooth_method="none", force=True)
    return float(bleu.corpus_score(preds, _ref_streams(groups)).score)


# ----------------------------------------------------------------------------- COCO metrics


def _coco_scores(java: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """METEOR, ROUGE-L and CIDEr as e2e-metrics runs the COCO caption evaluator."""
    cider = _require("pycocoevalcap.cider.cider", "pycocoevalcap").Cider()
    rouge = _require("pycocoevalcap.rouge.rouge", "pycocoevalcap").Rouge()
    tokens = _ptb_tokenize(java, list(predictions) + [r for group in references for r in group])
    res = {i: [tokens[i]] for i in range(len(predictions))}
    gts, start = {}, len(predictions)
    for i, group in enumerate(references):
        gts[i], start = tokens[start : start + len(group)], start + len(group)
    return {
        "meteor": _meteor_score(java, [res[i][0] for i in res], [gts[i] for i in res]),
        "rouge_l": float(rouge.compute_score(gts, res)[0]),
        "cider": float(cider.compute_score(gts, res)[0]),
    }


def _ptb_tokenize(java: str, texts: list[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer wrapper, in one JVM run for all texts, in a private temp dir."""
    ptb = _require("pycocoevalcap.tokenizer.ptbtokenizer", "pycocoevalcap")
    jar = os.path.join(os.path.dirname(ptb.__file__), ptb.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.TemporaryDirectory(prefix="dylora-ptb-") as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(_one_line(t) for t in texts))
        cmd = [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path]
        proc = subprocess.run(cmd, capture_output=True)
    lines = proc.stdout.decode("utf-8").split("\n")
    if proc.returncode != 0 or len(lines) < len(texts) or any(lines[len(texts) :]):
        err = proc.stderr.decode("utf-8", errors="replace")[-800:]
        raise ConfigError(f"the PTB tokenizer (java -cp stanford-corenlp-3.4.1.jar) failed: {err}")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS) for line in lines[: len(texts)]]


class _Meteor:
    """A METEOR 1.5 JVM in ``-stdio`` mode (as pycocoevalcap's wrapper drives it)."""

    def __init__(self, java: str):
        meteor = _require("pycocoevalcap.meteor.meteor", "pycocoevalcap")
        here = os.path.dirname(meteor.__file__)
        cmd = [java, "-Dfile.encoding=UTF-8", "-Xmx2G", "-jar", meteor.METEOR_JAR]
        cmd += ["-", "-", "-stdio", "-l", "en", "-norm"]  # pycocoevalcap's flags
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, cwd=here, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._owner = os.getpid()

    def usable(self) -> bool:
        """Running, and started by this process (a forked child must not share its pipes)."""
        return self._owner == os.getpid() and self._proc.poll() is None

    def score(self, hyps: list[str], refs: list[list[str]]) -> float:
        """Corpus METEOR: per-output statistics (best reference), then one EVAL over all of them."""
        try:
            stats = [self._ask("SCORE ||| " + " ||| ".join(_field(r) for r in group) + " ||| " + _field(h))
                     for h, group in zip(hyps, refs)]
            self._send("EVAL ||| " + " ||| ".join(stats))
            for _ in stats:
                self._read()  # per-output scores
            return float(self._read())
        except BaseException:
            self.close()  # never leave unread answers for the next call
            raise

    def _send(self, line: str) -> None:
        try:
            self._proc.stdin.write((line + "\n").encode("utf-8"))
            self._proc.stdin.flush()
        except OSError:
            self._fail()

    def _read(self) -> str:
        line = self._proc.stdout.readline().decode("utf-8").strip()
        if not line:
            self._fail()
        return line

    def _ask(self, line: str) -> str:
        self._send(line)
        return self._read()

    def _fail(self):
        self.close()
        self._stderr.seek(0)
        err = self._stderr.read().decode("utf-8", errors="replace")[-800:]
        raise ConfigError(f"METEOR 1.5 (java -jar meteor-1.5.jar) stopped: {err or 'no output'}")

    def close(self) -> None:
        if self._owner == os.getpid() and self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.kill()
            self._proc.wait()


def _field(text: str) -> str:
    # The stdio protocol separates fields with |||; pycocoevalcap also squeezes double spaces.
    return text.replace("|||", "").replace("  ", " ")


_METEOR: _Meteor | None = None
_METEOR_LOCK = threading.Lock()


def _meteor_score(java: str, hyps: list[str], refs: list[list[str]]) -> float:
    """Corpus METEOR from the shared process, started (again) when there is none."""
    global _METEOR
    with _METEOR_LOCK:
        if _METEOR is None or not _METEOR.usable():
            _METEOR = _Meteor(java)
        return _METEOR.score(hyps, refs)


def shutdown_meteor() -> None:
    """Stop the shared METEOR process (a later call starts a new one)."""
    global _METEOR
    with _METEOR_LOCK:
        if _METEOR is not None:
            _METEOR.close()
            _METEOR = None


atexit.register(shutdown_meteor)


# ----------------------------------------------------------------------------- TER


def _word_tokenize(text: str) -> str:
    nltk_tokenize = _require("nltk.tokenize", "nltk")
    return " ".join(nltk_tokenize.word_tokenize(text, preserve_line=True))


def _mean_min_ter(hyps: list[str], refs: list[list[str]]) -> float:
    """Per output the lowest pyter TER over its references; the mean over outputs (not corpus TER)."""
    pyter = _require("pyter", "pyter3==0.3")

    def ter(hyp: str, ref: str) -> float:
        try:
            return pyter.ter(hyp.split(), ref.split())
        except ZeroDivisionError:  # a reference with no tokens: eval.py scores it 1
            return 1.0

    return sum(min(ter(h, r) for r in group) for h, group in zip(hyps, refs)) / len(hyps)
