"""Training of the ECG-strip branch that flags ventricular ectopy.

Only MIT-BIH record 208 has many ventricular beats, so a split by patient would leave no positive
strip to learn from or none to test on. The strips are split by time instead: the last quarter of
every record is held out, and training strips that overlap it are dropped. This measures how well the
branch recognises new beats of patients it has seen, not new patients.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from models.architecture import build_ecg_branch
from models.ecg_records import load_rhythm_records
from models.ecg_strips import STRIP_HEIGHT, STRIP_SECONDS, STRIP_WIDTH, StripDataset, strip_dataset
from models.metrics import auroc

log = logging.getLogger(__name__)

HELD_OUT_SHARE = 0.25
STEP_S = 2.0
EPOCHS = 12
BATCH_SIZE = 32
TRAINING_RENDERINGS = 2  # each training strip is photographed twice, with different perturbations
CALIBRATION_STRIPS = 250


@dataclass
class EcgTraining:
    branch: keras.Model
    held_out: StripDataset
    calibration_images: np.ndarray  # a sample of training strips, for int8 calibration
    metrics: dict[str, object]


def split_by_time(dataset: StripDataset, durations_s: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, held-out) masks: held out from the last quarter of each record, no overlap."""
    train = np.zeros(len(dataset), dtype=bool)
    held = np.zeros(len(dataset), dtype=bool)
    for index, (patient, start_s) in enumerate(zip(dataset.patient_ids, dataset.start_times_s, strict=True)):
        boundary = durations_s[patient] * (1 - HELD_OUT_SHARE)
        if start_s >= boundary:
            held[index] = True
        elif start_s + STRIP_SECONDS <= boundary:
            train[index] = True
    return train, held


def train_ecg(data_dir: Path, seed: int) -> EcgTraining:
    records = load_rhythm_records(data_dir)
    durations = {record.patient_id: record.duration_s for record in records}
    renderings = [strip_dataset(records, step_s=STEP_S, seed=seed + k) for k in range(TRAINING_RENDERINGS)]
    train, held = split_by_time(renderings[0], durations)

    x_train = np.concatenate([rendering.images[train] for rendering in renderings])
    y_train = np.concatenate([rendering.labels[train] for rendering in renderings]).astype(np.float32)
    held_out = StripDataset(
        images=renderings[0].images[held],
        labels=renderings[0].labels[held],
        patient_ids=renderings[0].patient_ids[held],
        start_times_s=renderings[0].start_times_s[held],
        ventricular_counts=renderings[0].ventricular_counts[held],
    )
    positives = float(y_train.mean())
    log.info(
        "ECG strips: %d training images (%.0f%% with ventricular ectopy), %d held out",
        len(x_train), 100 * positives, len(held_out),
    )  # fmt: skip

    keras.utils.set_random_seed(seed)
    branch = build_ecg_branch(STRIP_HEIGHT, STRIP_WIDTH)
    weights = np.where(y_train == 1, 0.5 / positives, 0.5 / (1 - positives))
    branch.fit(x_train, y_train, sample_weight=weights, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0)

    scores = np.asarray(branch(held_out.images, training=False))[:, 0]
    flagged = scores >= 0.5
    labels = held_out.labels.astype(bool)
    per_record = {
        patient: {
            "strips": int((held_out.patient_ids == patient).sum()),
            "with_ectopy": int(labels[held_out.patient_ids == patient].sum()),
            "flagged": int(flagged[held_out.patient_ids == patient].sum()),
        }
        for patient in np.unique(held_out.patient_ids)
    }
    metrics = {
        "training_strips": int(train.sum()),
        "held_out_strips": int(len(labels)),
        "held_out_with_ectopy": int(labels.sum()),
        "auroc": round(auroc(labels, scores), 4),
        "sensitivity": round(float(flagged[labels].mean()), 4) if labels.any() else None,
        "specificity": round(float((~flagged[~labels]).mean()), 4) if (~labels).any() else None,
        "per_record": per_record,
        "evaluation": "last quarter of each record held out (split by time, not by patient)",
    }
    log.info("ECG branch held-out AUROC %.3f", metrics["auroc"])
    sample = np.random.default_rng(seed).choice(
        len(x_train), size=min(CALIBRATION_STRIPS, len(x_train)), replace=False
    )
    return EcgTraining(branch, held_out, x_train[sample], metrics)
