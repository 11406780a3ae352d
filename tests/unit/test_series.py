"""The incident history summary and the deterioration features."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from models.deterioration_data import stay_summary_features
from models.physionet import load_stay, stay_files
from models.series import (
    DETERIORATION_FEATURE_COUNT,
    DETERIORATION_FEATURE_NAMES,
    SeriesAccumulator,
    deterioration_features,
    summarize_frames,
)
from protocol import Consciousness, PatientContext, VitalsFrame

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def frame(minute: int, **values) -> VitalsFrame:
    return VitalsFrame(
        device_id="amb-1", incident_id="inc-1", timestamp=NOW + timedelta(minutes=minute), **values
    )


def test_statistics_of_one_vital() -> None:
    frames = [frame(i, hr_bpm=value) for i, value in enumerate([60, 70, 80, 90, 100, 140, 150, 160])]
    stats = summarize_frames(frames).vitals["hr_bpm"]
    assert stats.count == 8
    assert stats.min == 60
    assert stats.max == 160
    assert stats.first == 60
    assert stats.last == 160
    assert stats.recent_mean == pytest.approx(155)  # newest quarter: 150, 160
    assert stats.early_max == 90  # older half: 60-90
    assert stats.late_min == 100
    assert stats.share_high == pytest.approx(3 / 8)  # above 110/min
    assert stats.share_low == 0


def test_missing_vitals_absent_from_summary() -> None:
    summary = summarize_frames([frame(0, hr_bpm=80), frame(1, rr_per_min=18)])
    assert set(summary.vitals) == {"hr_bpm", "rr_per_min"}
    assert summary.frames == 2


def test_acvpu_counts_as_gcs() -> None:
    summary = summarize_frames([frame(0, consciousness=Consciousness.PAIN), frame(1, gcs=14)])
    assert summary.vitals["gcs"].min == 8
    assert summary.vitals["gcs"].last == 14


def test_context_and_oxygen_recorded() -> None:
    accumulator = SeriesAccumulator()
    accumulator.add(
        frame(0, hr_bpm=80, supplemental_oxygen=True, context=PatientContext(age_years=75, sex="male"))
    )
    accumulator.add(frame(1, hr_bpm=85, supplemental_oxygen=False))
    summary = accumulator.summary()
    assert summary.oxygen_frames == 1
    assert summary.age_years == 75
    assert summary.sex == "male"


def test_features_bounded_and_named() -> None:
    frames = [
        frame(i, hr_bpm=40 + 30 * i, sbp_mmhg=250 - 40 * i, dbp_mmhg=50, temp_c=35 + i) for i in range(5)
    ]
    vector = deterioration_features(summarize_frames(frames))
    assert vector.shape == (DETERIORATION_FEATURE_COUNT,)
    assert len(set(DETERIORATION_FEATURE_NAMES)) == DETERIORATION_FEATURE_COUNT
    assert np.all(np.abs(vector) <= 1.0)
    assert vector[DETERIORATION_FEATURE_NAMES.index("hr_bpm_present")] == 1.0
    assert vector[DETERIORATION_FEATURE_NAMES.index("spo2_pct_present")] == 0.0


def test_icu_stay_summary_matches_replayed_frames(data_dir: Path) -> None:
    """Training replays a stay through the same accumulator as the edge agent: same vector."""
    stay = load_stay(stay_files(data_dir / "physionet-2012" / "set-a")[0])
    accumulator = SeriesAccumulator()
    for minute, values in stay.timeline(until_minute=48 * 60):
        accumulator.add(frame(minute, context=stay.context(), **values))
    assert np.array_equal(deterioration_features(accumulator.summary()), stay_summary_features(stay, 48))


def test_implausible_icu_values_dropped(tmp_path: Path) -> None:
    path = tmp_path / "000001.txt"
    path.write_text(
        "Time,Parameter,Value\n00:00,RecordID,1\n00:00,Age,70\n"
        "01:00,HR,0\n01:00,SysABP,0\n01:00,DiasABP,0\n01:00,Temp,-17.8\n02:00,HR,90\n"
    )
    stay = load_stay(path)
    timeline = stay.timeline()
    assert timeline == [(120, {"hr_bpm": 90.0})]
    assert stay.dropped == 4
