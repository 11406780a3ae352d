"""Training of the deterioration ensemble on PhysioNet 2012 stays, judged out of fold by patient.

Each stay is one patient. The stays are split into five stratified folds; the model of fold k is
trained on the other four and scores fold k, so every stay gets a prediction from a model that never
saw it. The shipped model averages the five fold models. SAPS-I, the admission severity score in the
outcomes file, is evaluated on the same stays with the same procedure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
import numpy as np

from models.architecture import build_deterioration_member
from models.deterioration_data import DeteriorationMatrix
from models.metrics import auprc, auroc, min_sensitivity_ppv, prevalence_threshold

log = logging.getLogger(__name__)

FOLDS = 5
EPOCHS = 30
BATCH_SIZE = 64
HIDDEN_UNITS = 64  # chosen by inner cross-validation on a development split (0.836 vs 0.829 for 32)


@dataclass
class DeteriorationTraining:
    members: list[keras.Model]
    out_of_fold: np.ndarray  # P(death) per stay from the fold model that did not see it
    folds: np.ndarray  # fold index per stay
    metrics: dict[str, object]


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=int)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        assignment[members] = np.arange(len(members)) % folds
    return assignment


def fit_member(features: np.ndarray, died: np.ndarray, seed: int, name: str) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build_deterioration_member(features.shape[1], name=name, hidden_units=HIDDEN_UNITS)
    model.fit(features, died, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0)
    return model


def out_of_fold_report(died: np.ndarray, scores: np.ndarray, folds: np.ndarray) -> dict[str, object]:
    """AUROC, AUPRC and min(Se, PPV) of out-of-fold scores, each fold flagged at its training prevalence.

    The PhysioNet 2012 event 1 score needs a yes/no prediction; the threshold for fold k is the score
    that flags the training folds' share of deaths among the training folds, so no held-out label
    chooses it.
    """
    flagged = np.zeros(len(died), dtype=bool)
    per_fold = []
    for fold in np.unique(folds):
        train, held = folds != fold, folds == fold
        threshold = prevalence_threshold(scores[train], float(died[train].mean()))
        flagged[held] = scores[held] >= threshold
        per_fold.append(round(auroc(died[held], scores[held]), 4))
    return {
        "auroc": round(auroc(died, scores), 4),
        "auprc": round(auprc(died, scores), 4),
        "min_se_ppv": round(min_sensitivity_ppv(died, flagged), 4),
        "auroc_per_fold": per_fold,
        "stays": int(len(died)),
        "deaths": int(died.sum()),
    }


def train_deterioration(matrix: DeteriorationMatrix, seed: int) -> DeteriorationTraining:
    folds = stratified_folds(matrix.died, FOLDS, seed)
    out_of_fold = np.zeros(len(matrix.died))
    members = []
    for fold in range(FOLDS):
        train = folds != fold
        member = fit_member(matrix.features[train], matrix.died[train], seed + fold, f"fold_{fold}")
        out_of_fold[~train] = np.asarray(member(matrix.features[~train], training=False))[:, 0]
        members.append(member)
        log.info(
            "deterioration fold %d: AUROC %.3f", fold + 1, auroc(matrix.died[~train], out_of_fold[~train])
        )

    model_report = out_of_fold_report(matrix.died, out_of_fold, folds)
    with_saps = ~np.isnan(matrix.saps_i)
    saps_report = out_of_fold_report(matrix.died[with_saps], matrix.saps_i[with_saps], folds[with_saps])
    model_on_saps_stays = out_of_fold_report(matrix.died[with_saps], out_of_fold[with_saps], folds[with_saps])
    metrics = {
        "model": model_report,
        "saps_i": saps_report,
        "model_on_stays_with_saps_i": model_on_saps_stays,
        "evaluation": f"{FOLDS}-fold out-of-fold predictions, stratified on the outcome, one stay per patient",
    }
    log.info(
        "deterioration out-of-fold AUROC %.3f (SAPS-I %.3f on the %d stays that have it)",
        model_report["auroc"], saps_report["auroc"], int(with_saps.sum()),
    )  # fmt: skip
    return DeteriorationTraining(members, out_of_fold, folds, metrics)
