"""From model probabilities to a triage decision, identically on the edge and the hub."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.features import WindowSummary
from models.scores import news2_acuity_floor
from protocol import EMERGENCY_TYPES, EmergencyType, ModelInfo, News2Score, Scores


def scores_from_probabilities(
    acuity: Sequence[float] | np.ndarray,
    emergency_type: Sequence[float] | np.ndarray,
    model: ModelInfo | None,
) -> Scores:
    """Wrap one row of model output; probabilities are renormalised to absorb int8 rounding."""
    acuity_array = np.clip(np.asarray(acuity, dtype=np.float64), 0, 1)
    type_array = np.clip(np.asarray(emergency_type, dtype=np.float64), 0, 1)
    acuity_array = acuity_array / acuity_array.sum() if acuity_array.sum() > 0 else np.full(5, 0.2)
    type_array = type_array / type_array.sum() if type_array.sum() > 0 else np.full(len(EMERGENCY_TYPES), 1 / 6)
    return Scores(
        acuity_probabilities=[round(float(p), 4) for p in acuity_array],
        emergency_type_probabilities={
            emergency_type: round(float(p), 4) for emergency_type, p in zip(EMERGENCY_TYPES, type_array, strict=True)
        },
        model=model,
    )


def news2_only_scores(summary: WindowSummary) -> Scores:
    """Scores for when no model is usable: all weight on the NEWS2 floor level, type unknown."""
    floor = news2_acuity_floor(summary.news2)
    acuity = [1.0 if level == floor else 0.0 for level in range(1, 6)]
    types = [1.0 if emergency_type == EmergencyType.OTHER else 0.0 for emergency_type in EMERGENCY_TYPES]
    return scores_from_probabilities(acuity, types, model=None)


def final_acuity(scores: Scores, news2: News2Score) -> tuple[int, bool]:
    """Return the KTAS level to act on and whether the NEWS2 safety floor raised it."""
    model_level = scores.model_acuity
    floor = news2_acuity_floor(news2)
    if floor < model_level:
        return floor, True
    return model_level, False
