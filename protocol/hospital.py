"""Messages between the hub and hospitals, and the hub's feedback to ambulances.

A hospital's queue receives three kinds, told apart by `kind`: a new pre-alert (`hospital_alert`), an
update of an alert it already has (`alert_update`, when the patient becomes more urgent) and a
cancellation (`alert_cancellation`). The hospital answers with `hospital_ack`. The ambulance hears
what happened to its pre-alert through `alert_feedback`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from protocol.messages import (
    EmergencyType,
    Identifier,
    News2Score,
    Scores,
    VitalsFrame,
    _Contract,
)


class TrendPoint(_Contract):
    """One point of the vital-sign trend a hospital sees; absent values were not measured."""

    timestamp: AwareDatetime
    hr_bpm: float | None = None
    rr_per_min: float | None = None
    spo2_pct: float | None = None
    sbp_mmhg: float | None = None
    dbp_mmhg: float | None = None
    temp_c: float | None = None


class _AlertBody(_Contract):
    alert_id: str = Field(min_length=1, max_length=160)
    hospital_id: Identifier
    device_id: Identifier
    incident_id: Identifier
    sequence: int = Field(ge=0, description="the triage result behind this message")
    created_at: AwareDatetime
    frame_timestamp: AwareDatetime
    acuity: int = Field(ge=1, le=5)
    emergency_type: EmergencyType
    reason: str = Field(max_length=400)
    edge: Scores
    hub: Scores | None
    disagreement: bool = Field(description="edge and hub differ on whether the patient is urgent")
    news2: News2Score
    qsofa: int | None = Field(default=None, ge=0, le=3)
    shock_index: float | None = Field(default=None, ge=0)
    vitals: VitalsFrame
    trend: list[TrendPoint] = Field(default_factory=list, max_length=120)
    eta_minutes: float | None = Field(default=None, ge=0, description="estimated time to arrival")


class HospitalAlert(_AlertBody):
    """A pre-alert to one hospital about one incoming patient, with the scores behind it."""

    kind: Literal["hospital_alert"] = "hospital_alert"
    attempt: int = Field(default=1, ge=1, description="1 for the first delivery, then each re-send")
    escalated_from: Identifier | None = Field(
        default=None, description="hospital that did not acknowledge before this one was alerted"
    )


class AlertUpdate(_AlertBody):
    """The patient of an alert the hospital already has became more urgent."""

    kind: Literal["alert_update"] = "alert_update"
    previous_acuity: int = Field(ge=1, le=5)


class AlertCancellation(_Contract):
    kind: Literal["alert_cancellation"] = "alert_cancellation"
    alert_id: str = Field(min_length=1, max_length=160)
    hospital_id: Identifier
    device_id: Identifier
    incident_id: Identifier
    created_at: AwareDatetime
    reason: str = Field(max_length=300)


HospitalMessage = Annotated[HospitalAlert | AlertUpdate | AlertCancellation, Field(discriminator="kind")]


class HospitalAck(_Contract):
    """A hospital confirms it has seen an alert and is preparing for the patient."""

    kind: Literal["hospital_ack"] = "hospital_ack"
    alert_id: str = Field(min_length=1, max_length=160)
    hospital_id: Identifier
    acknowledged_at: AwareDatetime
    acknowledged_by: str = Field(min_length=1, max_length=80, description="staff member or 'board'")


FeedbackState = Literal["queued", "delivered", "resent", "acknowledged", "escalated", "updated", "cancelled"]


class AlertFeedback(_Contract):
    """What happened to an ambulance's pre-alert, sent back on `ambulance/<device>/feedback`."""

    kind: Literal["alert_feedback"] = "alert_feedback"
    device_id: Identifier
    incident_id: Identifier
    alert_id: str = Field(min_length=1, max_length=160)
    hospital_id: Identifier
    state: FeedbackState
    at: AwareDatetime
    detail: str | None = Field(default=None, max_length=300)
