"""GLUE scores, computed with scikit-learn and scipy exactly as they return them (0..1, -1..1).

Degenerate inputs keep a run alive with a value that means "no information" rather than NaN
(run records refuse NaN, and NaN breaks best-checkpoint selection):

- pearson / spearman are 0.0 when the predictions or the labels are constant (the correlation
  is undefined there), the same convention scikit-learn uses for ``matthews_correlation``;
- f1 is 0.0 when there is no positive prediction and no positive label.

NaN predictions (a diverged regression head) still give NaN: that is a real failure.

This module knows metrics, not tasks: ``dylora.tasks.glue`` names each task's metrics and label count
and scores a task with ``glue_scores`` and ``class_predictions`` (its ``glue_metrics`` and
``logits_to_predictions`` take a task's name).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def glue_scores(metrics: Sequence[str], predictions, labels, what: str = "the task") -> dict[str, float]:
    """``{metric: value}`` for each of ``metrics`` (names of ``METRICS``, in order); ``what`` names the task
    in errors.

    ``predictions`` are class ids, or floats for a regression task (see ``class_predictions``).
    """
    preds, refs = np.asarray(predictions), np.asarray(labels)
    if preds.ndim != 1 or preds.shape != refs.shape:
        raise ValueError(f"predictions {preds.shape} and labels {refs.shape} must be 1-D and of the same length")
    if preds.size == 0:
        raise ValueError(f"no predictions to score for {what}")
    return {name: float(METRICS[name](refs, preds)) for name in metrics}


def class_predictions(logits, num_labels: int, regression: bool, what: str = "the task") -> np.ndarray:
    """Class ids (argmax over the last axis), or the scores of a regression head (``regression``: one label).

    ``logits`` is a numpy array or a torch tensor of shape (n, num_labels); (n,) is also
    accepted for a regression head.
    """
    array = _to_numpy(logits)
    if regression and array.ndim == 1:
        return array
    if array.ndim != 2 or array.shape[1] != num_labels:
        raise ValueError(f"{what} needs logits of shape (n, {num_labels}), got {array.shape}")
    return array[:, 0] if regression else array.argmax(axis=1)


def _to_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor; .float() because numpy has no bfloat16
        values = values.detach().float().cpu().numpy()
    return np.asarray(values)


def _correlation(fn: Callable) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(refs: np.ndarray, preds: np.ndarray) -> float:
        if np.ptp(refs) == 0 or np.ptp(preds) == 0:  # constant: undefined, see module doc
            return 0.0
        return fn(refs, preds).statistic

    return score


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy_score,
    "f1": lambda refs, preds: f1_score(refs, preds, pos_label=1, average="binary", zero_division=0.0),
    "matthews_correlation": matthews_corrcoef,
    "pearson": _correlation(pearsonr),
    "spearman": _correlation(spearmanr),
}
