"""The journey of one triage result: from the ambulance's outbox to the hospital's acknowledgement.

Stages, in order, and where each comes from:
- queued: the result is in the outbox (`results.created_at`);
- sent: handed to the MQTT client (`results.first_sent_at`);
- confirmed: the broker confirmed it (`results.state = 'delivered'`, `delivered_at`);
- at hub: the hub received it and queued a pre-alert (feedback `queued`);
- at hospital: the pre-alert reached the hospital's queue (feedback `delivered`);
- acknowledged: the hospital acknowledged it (feedback `acknowledged`).
Only results that raise a pre-alert get feedback; a routine result's journey ends at "confirmed".
The hub names a result's own pre-alert `<device>-<sequence>` and an escalation of it
`<device>-<sequence>-esc-<hospital>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class FeedbackEvent:
    """One thing the hub reported about a pre-alert."""

    alert_id: str
    hospital_id: str
    state: str
    at: datetime
    detail: str | None


@dataclass(frozen=True)
class ResultRow:
    """The outbox's bookkeeping of one result (not its payload)."""

    sequence: int
    incident_id: str
    created_at: datetime
    acuity: int
    urgent: bool
    crew_prealert: bool
    sent_at: datetime | None
    confirmed_at: datetime | None


def alert_id_of(device_id: str, sequence: int) -> str:
    """Return the id the hub gives the pre-alert raised by a result (see `cloud_hub.engine`)."""
    return f"{device_id}-{sequence}"


def belongs_to(alert_id: str, own_alert_id: str) -> bool:
    """Return True for the result's own pre-alert and for its escalations."""
    return alert_id == own_alert_id or alert_id.startswith(f"{own_alert_id}-esc-")


@dataclass(frozen=True)
class Journey:
    row: ResultRow
    hub_at: datetime | None
    hospital_at: datetime | None
    hospital_id: str | None
    acknowledged_at: datetime | None
    latest: FeedbackEvent | None

    @property
    def stage(self) -> str:
        """Return the furthest stage reached: queued, sent, confirmed, hub, hospital or acknowledged."""
        if self.acknowledged_at is not None:
            return "acknowledged"
        if self.hospital_at is not None:
            return "hospital"
        if self.hub_at is not None or self.latest is not None:
            return "hub"
        if self.row.confirmed_at is not None:
            return "confirmed"
        if self.row.sent_at is not None:
            return "sent"
        return "queued"

    def status(self, offline: bool) -> str:
        """Describe in one plain sentence where the result is now."""
        latest = self.latest
        if latest is not None:
            return _describe_feedback(latest)
        if self.row.confirmed_at is not None:
            if self.row.urgent or self.row.crew_prealert:
                return "broker has it; waiting for the hub"
            return "broker has it"
        if self.row.sent_at is not None:
            return "sent; waiting for the broker"
        return "waiting for coverage" if offline else "queued on the ambulance"


def _describe_feedback(event: FeedbackEvent) -> str:
    where = event.hospital_id
    detail = f": {event.detail}" if event.detail else ""
    if event.state == "acknowledged":
        return f"acknowledged by {where}"
    if event.state == "delivered":
        return f"delivered to {where}; waiting for acknowledgement"
    if event.state == "queued":
        return f"hub alerting {where}"
    if event.state == "resent":
        return f"re-sent to {where}{detail}"
    if event.state == "escalated":
        return f"escalated from {where}{detail}"
    if event.state == "updated":
        return f"update sent to {where}{detail}"
    if event.state == "cancelled":
        return f"cancelled at {where}{detail}"
    return f"{event.state} at {where}{detail}"


def build_journey(row: ResultRow, feedback: Sequence[FeedbackEvent]) -> Journey:
    """Combine a result's outbox row with the hub's feedback on it (oldest first)."""
    hub_at = None
    hospital_at = None
    hospital_id = None
    acknowledged_at = None
    for event in feedback:
        if event.state == "queued" and hub_at is None:
            hub_at = event.at
        elif event.state == "delivered":
            # After an escalation the newest delivery is the one that matters.
            hospital_at = event.at
            hospital_id = event.hospital_id
        elif event.state == "acknowledged" and acknowledged_at is None:
            acknowledged_at = event.at
            hospital_id = event.hospital_id
    return Journey(
        row=row,
        hub_at=hub_at,
        hospital_at=hospital_at,
        hospital_id=hospital_id,
        acknowledged_at=acknowledged_at,
        latest=feedback[-1] if feedback else None,
    )
