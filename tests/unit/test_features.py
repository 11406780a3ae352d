"""Feature extraction, complaint normalisation and emergency-type labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from models.complaints import complaint_groups, normalize_complaint
from models.features import FEATURE_COUNT, FEATURE_NAMES, extract_features, summarize_window
from models.labels import emergency_type_label
from protocol import Consciousness, EmergencyType, PatientContext, VitalsFrame

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def frame(seconds: float = 0, **values) -> VitalsFrame:
    return VitalsFrame(
        device_id="amb-1", incident_id="inc-1", timestamp=NOW + timedelta(seconds=seconds), **values
    )


def feature(vector: np.ndarray, name: str) -> float:
    return float(vector[FEATURE_NAMES.index(name)])


def test_vector_shape_and_type() -> None:
    vector = extract_features([frame(hr_bpm=80)])
    assert vector.shape == (FEATURE_COUNT,)
    assert vector.dtype == np.float32
    assert len(set(FEATURE_NAMES)) == FEATURE_COUNT


def test_missing_values_flagged_and_centred() -> None:
    vector = extract_features([frame()])
    assert feature(vector, "hr_bpm") == 0.0
    assert feature(vector, "hr_bpm_missing") == 1.0
    assert feature(vector, "spo2_pct_missing") == 1.0
    assert feature(vector, "age_missing") == 1.0
    assert feature(vector, "complaint_missing") == 1.0


def test_values_scaled_and_clipped() -> None:
    vector = extract_features([frame(hr_bpm=105, spo2_pct=20)])
    assert feature(vector, "hr_bpm") == pytest.approx(0.2)  # (105 - 80) / 25 / 5
    assert feature(vector, "hr_bpm_missing") == 0.0
    assert feature(vector, "spo2_pct") == -1.0  # (20 - 96) / 4 clipped to -5, then / 5
    assert np.all(np.abs(vector) <= 1.0)


def test_window_carries_last_values_forward() -> None:
    window = [
        frame(0, hr_bpm=80, sbp_mmhg=120, dbp_mmhg=80, context=PatientContext(age_years=70)),
        frame(30, hr_bpm=130),
        frame(60, rr_per_min=28),
    ]
    summary = summarize_window(window)
    assert summary.latest.hr_bpm == 130
    assert summary.latest.sbp_mmhg == 120
    assert summary.latest.rr_per_min == 28
    assert summary.context is not None
    assert summary.context.age_years == 70
    assert summary.news2.subscores["pulse"] == 2
    assert summary.news2.subscores["respiration_rate"] == 3
    vector = extract_features(window)
    assert feature(vector, "age") == pytest.approx(0.2)  # (70 - 50) / 20 / 5


def test_clinical_scores_in_features() -> None:
    vector = extract_features([frame(hr_bpm=120, sbp_mmhg=80, dbp_mmhg=50, consciousness=Consciousness.PAIN)])
    assert feature(vector, "news2_red_parameter") == 1.0
    assert feature(vector, "news2_consciousness") == 1.0
    assert feature(vector, "consciousness_level") == 0.75
    assert feature(vector, "shock_index") == pytest.approx((1.5 - 0.65) / 0.3 / 5)


def test_complaint_groups_in_features() -> None:
    context = PatientContext(chief_complaint="pain, chest", sex="female", injury=False, pain_nrs=8)
    vector = extract_features([frame(context=context)])
    assert feature(vector, "complaint_chest_pain") == 1.0
    assert feature(vector, "complaint_abdominal_pain") == 0.0
    assert feature(vector, "sex_male") == 0.0
    assert feature(vector, "pain_nrs") == pytest.approx(0.8)


def test_features_identical_for_identical_windows() -> None:
    window = [frame(hr_bpm=95, rr_per_min=22, context=PatientContext(chief_complaint="dyspnea"))]
    assert np.array_equal(extract_features(window), extract_features(list(window)))


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("abd pain", "abdominal pain"),
        ("Lt. side weakness", "left side weakness"),
        ("HA", "headache"),
        ("LOC", "loss of consciousness"),
        ("pain, chest", "chest pain"),
        ("G/W-general weakness", "general weakness general weakness"),
    ],
)
def test_complaint_normalisation(text: str, normalized: str) -> None:
    assert normalize_complaint(text) == normalized


@pytest.mark.parametrize(
    ("text", "group"),
    [
        ("ant. chest pain", "chest_pain"),
        ("dyspnea", "breathlessness"),
        ("mental change", "altered_mental_state"),
        ("rt. side motor weakness", "stroke_signs"),
        ("dysarthria", "stroke_signs"),
        ("hematemesis", "gi_bleeding"),
        ("post seizure", "seizure"),
        ("open wound", "injury"),
        ("RUQ pain", "abdominal_pain"),
    ],
)
def test_complaint_groups(text: str, group: str) -> None:
    assert group in complaint_groups(text)


def test_abbreviation_matches_whole_words_only() -> None:
    assert "headache" not in complaint_groups("chair fall")
    assert complaint_groups(None) == frozenset()


@pytest.mark.parametrize(
    ("diagnosis", "injury", "expected"),
    [
        ("Unstable angina", False, EmergencyType.CARDIAC),
        ("Acute myocardial infarction, unspecified", False, EmergencyType.CARDIAC),
        (
            "Cerebral infarction due to thrombosis of middle cerebral artery",
            False,
            EmergencyType.NEUROLOGICAL,
        ),
        ("Seizure", False, EmergencyType.NEUROLOGICAL),
        ("Community-acquired pneumonia", False, EmergencyType.RESPIRATORY),
        ("Dyspnoea", False, EmergencyType.RESPIRATORY),
        ("Acute pyelonephritis", False, EmergencyType.SEPSIS),
        ("Fever, unspecified", False, EmergencyType.SEPSIS),
        ("Fracture of femur closed", False, EmergencyType.TRAUMA),
        ("Traumatic subdural hemorrhage without open intracranial wound", False, EmergencyType.TRAUMA),
        ("Acute intoxication of alcohol", True, EmergencyType.TRAUMA),
        ("Acute gastroenteritis", False, EmergencyType.OTHER),
    ],
)
def test_emergency_type_labels(diagnosis: str, injury: bool, expected: EmergencyType) -> None:
    assert emergency_type_label(diagnosis, injury) == expected
