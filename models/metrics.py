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


def auprc(positive: np.ndarray, score: np.ndarray) -> float:
    """Average precision: the mean of precision at the rank of each positive, ties broken by order."""
    positive = positive.astype(bool)
    if not positive.any():
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    hits = positive[order]
    precision_at_rank = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at_rank[hits].mean())


def expected_calibration_error(positive: np.ndarray, probability: np.ndarray, bins: int = 10) -> float:
    """Weighted mean gap between predicted probability and observed frequency over equal-width bins."""
    positive = positive.astype(float)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(probability, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            error += members.mean() * abs(probability[members].mean() - positive[members].mean())
    return float(error)


def min_sensitivity_ppv(positive: np.ndarray, predicted: np.ndarray) -> float:
    """PhysioNet/CinC 2012 event 1 score: the smaller of sensitivity and positive predictivity."""
    positive = positive.astype(bool)
    predicted = predicted.astype(bool)
    true_positive = np.sum(positive & predicted)
    sensitivity = true_positive / max(positive.sum(), 1)
    ppv = true_positive / max(predicted.sum(), 1)
    return float(min(sensitivity, ppv))


def prevalence_threshold(training_scores: np.ndarray, prevalence: float) -> float:
    """Score above which the same share of training cases is flagged as the outcome's prevalence."""
    return float(np.quantile(training_scores, 1 - prevalence))


def acuity_report(
    true_level: np.ndarray,
    predicted_level: np.ndarray,
    urgent_score: np.ndarray,
    urgent_probability: np.ndarray | None = None,
) -> dict[str, object]:
    """Accuracy, macro F1, under- and over-triage, urgent AUROC, calibration and confusion matrix.

    `urgent_score` ranks patients for the AUROC; `urgent_probability`, when the rater gives one, is
    also checked for calibration (expected calibration error of P(KTAS 1-2)).
    """
    levels = np.array((1, 2, 3, 4, 5))
    urgent = true_level <= URGENT_ACUITY_MAX
    return {
        "rows": int(len(true_level)),
        "urgent_rows": int(urgent.sum()),
        "accuracy": round(accuracy(true_level, predicted_level), 4),
        "macro_f1": round(macro_f1(true_level, predicted_level, levels), 4),
        "under_triage_rate": round(under_triage_rate(true_level, predicted_level), 4),
        "over_triage_rate": round(over_triage_rate(true_level, predicted_level), 4),
        "urgent_auroc": round(auroc(urgent, urgent_score), 4),
        "ece": None
        if urgent_probability is None
        else round(expected_calibration_error(urgent, urgent_probability), 4),
        "confusion_matrix": confusion_matrix(true_level, predicted_level, levels),
    }
