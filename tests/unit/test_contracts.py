"""Message contracts: valid messages round-trip, invalid ones name the field and the value."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from protocol import (
    ContractError,
    EmergencyType,
    HospitalAlert,
    News2Score,
    Scores,
    TriageResult,
    VitalsFrame,
    parse_message,
)
from protocol.topics import (
    check_id,
    device_id_from_routing_key,
    hospital_routing_key,
    mqtt_topic_to_routing_key,
    triage_topic,
)

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def make_frame(**changes) -> VitalsFrame:
    values = {
        "device_id": "amb-1",
        "incident_id": "inc-1",
        "timestamp": NOW,
        "hr_bpm": 90,
        "sbp_mmhg": 120,
        "dbp_mmhg": 80,
    }
    return VitalsFrame(**{**values, **changes})


def make_result(**changes) -> TriageResult:
    scores = Scores(
        acuity_probabilities=[0.1, 0.2, 0.4, 0.2, 0.1],
        urgent_probability=0.3,
        model_acuity=3,
        emergency_type_probabilities={t: 1 / 6 for t in EmergencyType},
        model=None,
    )
    values = dict(
        device_id="amb-1",
        incident_id="inc-1",
        sequence=7,
        created_at=NOW,
        window=[make_frame()],
        scores=scores,
        acuity=3,
        acuity_floor_applied=False,
        emergency_type=EmergencyType.CARDIAC,
        news2=News2Score(total=1, subscores={"pulse": 1}, red_parameters=[], missing=[]),
        inference_ms=0.4,
    )
    return TriageResult(**{**values, **changes})


def test_triage_result_round_trip() -> None:
    result = make_result()
    parsed = parse_message(TriageResult, result.model_dump_json())
    assert parsed == result
    assert parsed.frame_timestamp == NOW
    assert parsed.scores.model_acuity == 3


def test_invalid_vital_names_field_and_value() -> None:
    payload = make_result().model_dump(mode="json")
    payload["window"][0]["hr_bpm"] = 420
    with pytest.raises(ContractError) as error:
        parse_message(TriageResult, json.dumps(payload))
    assert "window.0.hr_bpm" in str(error.value)
    assert "420" in str(error.value)


def test_malformed_json_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match="invalid TriageResult"):
        parse_message(TriageResult, b"{not json")


def test_unknown_field_rejected() -> None:
    payload = make_result().model_dump(mode="json")
    payload["surprise"] = 1
    with pytest.raises(ContractError, match="surprise"):
        parse_message(TriageResult, json.dumps(payload))


def test_diastolic_above_systolic_rejected() -> None:
    with pytest.raises(ValueError, match="dbp_mmhg 130.0 is above sbp_mmhg 120.0"):
        make_frame(dbp_mmhg=130)


def test_naive_timestamp_rejected() -> None:
    with pytest.raises(ValueError, match="timezone"):
        make_frame(timestamp=datetime(2026, 1, 1))


def test_window_of_other_incident_rejected() -> None:
    with pytest.raises(ValueError, match="does not belong"):
        make_result(window=[make_frame(incident_id="other")])


def test_window_out_of_order_rejected() -> None:
    with pytest.raises(ValueError, match="time order"):
        make_result(window=[make_frame(), make_frame(timestamp=NOW - timedelta(seconds=5))])


def test_probabilities_must_sum_to_one() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        Scores(
            acuity_probabilities=[0.5, 0.5, 0.5, 0.0, 0.0],
            urgent_probability=0.5,
            model_acuity=2,
            emergency_type_probabilities={t: 1 / 6 for t in EmergencyType},
            model=None,
        )


def test_alert_contract_requires_hospital() -> None:
    result = make_result()
    with pytest.raises(ValueError, match="hospital_id"):
        HospitalAlert(
            alert_id="a",
            device_id="amb-1",
            incident_id="inc-1",
            sequence=1,
            created_at=NOW,
            frame_timestamp=NOW,
            acuity=2,
            emergency_type=EmergencyType.CARDIAC,
            reason="test",
            edge=result.scores,
            hub=None,
            disagreement=False,
            news2=result.news2,
            vitals=make_frame(),
        )


def test_topics_and_routing_keys() -> None:
    assert triage_topic("amb-1") == "ambulance/amb-1/triage"
    assert mqtt_topic_to_routing_key(triage_topic("amb-1")) == "ambulance.amb-1.triage"
    assert device_id_from_routing_key("ambulance.amb-1.triage") == "amb-1"
    assert device_id_from_routing_key("ambulance.amb-1.status") is None
    assert hospital_routing_key("st-marys") == "hospital.st-marys.alert"


@pytest.mark.parametrize("bad", ["", "a/b", "a.b", "a+", "#", "a b", "-lead", "x" * 65])
def test_ids_that_break_topics_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid device id"):
        check_id(bad, "device id")
