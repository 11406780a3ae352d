"""Deterioration training data: PhysioNet 2012 ICU stays as incident histories with outcomes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from models.physionet import IcuStay, Outcome, PhysioNetFormatError, load_outcomes, load_stay, stay_files
from models.series import SeriesAccumulator, deterioration_features
from protocol import VitalsFrame

log = logging.getLogger(__name__)

_EPOCH = datetime(2012, 1, 1, tzinfo=UTC)
FULL_WINDOW_HOURS = 48


@dataclass(frozen=True)
class DeteriorationMatrix:
    features: np.ndarray  # float32 [rows, DETERIORATION_FEATURE_COUNT]
    died: np.ndarray  # int [rows], in-hospital death
    record_ids: np.ndarray  # int [rows], one ICU stay (patient) per id
    saps_i: np.ndarray  # float [rows], NaN where SAPS-I was not recorded
    window_hours: np.ndarray  # int [rows], hours of the stay the features summarise


def load_physionet(folder: Path, outcomes_path: Path) -> tuple[list[IcuStay], dict[int, Outcome]]:
    """Load every stay of a `set-a`-style folder that has an outcome; stays without one are skipped."""
    outcomes = load_outcomes(outcomes_path)
    stays = []
    skipped = 0
    unreadable: list[str] = []
    for path in stay_files(folder):
        try:
            stay = load_stay(path)
        except (PhysioNetFormatError, UnicodeDecodeError) as exc:
            unreadable.append(f"{path.name}: {exc}")
            continue
        if stay.record_id in outcomes:
            stays.append(stay)
        else:
            skipped += 1
    if skipped:
        log.warning("%s: %d stays have no row in %s and were skipped", folder, skipped, outcomes_path)
    if unreadable:
        log.warning("%s: %d unreadable stay files skipped, first: %s", folder, len(unreadable), unreadable[0])
    return stays, outcomes


def stay_summary_features(stay: IcuStay, hours: int) -> np.ndarray:
    """Replay a stay's first `hours` as frames through the same accumulator the edge agent uses."""
    accumulator = SeriesAccumulator()
    context = stay.context()
    for minute, values in stay.timeline(until_minute=hours * 60):
        frame = VitalsFrame(
            device_id="icu",
            incident_id=f"icu-{stay.record_id}",
            timestamp=_EPOCH + timedelta(minutes=minute),
            context=context,
            **values,
        )
        accumulator.add(frame)
    if accumulator.frames == 0:
        # A stay with descriptors only still has an age and a sex.
        accumulator.age_years = context.age_years
        accumulator.sex = context.sex
    return deterioration_features(accumulator.summary())


def build_deterioration_matrix(
    stays: list[IcuStay], outcomes: dict[int, Outcome], window_hours: tuple[int, ...] = (FULL_WINDOW_HOURS,)
) -> DeteriorationMatrix:
    """One row per stay and window length; shorter windows teach the model incidents still unfolding."""
    rows, died, ids, saps, hours_column = [], [], [], [], []
    for stay in stays:
        outcome = outcomes[stay.record_id]
        for hours in window_hours:
            rows.append(stay_summary_features(stay, hours))
            died.append(outcome.in_hospital_death)
            ids.append(stay.record_id)
            saps.append(np.nan if outcome.saps_i is None else outcome.saps_i)
            hours_column.append(hours)
    return DeteriorationMatrix(
        features=np.stack(rows),
        died=np.array(died),
        record_ids=np.array(ids),
        saps_i=np.array(saps, dtype=np.float64),
        window_hours=np.array(hours_column),
    )
