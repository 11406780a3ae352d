"""From model outputs to a triage decision, identically on the edge, the hub and in evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.features import WindowSummary
from models.scores import news2_acuity_floor
from protocol import EMERGENCY_TYPES, URGENT_ACUITY_MAX, EmergencyType, ModelInfo, News2Score, Scores

# A strip flagged for ventricular ectopy makes the patient at least KTAS 3. This floor is this
# project's choice, not a published rule: frequent ventricular ectopy needs a monitored bed and an
# ECG review, but is not an emergency on its own.
ECTOPY_ACUITY_FLOOR = 3


class OperatingPoint(BaseModel):
    """Decision thresholds chosen on development data and shipped in the bundle's manifest."""

    model_config = ConfigDict(extra="forbid")

    urgent_threshold: float = Field(
        gt=0, lt=1, description="P(KTAS 1-2) at or above which a patient is urgent"
    )
    ectopy_threshold: float = Field(
        default=0.5, gt=0, lt=1, description="P(ventricular ectopy) that flags a strip"
    )
    deterioration_threshold: float | None = Field(
        default=None, gt=0, lt=1, description="risk at or above which a history is flagged as deteriorating"
    )
    chosen_on: str = Field(default="", description="how the thresholds were chosen")


def model_level(acuity: Sequence[float] | np.ndarray, urgent_probability: float, threshold: float) -> int:
    """Return the KTAS level at the operating point: the likelier of 1-2 if urgent, else of 3-5."""
    probabilities = np.asarray(acuity, dtype=np.float64)
    if urgent_probability >= threshold:
        return 1 + int(np.argmax(probabilities[:URGENT_ACUITY_MAX]))
    return URGENT_ACUITY_MAX + 1 + int(np.argmax(probabilities[URGENT_ACUITY_MAX:]))


def model_levels(acuity: np.ndarray, urgent: np.ndarray, threshold: float) -> np.ndarray:
    """Vectorised `model_level` for a batch: acuity [rows, 5], urgent [rows]."""
    urgent_level = 1 + np.argmax(acuity[:, :URGENT_ACUITY_MAX], axis=1)
    routine_level = URGENT_ACUITY_MAX + 1 + np.argmax(acuity[:, URGENT_ACUITY_MAX:], axis=1)
    return np.where(urgent >= threshold, urgent_level, routine_level)


def _distributions(rows: Sequence[Sequence[float]] | np.ndarray, size: int) -> list[list[float]]:
    """Clip each row to [0, 1], replace NaN by 0 and renormalise; a row without mass becomes uniform."""
    array = np.asarray(rows, dtype=np.float64).reshape(-1, size)
    array = np.nan_to_num(np.clip(array, 0.0, 1.0), nan=0.0)
    totals = array.sum(axis=1, keepdims=True)
    empty = totals[:, 0] <= 0
    array[empty] = 1.0
    totals[empty] = size
    return np.round(array / totals, 4).tolist()


def _probability(value: float | None) -> float | None:
    if value is None:
        return None
    if value != value:  # NaN from a broken model counts as no evidence
        return 0.0
    return round(min(max(float(value), 0.0), 1.0), 4)


def scores_from_batch(
    acuity: np.ndarray,
    urgent_probability: np.ndarray,
    emergency_type: np.ndarray,
    operating_point: OperatingPoint,
    model: ModelInfo | None,
    ventricular_ectopy: Sequence[float | None] | None = None,
    deterioration_risk: Sequence[float | None] | None = None,
) -> list[Scores]:
    """Wrap a batch of model outputs (acuity [rows, 5], urgent [rows], type [rows, types]).

    Probabilities are renormalised to absorb int8 rounding, and every value is clipped here, so the
    contract holds by construction and pydantic's validation is skipped: the hub wraps thousands of
    rows a second.
    """
    count = len(urgent_probability)
    acuity_lists = _distributions(acuity, 5)
    type_lists = _distributions(emergency_type, len(EMERGENCY_TYPES))
    ectopy = ventricular_ectopy if ventricular_ectopy is not None else [None] * count
    risks = deterioration_risk if deterioration_risk is not None else [None] * count
    scores = []
    for row in range(count):
        urgent = _probability(float(urgent_probability[row])) or 0.0
        scores.append(
            Scores.model_construct(
                acuity_probabilities=acuity_lists[row],
                urgent_probability=urgent,
                model_acuity=model_level(acuity_lists[row], urgent, operating_point.urgent_threshold),
                emergency_type_probabilities=dict(zip(EMERGENCY_TYPES, type_lists[row], strict=True)),
                ventricular_ectopy_probability=_probability(ectopy[row]),
                deterioration_risk=_probability(risks[row]),
                model=model,
            )
        )
    return scores


def scores_from_outputs(
    acuity: Sequence[float] | np.ndarray,
    urgent_probability: float,
    emergency_type: Sequence[float] | np.ndarray,
    operating_point: OperatingPoint,
    model: ModelInfo | None,
    ventricular_ectopy: float | None = None,
    deterioration_risk: float | None = None,
) -> Scores:
    """Wrap one row of model outputs; see `scores_from_batch`."""
    return scores_from_batch(
        np.asarray([acuity]),
        np.asarray([urgent_probability], dtype=np.float64),
        np.asarray([emergency_type]),
        operating_point,
        model,
        [ventricular_ectopy],
        [deterioration_risk],
    )[0]


def news2_only_scores(summary: WindowSummary) -> Scores:
    """Scores for when no model is usable: all weight on the NEWS2 floor level, type unknown."""
    floor = news2_acuity_floor(summary.news2)
    acuity = [1.0 if level == floor else 0.0 for level in range(1, 6)]
    return Scores(
        acuity_probabilities=acuity,
        urgent_probability=1.0 if floor <= URGENT_ACUITY_MAX else 0.0,
        model_acuity=floor,
        emergency_type_probabilities={
            emergency_type: 1.0 if emergency_type == EmergencyType.OTHER else 0.0
            for emergency_type in EMERGENCY_TYPES
        },
        model=None,
    )


def final_acuity(
    scores: Scores, news2: News2Score, operating_point: OperatingPoint | None = None
) -> tuple[int, bool]:
    """Return the KTAS level to act on and whether a safety floor made it more urgent.

    The floors are NEWS2's (always) and a flagged ventricular-ectopy strip's (when an image was scored).
    """
    level = scores.model_acuity
    floor = news2_acuity_floor(news2)
    ectopy = scores.ventricular_ectopy_probability
    threshold = operating_point.ectopy_threshold if operating_point is not None else 0.5
    if ectopy is not None and ectopy >= threshold:
        floor = min(floor, ECTOPY_ACUITY_FLOOR)
    if floor < level:
        return floor, True
    return level, False
