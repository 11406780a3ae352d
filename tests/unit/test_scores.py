"""NEWS2 bands (RCP 2017 chart 1), aggregate risk, the safety floor, qSOFA and shock index."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from models.scores import (
    consciousness_from_gcs,
    news2,
    news2_acuity_floor,
    qsofa,
    shock_index,
)
from protocol import Consciousness, VitalsFrame

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# A frame that scores 0 on every parameter.
NORMAL = {
    "rr_per_min": 16,
    "spo2_pct": 97,
    "supplemental_oxygen": False,
    "sbp_mmhg": 120,
    "dbp_mmhg": 70,
    "hr_bpm": 70,
    "consciousness": Consciousness.ALERT,
    "temp_c": 37.0,
}


def frame(**changes) -> VitalsFrame:
    values = {**NORMAL, **changes}
    return VitalsFrame(device_id="amb-1", incident_id="inc-1", timestamp=NOW, **values)


def test_normal_frame_scores_zero() -> None:
    score = news2(frame())
    assert score.total == 0
    assert score.red_parameters == []
    assert score.missing == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (40, 3)],
)
def test_respiration_rate_bands(value: float, expected: int) -> None:
    assert news2(frame(rr_per_min=value)).subscores["respiration_rate"] == expected


@pytest.mark.parametrize(
    ("value", "expected"), [(85, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]
)
def test_spo2_scale1_bands(value: float, expected: int) -> None:
    assert news2(frame(spo2_pct=value)).subscores["spo2"] == expected


@pytest.mark.parametrize(
    ("value", "on_oxygen", "expected"),
    [
        (83, False, 3), (84, False, 2), (85, False, 2), (86, False, 1), (87, False, 1),
        (88, False, 0), (92, False, 0), (97, False, 0),
        (93, True, 1), (94, True, 1), (95, True, 2), (96, True, 2), (97, True, 3),
    ],
)  # fmt: skip
def test_spo2_scale2_bands(value: float, on_oxygen: bool, expected: int) -> None:
    score = news2(frame(spo2_pct=value, supplemental_oxygen=on_oxygen), hypercapnic_respiratory_failure=True)
    assert score.subscores["spo2"] == expected


def test_supplemental_oxygen_scores_two() -> None:
    assert news2(frame(supplemental_oxygen=True)).subscores["air_or_oxygen"] == 2
    assert news2(frame(supplemental_oxygen=False)).subscores["air_or_oxygen"] == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(70, 3), (90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3), (250, 3)],
)
def test_systolic_bp_bands(value: float, expected: int) -> None:
    assert news2(frame(sbp_mmhg=value, dbp_mmhg=min(60, value))).subscores["systolic_bp"] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, 3),
        (40, 3),
        (41, 1),
        (50, 1),
        (51, 0),
        (90, 0),
        (91, 1),
        (110, 1),
        (111, 2),
        (130, 2),
        (131, 3),
        (180, 3),
    ],
)
def test_pulse_bands(value: float, expected: int) -> None:
    assert news2(frame(hr_bpm=value)).subscores["pulse"] == expected


@pytest.mark.parametrize(
    ("level", "expected"),
    [(Consciousness.ALERT, 0), (Consciousness.CONFUSED, 3), (Consciousness.VOICE, 3),
     (Consciousness.PAIN, 3), (Consciousness.UNRESPONSIVE, 3)],
)  # fmt: skip
def test_consciousness_bands(level: Consciousness, expected: int) -> None:
    assert news2(frame(consciousness=level)).subscores["consciousness"] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (34.0, 3),
        (35.0, 3),
        (35.1, 1),
        (36.0, 1),
        (36.1, 0),
        (38.0, 0),
        (38.1, 1),
        (39.0, 1),
        (39.1, 2),
        (41.0, 2),
    ],
)
def test_temperature_bands(value: float, expected: int) -> None:
    assert news2(frame(temp_c=value)).subscores["temperature"] == expected


def test_aggregate_and_red_parameters() -> None:
    score = news2(frame(rr_per_min=26, spo2_pct=93, hr_bpm=115, temp_c=38.5))
    assert score.subscores["respiration_rate"] == 3
    assert score.total == 3 + 2 + 2 + 1
    assert score.red_parameters == ["respiration_rate"]


def test_missing_parameters_listed_and_score_zero() -> None:
    empty = VitalsFrame(device_id="amb-1", incident_id="inc-1", timestamp=NOW, hr_bpm=135)
    score = news2(empty)
    assert score.total == 3
    assert set(score.missing) == {
        "respiration_rate", "spo2", "air_or_oxygen", "systolic_bp", "consciousness", "temperature",
    }  # fmt: skip


def test_gcs_used_when_no_acvpu_recorded() -> None:
    score = news2(frame(consciousness=None, gcs=9))
    assert score.subscores["consciousness"] == 3
    assert news2(frame(consciousness=None, gcs=15)).subscores["consciousness"] == 0


@pytest.mark.parametrize(
    ("gcs", "level"),
    [(15, Consciousness.ALERT), (14, Consciousness.CONFUSED), (13, Consciousness.VOICE),
     (10, Consciousness.VOICE), (9, Consciousness.PAIN), (4, Consciousness.PAIN), (3, Consciousness.UNRESPONSIVE)],
)  # fmt: skip
def test_gcs_to_acvpu(gcs: int, level: Consciousness) -> None:
    assert consciousness_from_gcs(gcs) == level


@pytest.mark.parametrize(
    ("changes", "floor"),
    [
        ({}, 5),  # NEWS2 0
        ({"hr_bpm": 95, "temp_c": 38.5, "rr_per_min": 22}, 5),  # 4: low risk
        ({"hr_bpm": 115, "temp_c": 38.5, "rr_per_min": 22}, 3),  # 5: urgent response
        ({"hr_bpm": 115, "temp_c": 39.5, "rr_per_min": 22}, 3),  # 6
        ({"hr_bpm": 115, "temp_c": 39.5, "rr_per_min": 22, "sbp_mmhg": 105}, 2),  # 7: emergency
        ({"consciousness": Consciousness.VOICE}, 2),  # a single red parameter
    ],
)
def test_news2_safety_floor(changes: dict, floor: int) -> None:
    assert news2_acuity_floor(news2(frame(**changes))) == floor


def test_qsofa_counts_criteria() -> None:
    assert qsofa(frame()) == 0
    assert qsofa(frame(rr_per_min=22)) == 1
    assert qsofa(frame(rr_per_min=22, sbp_mmhg=100, dbp_mmhg=60)) == 2
    assert qsofa(frame(rr_per_min=22, sbp_mmhg=95, dbp_mmhg=60, consciousness=Consciousness.CONFUSED)) == 3
    bare = VitalsFrame(device_id="amb-1", incident_id="inc-1", timestamp=NOW, hr_bpm=80)
    assert qsofa(bare) is None


def test_shock_index() -> None:
    assert shock_index(frame(hr_bpm=120, sbp_mmhg=100, dbp_mmhg=60)) == 1.2
    assert shock_index(frame(sbp_mmhg=None, dbp_mmhg=None)) is None
    assert shock_index(frame(sbp_mmhg=0, dbp_mmhg=0)) is None
