"""Feature extraction shared by training, the edge agent and the hub (numpy only).

A window is the recent frames of one incident, oldest first. Each vital sign's newest recorded value
is carried forward, so a frame that only updates the heart rate keeps the last blood pressure.

Every feature lies in [-1, 1], scaled here rather than inside the model, because an int8 model
quantizes its whole input tensor with one scale: a raw systolic pressure of 200 next to a 0/1 flag
would leave the flag almost no resolution. A vital is centred, divided by its typical spread, clipped
to 5 spreads and divided by 5, so one int8 step is about 1/min of heart rate. Missing values are
imputed with the centre of the scale and flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.complaints import GROUP_NAMES, complaint_groups
from models.scores import NEWS2_PARAMETERS, consciousness_of, news2, qsofa, shock_index
from protocol import Consciousness, News2Score, PatientContext, VitalsFrame

FEATURE_SPEC = "triage-snapshot-v3"

# Vital sign -> (centre, scale): roughly the adult normal value and a typical spread.
VITAL_SCALES: dict[str, tuple[float, float]] = {
    "hr_bpm": (80.0, 25.0),
    "rr_per_min": (18.0, 6.0),
    "spo2_pct": (96.0, 4.0),
    "sbp_mmhg": (125.0, 30.0),
    "dbp_mmhg": (75.0, 15.0),
    "temp_c": (36.8, 0.8),
}
SCALED_LIMIT = 5.0  # spreads from the centre at which a scaled value is clipped

_CONSCIOUSNESS_LEVEL = {
    Consciousness.ALERT: 0.0,
    Consciousness.CONFUSED: 0.25,
    Consciousness.VOICE: 0.5,
    Consciousness.PAIN: 0.75,
    Consciousness.UNRESPONSIVE: 1.0,
}


def _feature_names() -> tuple[str, ...]:
    names: list[str] = []
    for vital in VITAL_SCALES:
        names += [vital, f"{vital}_missing"]
    names += ["consciousness_level", "consciousness_missing"]
    names += ["supplemental_oxygen", "supplemental_oxygen_missing"]
    names += ["shock_index", "qsofa", "news2_total", "news2_red_parameter"]
    names += [f"news2_{parameter}" for parameter in NEWS2_PARAMETERS]
    names += ["age", "age_missing", "sex_male", "sex_missing", "injury", "injury_missing"]
    names += ["pain_nrs", "pain_missing", "arrival_ambulance", "arrival_walk_in", "arrival_missing"]
    names += ["spo2_below_92", "sbp_at_most_90", "sirs_criteria", "severe_pain", "not_alert"]
    names += ["complaint_missing"]
    names += [f"complaint_{group}" for group in GROUP_NAMES]
    return tuple(names)


FEATURE_NAMES: tuple[str, ...] = _feature_names()
FEATURE_COUNT = len(FEATURE_NAMES)


@dataclass(frozen=True)
class WindowSummary:
    """The window's current state: newest value of each vital, scores and context."""

    latest: VitalsFrame  # the newest frame with every vital carried forward
    news2: News2Score
    qsofa: int | None
    shock_index: float | None
    context: PatientContext | None


_CARRIED = (*VITAL_SCALES, "consciousness", "gcs", "supplemental_oxygen")


def summarize_window(window: Sequence[VitalsFrame]) -> WindowSummary:
    """Carry each vital forward through the window and score the result."""
    if not window:
        raise ValueError("a window needs at least one frame")
    carried: dict[str, object] = {}
    context: PatientContext | None = None
    for frame in window[:-1]:
        for name in _CARRIED:
            value = getattr(frame, name)
            if value is not None:
                carried[name] = value
        if frame.context is not None:
            context = frame.context
    newest = window[-1]
    context = newest.context or context
    # Values the newest frame lacks come from older frames; a one-frame window needs no copy.
    missing = {name: value for name, value in carried.items() if getattr(newest, name) is None}
    if missing or context is not newest.context:
        latest = newest.model_copy(update={**missing, "context": context})
    else:
        latest = newest
    return WindowSummary(
        latest=latest,
        news2=news2(latest),
        qsofa=qsofa(latest),
        shock_index=shock_index(latest),
        context=context,
    )


def _scaled(value: float, centre: float, scale: float) -> float:
    # Plain arithmetic: numpy's clip costs microseconds per scalar, and the hub calls this per feature.
    return min(max((value - centre) / scale, -SCALED_LIMIT), SCALED_LIMIT) / SCALED_LIMIT


def extract_features(window: Sequence[VitalsFrame]) -> np.ndarray:
    """Return the float32 feature vector of a window, in FEATURE_NAMES order."""
    return features_from_summary(summarize_window(window))


def _triage_flags(latest: VitalsFrame, level: Consciousness | None, pain: int | None) -> list[float]:
    """Return flags for the physiological modifiers triage scales use on top of the complaint.

    SpO2 below 92% and SBP of 90 mmHg or less are the hypoxia and hypotension cut-offs at which NEWS2 scores
    3 (RCP NEWS2 2017, chart 1: SpO2 <= 91, SBP <= 90). The SIRS criteria are heart rate > 90/min,
    respiratory rate > 20/min and temperature > 38 or < 36 degC (Bone RC et al., ACCP/SCCM consensus
    conference, Chest 1992;101(6):1644-1655); a white cell count is not known before hospital, so at
    most three are counted. Pain of 8 or more on the 0-10 numeric rating scale counts as severe.
    """
    sirs = 0
    if latest.hr_bpm is not None and latest.hr_bpm > 90:
        sirs += 1
    if latest.rr_per_min is not None and latest.rr_per_min > 20:
        sirs += 1
    if latest.temp_c is not None and (latest.temp_c > 38 or latest.temp_c < 36):
        sirs += 1
    return [
        float(latest.spo2_pct is not None and latest.spo2_pct < 92),
        float(latest.sbp_mmhg is not None and latest.sbp_mmhg <= 90),
        sirs / 3,
        float(pain is not None and pain >= 8),
        float(level is not None and level != Consciousness.ALERT),
    ]


def features_from_summary(summary: WindowSummary) -> np.ndarray:
    latest = summary.latest
    values: list[float] = []
    for vital, (centre, scale) in VITAL_SCALES.items():
        value = getattr(latest, vital)
        values += [0.0, 1.0] if value is None else [_scaled(value, centre, scale), 0.0]

    level = consciousness_of(latest)
    values += [0.0, 1.0] if level is None else [_CONSCIOUSNESS_LEVEL[level], 0.0]
    oxygen = latest.supplemental_oxygen
    values += [0.0, 1.0] if oxygen is None else [float(oxygen), 0.0]

    index = summary.shock_index
    values.append(0.0 if index is None else _scaled(index, 0.65, 0.3))
    values.append(0.0 if summary.qsofa is None else summary.qsofa / 3)
    values.append(summary.news2.total / 20)
    values.append(1.0 if summary.news2.red_parameters else 0.0)
    values += [summary.news2.subscores[parameter] / 3 for parameter in NEWS2_PARAMETERS]

    context = summary.context or PatientContext()
    age = context.age_years
    values += [0.0, 1.0] if age is None else [_scaled(age, 50.0, 20.0), 0.0]
    values += [0.0, 1.0] if context.sex is None else [float(context.sex == "male"), 0.0]
    values += [0.0, 1.0] if context.injury is None else [float(context.injury), 0.0]
    pain = context.pain_nrs
    values += [0.0, 1.0] if pain is None else [pain / 10, 0.0]
    arrival = context.arrival_mode
    if arrival is None:
        values += [0.0, 0.0, 1.0]
    else:
        values += [float(arrival == "ambulance"), float(arrival == "walk-in"), 0.0]
    values += _triage_flags(latest, level, pain)
    groups = complaint_groups(context.chief_complaint)
    values.append(1.0 if context.chief_complaint is None else 0.0)
    values += [float(group in groups) for group in GROUP_NAMES]

    return np.asarray(values, dtype=np.float32)
