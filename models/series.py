"""An incident's vital-sign history and the deterioration model's features (numpy only).

The history summary is time-free: extremes, means and spread of each vital over all its measurements,
over the older and newer halves and the newest quarter, and the share of abnormal measurements.
Replayed recordings play faster than real time, and an ambulance's monitor samples more often than an
ICU chart, so rates per hour would differ between training and use while these statistics do not.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from models.features import SCALED_LIMIT
from protocol import Consciousness, VitalsFrame
from protocol.messages import SERIES_VITALS, SeriesSummary, VitalStats

DETERIORATION_FEATURE_SPEC = "series-summary-v1"

# Vital -> (centre, spread) for scaling; GCS is centred on a fully alert 15.
SERIES_SCALES: dict[str, tuple[float, float]] = {
    "hr_bpm": (80.0, 25.0),
    "rr_per_min": (18.0, 6.0),
    "sbp_mmhg": (125.0, 30.0),
    "dbp_mmhg": (65.0, 15.0),
    "temp_c": (36.8, 0.8),
    "spo2_pct": (96.0, 4.0),
    "gcs": (15.0, 4.0),
}
# Cut-offs for `share_low` and `share_high`: a measurement below the first or above the second is
# abnormal. Pulse, respiration, systolic pressure, temperature and SpO2 follow the NEWS2 bands (RCP
# NEWS2 2017, chart 1): pulse <= 50 or >= 111, respiration <= 8 or >= 25, systolic <= 100 or >= 220,
# temperature <= 35.0 or >= 39.1 and SpO2 <= 93 all score 1 to 3 points. The diastolic and GCS
# cut-offs are this project's choice.
ABNORMAL_CUTOFFS: dict[str, tuple[float, float]] = {
    "hr_bpm": (51, 110),
    "rr_per_min": (9, 24),
    "sbp_mmhg": (101, 219),
    "dbp_mmhg": (40, 120),
    "temp_c": (35.1, 39.0),
    "spo2_pct": (94, 101),
    "gcs": (13, 16),
}
LEVEL_STATISTICS = (
    "min", "max", "mean", "last", "recent_mean", "early_min", "early_max", "late_min", "late_max", "late_mean",
)  # fmt: skip
STATISTICS = (*LEVEL_STATISTICS, "change", "std", "share_low", "share_high")
# The deterioration model learned from ICU histories of dozens to hundreds of frames; below this many
# frames an incident has no history to speak of, and neither the edge nor the hub reports a risk.
MIN_HISTORY_FRAMES = 3
MAX_VALUES_PER_VITAL = 10_000  # an ambulance monitor at one frame per second for about 2.8 hours

# Median GCS of each ACVPU level (Kelly et al., Ann Emerg Med 2004;44(2):108-113), used when a crew
# records ACVPU but no GCS. New confusion has no published median; 14 is the highest GCS below alert.
ACVPU_TO_GCS = {
    Consciousness.ALERT: 15,
    Consciousness.CONFUSED: 14,
    Consciousness.VOICE: 13,
    Consciousness.PAIN: 8,
    Consciousness.UNRESPONSIVE: 3,
}


def _names() -> tuple[str, ...]:
    names: list[str] = []
    for vital in SERIES_VITALS:
        names.append(f"{vital}_present")
        names += [f"{vital}_{statistic}" for statistic in STATISTICS]
    names += ["oxygen_share", "age", "age_missing", "sex_male", "sex_missing"]
    return tuple(names)


DETERIORATION_FEATURE_NAMES: tuple[str, ...] = _names()
DETERIORATION_FEATURE_COUNT = len(DETERIORATION_FEATURE_NAMES)


class SeriesAccumulator:
    """Collects an incident's frames and summarises them; values beyond the cap drop the oldest."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {vital: [] for vital in SERIES_VITALS}
        self.frames = 0
        self.oxygen_frames = 0
        self.age_years: int | None = None
        self.sex: str | None = None

    def add(self, frame: VitalsFrame) -> None:
        self.frames += 1
        if frame.supplemental_oxygen:
            self.oxygen_frames += 1
        for vital in SERIES_VITALS:
            value = getattr(frame, vital)
            if vital == "gcs" and value is None and frame.consciousness is not None:
                value = ACVPU_TO_GCS[frame.consciousness]
            if value is not None:
                series = self.values[vital]
                series.append(float(value))
                if len(series) > MAX_VALUES_PER_VITAL:
                    del series[: len(series) - MAX_VALUES_PER_VITAL]
        if frame.context is not None:
            if frame.context.age_years is not None:
                self.age_years = frame.context.age_years
            if frame.context.sex is not None:
                self.sex = frame.context.sex

    def summary(self) -> SeriesSummary:
        vitals = {vital: _stats(vital, values) for vital, values in self.values.items() if values}
        return SeriesSummary(
            frames=max(self.frames, 1),
            vitals=vitals,
            oxygen_frames=self.oxygen_frames,
            age_years=self.age_years,
            sex=self.sex,  # type: ignore[arg-type]
        )


def summarize_frames(frames: Iterable[VitalsFrame]) -> SeriesSummary:
    accumulator = SeriesAccumulator()
    for frame in frames:
        accumulator.add(frame)
    return accumulator.summary()


def _stats(vital: str, values: list[float]) -> VitalStats:
    array = np.asarray(values, dtype=np.float64)
    half = len(array) // 2
    early = array[: max(1, half)]
    late = array[half:]
    recent = array[-max(1, len(array) // 4) :]
    low, high = ABNORMAL_CUTOFFS[vital]
    return VitalStats(
        count=len(array),
        min=float(array.min()),
        max=float(array.max()),
        mean=round(float(array.mean()), 4),
        std=round(float(array.std()), 4),
        first=float(array[0]),
        last=float(array[-1]),
        recent_mean=round(float(recent.mean()), 4),
        early_min=float(early.min()),
        early_max=float(early.max()),
        late_min=float(late.min()),
        late_max=float(late.max()),
        late_mean=round(float(late.mean()), 4),
        share_low=round(float(np.mean(array < low)), 4),
        share_high=round(float(np.mean(array > high)), 4),
    )


def _scaled(value: float, centre: float, spread: float) -> float:
    return min(max((value - centre) / spread, -SCALED_LIMIT), SCALED_LIMIT) / SCALED_LIMIT


def deterioration_features(summary: SeriesSummary) -> np.ndarray:
    """Return the float32 feature vector, in DETERIORATION_FEATURE_NAMES order, all within [-1, 1]."""
    values: list[float] = []
    for vital in SERIES_VITALS:
        centre, spread = SERIES_SCALES[vital]
        stats = summary.vitals.get(vital)
        if stats is None:
            values += [0.0] * (1 + len(STATISTICS))
            continue
        values.append(1.0)
        values += [_scaled(getattr(stats, name), centre, spread) for name in LEVEL_STATISTICS]
        values.append(_scaled(stats.last - stats.first, 0.0, spread))
        values.append(_scaled(stats.std, 0.0, spread))
        values += [stats.share_low, stats.share_high]
    values.append(summary.oxygen_frames / summary.frames)
    values += [0.0, 1.0] if summary.age_years is None else [_scaled(summary.age_years, 60.0, 15.0), 0.0]
    values += [0.0, 1.0] if summary.sex is None else [float(summary.sex == "male"), 0.0]
    return np.asarray(values, dtype=np.float32)
