"""Evaluation metrics the demo pipelines gate on (numpy only, exact, tie-aware)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve via the rank-sum statistic; 0.5 when one class is absent."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy(labels: ArrayLike, predicted: ArrayLike) -> float:
    y, p = np.asarray(labels), np.asarray(predicted)
    return float((y == p).mean()) if len(y) else 0.0
