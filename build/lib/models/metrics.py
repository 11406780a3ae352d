"""Classification metrics in numpy, shared by training and evaluation."""

from __future__ import annotations

import numpy as np

from protocol import URGENT_ACUITY_MAX


def accuracy(true: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(true == predicted)) if len(true) else float("nan")


def macro_f1(true: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over `labels`; a class absent from both scores 0."""
    scores = []
    for label in labels:
        true_positive = np.sum((true == label) & (predicted == label))
        false_positive = np.sum((true != label) & (predicted == label))
        false_negative = np.sum((true == label) & (predicted != label))
        denominator = 2 * true_positive + false_positive + false_negative
        scores.append(0.0 if denominator == 0 else 2 * true_positive / denominator)
    return float(np.mean(scores))


def under_triage_rate(true_level: np.ndarray, predicted_level: np.ndarray) -> float:
    """Share of truly urgent patients (KTAS 1-2) assigned a non-urgent level (3-5)."""
    urgent = true_level <= URGENT_ACUITY_MAX
    if not urgent.any():
        return float("nan")
    return float(np.mean(predicted_level[urgent] > URGENT_ACUITY_MAX))


def over_triage_rate(true_level: np.ndarray, predicted_level: np.ndarray) -> float:
    """Share of non-urgent patients (KTAS 3-5) assigned an urgent level (1-2)."""
    routine = true_level > URGENT_ACUITY_MAX
    if not routine.any():
        return float("nan")
    return float(np.mean(predicted_level[routine] <= URGENT_ACUITY_MAX))


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties counted half."""
    positive = positive.astype(bool)
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    position = 0
    while position < len(score):
        end = position
        while end + 1 < len(score) and sorted_scores[end + 1] == sorted_scores[position]:
            end += 1
        ranks[order[position : end + 1]] = (position + end) / 2 + 1
        position = end + 1
    rank_sum = ranks[positive].sum()
    return float((rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(true, predicted, strict=True):
        matrix[index[t], index[p]] += 1
    return matrix.tolist()
