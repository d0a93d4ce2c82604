"""GLUE metrics against independent computations written here, known values, and edge cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from dylora.errors import DataError
from dylora.tasks.glue import GLUE_TASKS, glue_metrics, logits_to_predictions


def _confusion(labels: np.ndarray, preds: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.sum((preds == 1) & (labels == 1)))
    tn = int(np.sum((preds == 0) & (labels == 0)))
    fp = int(np.sum((preds == 1) & (labels == 0)))
    fn = int(np.sum((preds == 0) & (labels == 1)))
    return tp, tn, fp, fn


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    return float(np.sum(dx * dy) / math.sqrt(np.sum(dx * dx) * np.sum(dy * dy)))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n; the inputs here are continuous random floats, so there are no ties."""
    return np.argsort(np.argsort(x)).astype(float) + 1


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics_match_confusion_counts(seed):
    rng = np.random.default_rng(seed)
    labels, preds = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    tp, tn, fp, fn = _confusion(labels, preds)
    accuracy = (tp + tn) / 200
    f1 = 2 * tp / (2 * tp + fp + fn)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert glue_metrics("mrpc", preds, labels) == pytest.approx({"accuracy": accuracy, "f1": f1}, abs=1e-12)
    assert glue_metrics("qqp", preds, labels) == pytest.approx({"accuracy": accuracy, "f1": f1}, abs=1e-12)
    assert glue_metrics("cola", preds, labels) == pytest.approx(
        {"accuracy": accuracy, "matthews_correlation": mcc}, abs=1e-12
    )


@pytest.mark.parametrize("seed", range(5))
def test_multiclass_accuracy_matches_counting(seed):
    rng = np.random.default_rng(seed)
    labels, preds = rng.integers(0, 3, 150), rng.integers(0, 3, 150)
    expected = sum(int(p == t) for p, t in zip(preds, labels)) / 150
    assert glue_metrics("mnli", preds.tolist(), labels.tolist()) == {"accuracy": pytest.approx(expected, abs=1e-12)}


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_their_formulas(seed):
    rng = np.random.default_rng(seed)
    labels = rng.uniform(0, 5, 120)
    preds = 0.6 * labels + rng.normal(0, 1, 120)  # correlated, but not perfectly
    scores = glue_metrics("stsb", preds, labels)
    assert scores == pytest.approx(
        {"pearson": _pearson(preds, labels), "spearman": _pearson(_ranks(preds), _ranks(labels))}, abs=1e-12
    )


def test_known_values():
    assert glue_metrics("rte", [0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 0.75}
    # tp=2 fp=1 fn=1: f1 = 4/6.
    assert glue_metrics("mrpc", [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})
    assert glue_metrics("cola", [1, 0, 1, 0], [1, 0, 1, 0])["matthews_correlation"] == 1.0
    assert glue_metrics("cola", [0, 1, 0, 1], [1, 0, 1, 0])["matthews_correlation"] == -1.0
    assert glue_metrics("stsb", [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx({"pearson": 1.0, "spearman": 1.0})
    # Monotone but not linear: spearman is exactly 1, pearson is not.
    scores = glue_metrics("stsb", [1.0, 2.0, 3.0, 4.0], [1.0, 8.0, 27.0, 64.0])
    assert scores["spearman"] == pytest.approx(1.0) and scores["pearson"] < 0.99
    assert glue_metrics("stsb", [3.0, 2.0, 1.0], [0.5, 1.0, 1.5]) == pytest.approx({"pearson": -1.0, "spearman": -1.0})


@pytest.mark.parametrize("task", list(GLUE_TASKS))
def test_keys_are_the_task_metrics_as_floats(task):
    rng = np.random.default_rng(0)
    n_labels = GLUE_TASKS[task].num_labels
    labels = rng.uniform(0, 5, 30) if n_labels == 1 else rng.integers(0, n_labels, 30)
    preds = rng.uniform(0, 5, 30) if n_labels == 1 else rng.integers(0, n_labels, 30)
    scores = glue_metrics(task, preds, labels)
    assert tuple(scores) == GLUE_TASKS[task].metrics
    assert all(type(v) is float and -1.0 <= v <= 1.0 for v in scores.values())


def test_degenerate_inputs_give_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConstantInputWarning / UndefinedMetricWarning either
        assert glue_metrics("stsb", [2.5, 2.5, 2.5], [1.0, 3.0, 4.0]) == {"pearson": 0.0, "spearman": 0.0}
        assert glue_metrics("stsb", [1.0, 3.0, 4.0], [2.0, 2.0, 2.0]) == {"pearson": 0.0, "spearman": 0.0}
        assert glue_metrics("stsb", [4.0], [4.0]) == {"pearson": 0.0, "spearman": 0.0}
        assert glue_metrics("mrpc", [0, 0, 0], [0, 0, 0]) == {"accuracy": 1.0, "f1": 0.0}
        assert glue_metrics("cola", [1, 1, 1, 1], [0, 1, 1, 0]) == {"accuracy": 0.5, "matthews_correlation": 0.0}


def test_nan_predictions_stay_nan():
    """A diverged regression head is a real failure; it is not hidden as 0."""
    scores = glue_metrics("stsb", [1.0, float("nan"), 3.0], [1.0, 2.0, 3.0])
    assert math.isnan(scores["pearson"])


@pytest.mark.parametrize(("preds", "labels"), [([0, 1], [0, 1, 1]), ([], []), ([[0, 1]], [[0, 1]])])
def test_mismatched_or_empty_inputs_raise(preds, labels):
    with pytest.raises(ValueError):
        glue_metrics("rte", preds, labels)


def test_unknown_task_is_a_data_error():
    with pytest.raises(DataError, match="unknown GLUE task 'wnli'"):
        glue_metrics("wnli", [0], [0])


# ---------------------------------------------------------------------------- logits


def test_argmax_over_classes_for_numpy_and_torch():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5], [-2.0, -1.0, -0.5]])
    assert logits_to_predictions("mnli", logits).tolist() == [1, 0, 2]
    assert logits_to_predictions("mnli", torch.tensor(logits, dtype=torch.bfloat16)).tolist() == [1, 0, 2]
    assert logits_to_predictions("mnli", torch.tensor(logits, requires_grad=True)).tolist() == [1, 0, 2]


def test_regression_head_is_squeezed():
    assert logits_to_predictions("stsb", np.array([[1.5], [4.25]])).tolist() == [1.5, 4.25]
    assert logits_to_predictions("stsb", torch.tensor([1.5, 4.25])).tolist() == [1.5, 4.25]


@pytest.mark.parametrize(("task", "shape"), [("rte", (4, 3)), ("rte", (4,)), ("stsb", (4, 2)), ("mnli", (2, 3, 1))])
def test_logits_of_the_wrong_shape_raise(task, shape):
    with pytest.raises(ValueError, match="needs logits of shape"):
        logits_to_predictions(task, np.zeros(shape))
