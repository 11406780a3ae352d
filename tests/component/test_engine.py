"""The hub's engine against a real store (SQLite and PostgreSQL), without a broker.

Covers the alert policy over time: new alerts, suppressed repeats, updates when the patient worsens,
re-routing and cancellation by the crew, redelivered results, broker confirmations, acknowledgements,
re-sends and escalation. A fake clock moves time instead of sleeping.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from cloud_hub.config import HubConfig
from cloud_hub.engine import Delivery, HubEngine
from cloud_hub.scoring import HubScorer
from cloud_hub.store import (
    ALERT_ACKNOWLEDGED,
    ALERT_CANCELLED,
    ALERT_DELIVERED,
    ALERT_ESCALATED,
    ALERT_PENDING,
    HubStore,
)
from edge_agent.inference import EdgeScorer
from models.series import summarize_frames
from protocol import Consciousness, GeoPosition, HospitalAck, IncidentCancel, TriageResult, VitalsFrame
from protocol.topics import triage_topic

START = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
CRITICAL = {"hr_bpm": 138, "rr_per_min": 30, "spo2_pct": 86, "sbp_mmhg": 84, "dbp_mmhg": 50, "temp_c": 39.4,
            "consciousness": Consciousness.VOICE, "supplemental_oxygen": True}  # fmt: skip
WORSE = {
    **CRITICAL,
    "consciousness": Consciousness.UNRESPONSIVE,
    "sbp_mmhg": 62,
    "dbp_mmhg": 35,
    "spo2_pct": 78,
}
HOSPITALS = [
    {"id": "st-marys", "latitude": 51.5175, "longitude": -0.1740, "pci": True, "stroke_centre": True,
     "trauma_level": 1, "backup_hospital_id": "city-general"},
    {"id": "city-general", "latitude": 51.4980, "longitude": -0.1180, "trauma_level": 3,
     "backup_hospital_id": "st-marys"},
]  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def scorers() -> tuple[EdgeScorer, HubScorer]:
    return EdgeScorer(), HubScorer()


@pytest.fixture
def setup(store_url: str, scorers):
    config = HubConfig.model_validate(
        {
            "hospitals": HOSPITALS,
            "suppression_window_s": 600,
            "ack_timeout_s": 30,
            "max_resends": 1,
            "http_port": 0,
        }
    )
    store = HubStore(store_url)
    clock = Clock()
    engine = HubEngine(config, store, scorers[1], clock=clock)
    yield engine, store, clock, scorers[0]
    store.close()


class Ambulance:
    """Builds triage results the way an edge agent does, with consecutive sequence numbers."""

    def __init__(self, edge: EdgeScorer, clock: Clock, device: str = "amb-01"):
        self.edge, self.clock, self.device, self.sequence, self.tag = edge, clock, device, 0, 0

    def result(self, incident: str, values: dict, **extra) -> TriageResult:
        frame = VitalsFrame(device_id=self.device, incident_id=incident, timestamp=self.clock(), **values)
        assessment = self.edge.assess([frame], history=summarize_frames([frame]))
        result = TriageResult(
            device_id=self.device, incident_id=incident, sequence=self.sequence, created_at=self.clock(),
            window=[frame], scores=assessment.scores, acuity=assessment.acuity,
            acuity_floor_applied=assessment.floor_applied, emergency_type=assessment.scores.emergency_type,
            news2=assessment.summary.news2, inference_ms=1.0, **extra,
        )  # fmt: skip
        self.sequence += 1
        return result

    def delivery(self, message) -> Delivery:  # noqa: ANN001 - any ambulance message
        self.tag += 1
        return Delivery(
            self.tag, triage_topic(self.device).replace("/", "."), message.model_dump_json().encode()
        )


def confirm_all(engine: HubEngine, outcome) -> list:  # noqa: ANN001
    """Pretend the broker confirmed every message; return the feedback that follows."""
    return engine.on_confirmed([message.id for message in outcome.publish])


def kinds(messages) -> list[str]:  # noqa: ANN001
    return [message.kind for message in messages]


def test_urgent_result_alerts_nearest_capable_hospital(setup) -> None:
    engine, store, clock, edge = setup
    ambulance = Ambulance(edge, clock)
    # Close to city-general, but a cardiac patient goes to the PCI hospital.
    result = ambulance.result("inc-1", CRITICAL, position=GeoPosition(latitude=51.4985, longitude=-0.1185))
    outcome = engine.process_batch([ambulance.delivery(result)])

    assert outcome.stored == 1
    assert kinds(outcome.publish) == ["hospital_alert", "alert_feedback"]
    alert = json.loads(outcome.publish[0].body)
    nearest_capable = (
        "st-marys" if alert["emergency_type"] in ("cardiac", "neurological", "trauma") else "city-general"
    )
    assert alert["hospital_id"] == nearest_capable
    assert alert["eta_minutes"] is not None
    assert alert["trend"][0]["hr_bpm"] == 138
    # The input waits for the alert, not for the feedback.
    assert outcome.waiting == {1: {outcome.publish[0].id}}
    assert outcome.ack_now == []

    feedback = confirm_all(engine, outcome)
    row = store.alert(alert["alert_id"])
    assert row.state == ALERT_DELIVERED
    assert row.attempts == 1
    assert [json.loads(m.body)["state"] for m in feedback] == ["delivered"]


def test_repeat_within_window_suppressed(setup) -> None:
    engine, store, clock, edge = setup
    ambulance = Ambulance(edge, clock)
    first = engine.process_batch([ambulance.delivery(ambulance.result("inc-1", CRITICAL))])
    confirm_all(engine, first)

    clock.advance(60)
    repeat = engine.process_batch([ambulance.delivery(ambulance.result("inc-1", CRITICAL))])
    assert repeat.publish == []
    assert len(repeat.ack_now) == 1
    assert repeat.stored == 1  # the result is kept, only the alert is suppressed

    clock.advance(601)
    later = engine.process_batch([ambulance.delivery(ambulance.result("inc-1", CRITICAL))])
    assert "hospital_alert" in kinds(later.publish)  # the window has passed


def test_crew_prealert_never_suppressed(setup) -> None:
    engine, store, clock, edge = setup
    ambulance = Ambulance(edge, clock)
    first = engine.process_batch([ambulance.delivery(ambulance.result("inc-2", CRITICAL))])
    confirm_all(engine, first)

    clock.advance(60)
    note = "GCS dropping, ETA 6 min"
    manual = ambulance.result("inc-2", CRITICAL, crew_prealert=True, crew_note=note)
    outcome = engine.process_batch([ambulance.delivery(manual)])
    assert kinds(outcome.publish) == ["hospital_alert", "alert_feedback"]
    alert = json.loads(outcome.publish[0].body)
    assert alert["reason"].startswith(f"crew pre-alert: {note}")
    assert alert["alert_id"] != json.loads(first.publish[0].body)["alert_id"]


def test_update_sent_when_acuity_rises(setup) -> None:
    """Forces the update path: an alert stored at KTAS 2 followed by a KTAS 1 result."""
    engine, store, clock, edge = setup
    ambulance = Ambulance(edge, clock)
    outcome = engine.process_batch([ambulance.delivery(ambulance.result("inc-9", CRITICAL))])
    alert_id = json.loads(outcome.publish[0].body)["alert_id"]
    with store.transaction(clock()) as tx:
        tx.update_alert(alert_id, acuity=5)  # as if the first result had been less urgent
    clock.advance(30)
    outcome = engine.process_batch([ambulance.delivery(ambulance.result("inc-9", WORSE))])
    assert kinds(outcome.publish) == ["alert_update", "alert_feedback"]
    update = json.loads(outcome.publish[0].body)
    assert update["previous_acuity"] == 5
    assert store.alert(alert_id).acuity == update["acuity"]


def test_crew_reroute_cancels_old_alert(setup) -> None:
    engine, store, clock, edge = setup
    ambulance = Ambulance(edge, clock)
    first = engine.process_batch(
        [ambulance.delivery(ambulance.result("inc-1", CRITICAL, destination_hospital_id="st-marys"))]
    )
    old_id = json.loads(first.publish[0].body)["alert_id"]
    clock.advance(30)
    rerouted = engine.process_batch(
        [ambulance.delivery(ambulance.result("inc-1", CRITICAL, destination_hospital_id="city-general"))]
    )
    # Messages to hospitals come first (stored, confirmed), then the crew's feedback (published only).
    assert kinds(rerouted.publish) == [
        "alert_cancellation",
        "hospital_alert",
        "alert_feedback",
        "alert_feedback",
    ]
    assert json.loads(rerouted.publish[0].body)["hospital_id"] == "st-marys"
    assert json.loads(rerouted.publish[1].body)["hospital_id"] == "city-general"
    assert store.alert(old_id).state == ALERT_CANCELLED


def test_crew_cancels_incident(setup) -> None:
    engine, store, clock, edge = setup
    ambulance = Ambulance(edge, clock)
    first = engine.process_batch([ambulance.delivery(ambulance.result("inc-1", CRITICAL))])
    alert_id = json.loads(first.publish[0].body)["alert_id"]
    cancel = IncidentCancel(
        device_id="amb-01", incident_id="inc-1", cancelled_at=clock(), reason="refused transport"
    )
    outcome = engine.process_batch([ambulance.delivery(cancel)])
    assert kinds(outcome.publish) == ["alert_cancellation", "alert_feedback"]
    assert "refused transport" in json.loads(outcome.publish[0].body)["reason"]
    assert store.alert(alert_id).state == ALERT_CANCELLED


def test_redelivery_waits_for_unconfirmed_alert(setup) -> None:
    engine, store, clock, edge = setup
    ambulance = Ambulance(edge, clock)
    result = ambulance.result("inc-1", CRITICAL)
    first = engine.process_batch([ambulance.delivery(result)])
    # The hub crashed before the broker confirmed; the same result comes again.
    again = engine.process_batch([ambulance.delivery(result)])
    assert again.stored == 0
    assert again.duplicates == 1
    alert_message = first.publish[0]
    assert [m.id for m in again.publish] == [m.id for m in first.publish if m.kind == "hospital_alert"]
    assert again.waiting == {2: {alert_message.id}}
    # Once confirmed, a further redelivery is acknowledged at once.
    confirm_all(engine, first)
    third = engine.process_batch([ambulance.delivery(result)])
    assert third.publish == []
    assert len(third.ack_now) == 1
    assert store.result_keys() == {("amb-01", 0)}


def test_malformed_and_spoofed_messages_dead_lettered(setup) -> None:
    engine, store, clock, edge = setup
    ambulance = Ambulance(edge, clock)
    valid = ambulance.result("inc-1", CRITICAL)
    spoofed = Delivery(7, "ambulance.someone-else.triage", valid.model_dump_json().encode())
    outcome = engine.process_batch([Delivery(5, "ambulance.amb-01.triage", b"{not json"), spoofed])
    reasons = dict((delivery.tag, reason) for delivery, reason in outcome.dead_letters)
    assert reasons[5].startswith("invalid message")
    assert "differs from 'someone-else'" in reasons[7]
    assert store.result_keys() == set()


def test_unacknowledged_alert_resent_then_escalated(setup) -> None:
    engine, store, clock, edge = setup
    ambulance = Ambulance(edge, clock)
    first = engine.process_batch(
        [ambulance.delivery(ambulance.result("inc-1", CRITICAL, destination_hospital_id="st-marys"))]
    )
    alert_id = json.loads(first.publish[0].body)["alert_id"]
    confirm_all(engine, first)

    clock.advance(10)
    assert engine.check_overdue() == []  # not yet due

    clock.advance(25)
    resend = engine.check_overdue()
    assert kinds(resend) == ["hospital_alert", "alert_feedback"]
    assert json.loads(resend[0].body)["attempt"] == 2
    assert store.alert(alert_id).state == ALERT_PENDING
    engine.on_confirmed([m.id for m in resend])
    assert store.alert(alert_id).attempts == 2

    clock.advance(31)
    escalation = engine.check_overdue()
    assert kinds(escalation) == ["hospital_alert", "alert_feedback"]
    escalated = json.loads(escalation[0].body)
    assert escalated["hospital_id"] == "city-general"
    assert escalated["escalated_from"] == "st-marys"
    assert store.alert(alert_id).state == ALERT_ESCALATED
    assert json.loads(escalation[1].body)["state"] == "escalated"
    events = [event["kind"] for event in store.events(alert_id)]
    assert events == ["queued", "delivered", "resent", "delivered", "escalated"]


def test_acknowledgement_stops_resends(setup) -> None:
    engine, store, clock, edge = setup
    ambulance = Ambulance(edge, clock)
    first = engine.process_batch(
        [ambulance.delivery(ambulance.result("inc-1", CRITICAL, destination_hospital_id="st-marys"))]
    )
    alert_id = json.loads(first.publish[0].body)["alert_id"]
    confirm_all(engine, first)
    clock.advance(12)
    feedback = engine.handle_ack(
        HospitalAck(
            alert_id=alert_id, hospital_id="st-marys", acknowledged_at=clock(), acknowledged_by="dr-lee"
        )
    )
    assert [json.loads(m.body)["state"] for m in feedback] == ["acknowledged"]
    row = store.alert(alert_id)
    assert row.state == ALERT_ACKNOWLEDGED
    assert row.acknowledged_by == "dr-lee"
    clock.advance(120)
    assert engine.check_overdue() == []
    # An acknowledgement from another hospital, or a second one, changes nothing.
    wrong = HospitalAck(
        alert_id=alert_id, hospital_id="city-general", acknowledged_at=clock(), acknowledged_by="x"
    )
    assert engine.handle_ack(wrong) == []
