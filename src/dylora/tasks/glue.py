"""The eight GLUE tasks of the DyLoRA paper, and loading them from the hub or a GLUE TSV folder.

Every split that ``load_glue`` returns has the same columns, whatever the source:

- ``text_a`` (string): the sentence, or the first text of a pair;
- ``text_b`` (string): the second text, **only for pair tasks**. Single-sentence tasks (cola,
  sst2) have no ``text_b`` column at all, so ``"text_b" in ds.column_names`` tells a pair task
  and no consumer has to special-case a column of ``None``;
- ``label``: ``ClassLabel`` with the hub's ``nyu-mll/glue`` names and ids, or ``float32`` for
  stsb (a similarity score in 0..5).
"""

from __future__ import annotations

import csv
import numbers
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import torch

from dylora.errors import DataError
from dylora.precision import pad_multiple
from dylora.tasks.base import NoOptions, TableMetric, TaskData, TaskKind, classification_data, rows

HUB_DATASET = "nyu-mll/glue"
TEXT_COLUMNS = ("text_a", "text_b")
STSB_RANGE = (0.0, 5.0)


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its hub config, its TSV layout, and what it is scored with.

    ``eval_splits[0]`` is the split the paper reports (MNLI: matched); ``primary_metric`` is the
    metric EACL Table 2 prints for the task, ``workshop_metric`` the workshop Table 1's where it
    differs (MRPC: accuracy there, F1 in EACL).
    """

    name: str
    dir_name: str
    hub_config: str
    text_keys: tuple[str, ...]  # hub column names, in text_a, text_b order
    label_names: tuple[str, ...]  # hub ClassLabel names by id; () for regression
    metrics: tuple[str, ...]
    primary_metric: str
    tsv_text_columns: tuple[str, ...]  # TSV column names, in text_a, text_b order
    tsv_label_column: str
    tsv_label_values: tuple[str, ...]  # the label as spelled in the TSV, by id; () for regression
    tsv_headerless_columns: tuple[str, ...] = ()  # column names of a file with no header line
    eval_splits: tuple[str, ...] = ("validation",)
    eval_files: tuple[str, ...] = ("dev.tsv",)
    workshop_metric: str | None = None

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1

    @property
    def is_pair(self) -> bool:
        return len(self.text_keys) == 2

    @property
    def split_files(self) -> dict[str, str]:
        """Split name -> file name inside the task's GLUE folder."""
        return {"train": "train.tsv", **dict(zip(self.eval_splits, self.eval_files))}

    @property
    def features(self) -> datasets.Features:
        label = datasets.Value("float32") if self.is_regression else datasets.ClassLabel(names=list(self.label_names))
        texts = {column: datasets.Value("string") for column in TEXT_COLUMNS[: len(self.text_keys)]}
        return datasets.Features({**texts, "label": label})


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_NLI3 = ("entailment", "neutral", "contradiction")

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask(
            "cola", "CoLA", "cola", ("sentence",), ("unacceptable", "acceptable"),
            ("accuracy", "matthews_correlation"), "matthews_correlation",
            ("sentence",), "label", _BINARY,
            tsv_headerless_columns=("source", "label", "original_judgment", "sentence"),
        ),
        GlueTask(
            "sst2", "SST-2", "sst2", ("sentence",), ("negative", "positive"),
            ("accuracy",), "accuracy", ("sentence",), "label", _BINARY,
        ),
        GlueTask(
            "mrpc", "MRPC", "mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
            ("accuracy", "f1"), "f1", ("#1 String", "#2 String"), "Quality", _BINARY,
            workshop_metric="accuracy",
        ),
        GlueTask(
            "qqp", "QQP", "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
            ("accuracy", "f1"), "accuracy", ("question1", "question2"), "is_duplicate", _BINARY,
        ),
        GlueTask(
            "stsb", "STS-B", "stsb", ("sentence1", "sentence2"), (),
            ("pearson", "spearman"), "pearson", ("sentence1", "sentence2"), "score", (),
        ),
        GlueTask(
            "mnli", "MNLI", "mnli", ("premise", "hypothesis"), _NLI3,
            ("accuracy",), "accuracy", ("sentence1", "sentence2"), "gold_label", _NLI3,
            eval_splits=("validation_matched", "validation_mismatched"),
            eval_files=("dev_matched.tsv", "dev_mismatched.tsv"),
        ),
        GlueTask(
            "qnli", "QNLI", "qnli", ("question", "sentence"), _NLI2,
            ("accuracy",), "accuracy", ("question", "sentence"), "label", _NLI2,
        ),
        GlueTask(
            "rte", "RTE", "rte", ("sentence1", "sentence2"), _NLI2,
            ("accuracy",), "accuracy", ("sentence1", "sentence2"), "label", _NLI2,
        ),
    )
}


def get_task(name: str) -> GlueTask:
    """The task called ``name`` (a config name such as ``sst2``), or a DataError listing them."""
    if name not in GLUE_TASKS:
        raise DataError(f"unknown GLUE task {name!r}; choose one of: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[name]


def load_glue(
    task: str,
    glue_dir: str | Path | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> dict[str, datasets.Dataset]:
    """Splits ``train`` plus ``task.eval_splits``, with the columns described in the module doc.

    ``glue_dir=None`` loads ``nyu-mll/glue`` from the Hugging Face hub; otherwise ``glue_dir``
    is a folder in the layout of GLUE's ``download_glue_data.py`` (``SST-2/train.tsv`` ...).
    ``max_*_samples`` keep the first N rows of each split (N larger than a split keeps it all).
    """
    spec = get_task(task)
    _check_limit("max_train_samples", max_train_samples)
    _check_limit("max_eval_samples", max_eval_samples)
    limits = {"train": max_train_samples, **{split: max_eval_samples for split in spec.eval_splits}}
    if glue_dir is None:
        return _load_hub(spec, limits)
    return _load_tsv_dir(spec, Path(glue_dir), limits)


def tokenize_glue(dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    """Tokenize ``text_a`` (and ``text_b``) into the tokenizer's inputs, and rename label -> labels.

    Sequences are truncated to ``max_length`` but not padded: ``DataCollatorWithPadding`` pads
    each batch to its own longest sequence. ``token_type_ids`` appear when the tokenizer makes
    them (BERT does, RoBERTa does not).
    """
    if not _is_positive_int(max_length):
        raise DataError(f"max_length must be a positive integer, got {max_length!r}")
    texts = [column for column in TEXT_COLUMNS if column in dataset.column_names]
    if not texts:
        raise DataError(f"dataset has no 'text_a' column (it has {dataset.column_names}); load it with load_glue")

    def encode(batch):
        return tokenizer(*(batch[column] for column in texts), truncation=True, max_length=max_length)

    return dataset.map(encode, batched=True, remove_columns=texts).rename_column("label", "labels")


# ---------------------------------------------------------------------------- sources


def _is_positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _check_limit(name: str, value) -> None:
    if value is not None and not _is_positive_int(value):
        raise DataError(f"{name} must be a positive integer (or unset for all rows), got {value!r}")


def _first(dataset: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return dataset if limit is None or limit >= len(dataset) else dataset.select(range(limit))


def _load_hub(spec: GlueTask, limits: dict[str, int | None]) -> dict[str, datasets.Dataset]:
    try:
        raw = datasets.load_dataset(HUB_DATASET, spec.hub_config)
    except OSError as err:  # no network, hub down, not in the offline cache
        raise DataError(
            f"could not load {HUB_DATASET} config {spec.hub_config!r} from the Hugging Face hub ({err}); "
            f"check the network, or set data.glue_dir to a local GLUE folder ({spec.dir_name}/train.tsv ...)"
        ) from err
    splits = {}
    for split, limit in limits.items():
        ds = _first(raw[split], limit).select_columns([*spec.text_keys, "label"])
        ds = ds.rename_columns(dict(zip(spec.text_keys, TEXT_COLUMNS)))
        splits[split] = ds if ds.features == spec.features else ds.cast(spec.features)
    return splits


def _load_tsv_dir(spec: GlueTask, glue_dir: Path, limits: dict[str, int | None]) -> dict[str, datasets.Dataset]:
    task_dir = glue_dir / spec.dir_name
    paths = {split: task_dir / name for split, name in spec.split_files.items()}
    missing = [task_dir] if not task_dir.is_dir() else [p for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"GLUE task {spec.name!r}: missing {', '.join(str(p) for p in missing)}. Either leave data.glue_dir "
            f"unset to load {HUB_DATASET} ({spec.hub_config!r}) from the Hugging Face hub, or point it at a folder "
            f"in the layout of GLUE's download_glue_data.py: {spec.dir_name}/{{{','.join(spec.split_files.values())}}}"
        )
    return {split: _read_split(spec, paths[split], limit) for split, limit in limits.items()}


# ---------------------------------------------------------------------------- TSV reading


def tsv_texts(task: str, path: Path, limit: int | None = None) -> list[tuple[str, ...]]:
    """The text columns (text_a[, text_b]) of the first ``limit`` rows (all when None) of one of ``task``'s GLUE
    TSV files."""
    return [row[:-1] for row in _read_tsv(get_task(task), Path(path), limit)]


def _read_split(spec: GlueTask, path: Path, limit: int | None) -> datasets.Dataset:
    rows = _read_tsv(spec, path, limit)
    if not rows:
        raise DataError(f"{path} has no data rows; it must hold at least one example ({spec.dir_name} layout)")
    columns = {name: list(values) for name, values in zip(spec.features, zip(*rows))}
    return datasets.Dataset.from_dict(columns, features=spec.features)


def _read_tsv(spec: GlueTask, path: Path, limit: int | None) -> list[tuple]:
    """(text_a[, text_b], label) of the first ``limit`` rows of a GLUE TSV file."""
    rows: list[tuple] = []
    # utf-8-sig drops MRPC's byte-order mark; QUOTE_NONE because GLUE text has unpaired quotes,
    # which quoting would take as the start of a multi-line field.
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = spec.tsv_headerless_columns or _read_header(spec, path, reader)
            wanted = [header.index(name) for name in (*spec.tsv_text_columns, spec.tsv_label_column)]
            for fields in reader:
                if limit is not None and len(rows) >= limit:
                    break
                if fields:  # a blank line (such as a trailing one) holds no example
                    rows.append(_parse_row(spec, fields, wanted, len(header), f"{path}, line {reader.line_num}"))
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from err
        except csv.Error as err:
            raise DataError(f"{path}, line {reader.line_num}: unreadable row ({err})") from err
    return rows


def _read_header(spec: GlueTask, path: Path, reader) -> list[str]:
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path} is empty; it must start with the {spec.dir_name} header line")
    missing = [name for name in (*spec.tsv_text_columns, spec.tsv_label_column) if name not in header]
    if missing:
        raise DataError(
            f"{path}, line 1: the header lacks column(s) {', '.join(map(repr, missing))} "
            f"(found {', '.join(map(repr, header))}); expected the GLUE {spec.dir_name} layout"
        )
    return header


def _parse_row(spec: GlueTask, fields: list[str], wanted: list[int], width: int, where: str) -> tuple:
    if len(fields) != width:
        raise DataError(
            f"{where}: expected {width} tab-separated fields, found {len(fields)} "
            "(a tab or line break inside a text?); fix or delete that line"
        )
    *texts, label = (fields[i] for i in wanted)
    return (*texts, _parse_label(spec, label, where))


def _parse_label(spec: GlueTask, raw: str, where: str) -> int | float:
    if not spec.is_regression:
        if raw not in spec.tsv_label_values:
            raise DataError(f"{where}: label {raw!r} is not one of {', '.join(spec.tsv_label_values)}")
        return spec.tsv_label_values.index(raw)
    try:
        score = float(raw)
    except ValueError:
        score = float("nan")
    low, high = STSB_RANGE
    if not low <= score <= high:  # also refuses nan and inf
        raise DataError(f"{where}: score {raw!r} is not a number in {low:g}..{high:g}")
    return score


# ---------------------------------------------------------------------------- the task kind


def table_metric(task: str, table: str) -> TableMetric | None:
    """Workshop Table 1: MNLI the mean of matched and mismatched accuracy, MRPC accuracy; EACL
    Table 2: the primary metric on the split the paper reports."""
    if task not in GLUE_TASKS:
        return None
    spec = GLUE_TASKS[task]
    if table == "table1":
        return TableMetric(spec.workshop_metric or spec.primary_metric, spec.eval_splits)
    return TableMetric(spec.primary_metric, spec.eval_splits[:1])


def glue_metrics(task: str, predictions, labels) -> dict[str, float]:
    """``{metric: value}`` for every metric of ``task`` (``GLUE_TASKS[task].metrics``, in order).

    ``predictions`` are class ids, or floats for stsb (see ``logits_to_predictions``).
    """
    from dylora.metrics.glue import glue_scores

    return glue_scores(get_task(task).metrics, predictions, labels, task)


def logits_to_predictions(task: str, logits) -> np.ndarray:
    """Class ids (argmax over the last axis), or the scores of a regression head (stsb).

    ``logits`` is a numpy array or a torch tensor of shape (n, num_labels); (n,) is also
    accepted for a regression head.
    """
    from dylora.metrics.glue import class_predictions

    spec = get_task(task)
    return class_predictions(logits, spec.num_labels, spec.is_regression, task)


def build(spec, base, tokenizer, device, run_dir=None) -> TaskData:
    """Tokenised GLUE splits (hub or ``data.glue_dir``), scored with the task's GLUE metrics."""
    name = spec.task.name
    splits = load_glue(name, spec.data.glue_dir, spec.data.max_train_samples, spec.data.max_eval_samples)
    tokenized = {split: rows(tokenize_glue(ds, tokenizer, spec.model.max_length)) for split, ds in splits.items()}
    train = tokenized.pop("train")

    return classification_data(train, tokenized, tokenizer, partial(logits_to_predictions, name),
                               partial(glue_metrics, name), spec.trainer.eval_batch_size, device,
                               pad_multiple(spec.trainer.precision, torch.device(device).type))


def data_files(spec) -> list[Path]:
    """The TSV files a run reads from ``data.glue_dir`` (none from the hub)."""
    if spec.data.glue_dir is None:
        return []
    task = get_task(spec.task.name)
    return [Path(spec.data.glue_dir) / task.dir_name / name for name in task.split_files.values()]


KIND = TaskKind("glue", "encoder", NoOptions, lambda task: get_task(task.name).num_labels, build, table_metric,
                data_files)
