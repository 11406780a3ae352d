"""Training matrices built from the KTAS visits through the same feature code the edge runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from models.features import features_from_summary, summarize_window
from models.ktas import KtasVisit
from models.labels import emergency_type_label
from models.scores import news2_acuity_floor
from protocol import EMERGENCY_TYPES, VitalsFrame

# A fixed timestamp: the features do not depend on time, and the matrices stay reproducible.
_EPOCH = datetime(2019, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class KtasMatrix:
    features: np.ndarray  # float32 [rows, FEATURE_COUNT]
    acuity_index: np.ndarray  # int [rows], KTAS_expert - 1
    type_index: np.ndarray  # int [rows], index into EMERGENCY_TYPES
    nurse_level: np.ndarray  # int [rows], KTAS_RN, for comparison only
    news2_floor: np.ndarray  # int [rows], least urgent KTAS level NEWS2 allows
    row_numbers: np.ndarray  # int [rows], the visit's row in the file


def visit_frame(visit: KtasVisit) -> VitalsFrame:
    return visit.to_frame("ktas", f"row-{visit.row_number}", _EPOCH)


def build_ktas_matrix(visits: list[KtasVisit]) -> KtasMatrix:
    type_position = {emergency_type: i for i, emergency_type in enumerate(EMERGENCY_TYPES)}
    summaries = [summarize_window([visit_frame(visit)]) for visit in visits]
    return KtasMatrix(
        features=np.stack([features_from_summary(summary) for summary in summaries]),
        acuity_index=np.array([visit.ktas_expert - 1 for visit in visits]),
        type_index=np.array(
            [type_position[emergency_type_label(visit.diagnosis, visit.injury)] for visit in visits]
        ),
        nurse_level=np.array([visit.ktas_rn for visit in visits]),
        news2_floor=np.array([news2_acuity_floor(summary.news2) for summary in summaries]),
        row_numbers=np.array([visit.row_number for visit in visits]),
    )


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into train and test, keeping each label's share; every row is one patient."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    test: list[int] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = max(1, round(len(members) * test_fraction))
        test += members[:n_test].tolist()
        train += members[n_test:].tolist()
    return np.sort(np.array(train)), np.sort(np.array(test))
