"""Alert policy: whether a triage result warrants a hospital pre-alert, and which message it causes.

`assess` combines the edge's scores, the hub's scores and NEWS2 into one urgency; `plan` decides,
against the alerts the incident already has, between a new alert, an update, a suppressed repeat and
a re-routing; `build_alert` writes the message with the scores and model versions behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cloud_hub.store import ALERT_ACKNOWLEDGED, ALERT_DELIVERED, ALERT_PENDING, AlertRow
from models.features import WindowSummary
from models.scores import QSOFA_POSITIVE, SHOCK_INDEX_ABNORMAL, news2_acuity_floor
from models.triage import OperatingPoint, final_acuity
from protocol import URGENT_ACUITY_MAX, EmergencyType, HospitalAlert, Scores, TrendPoint, TriageResult

MAX_TREND_POINTS = 60
MAX_REASON_CHARS = 400  # HospitalAlert.reason's limit


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Assessment:
    acuity: int  # the more urgent (lower) of the edge's and the hub's final KTAS levels
    hub_acuity: int | None
    emergency_type: EmergencyType
    reason: str
    disagreement: bool
    crew_prealert: bool = False

    @property
    def urgent(self) -> bool:
        """Whether the result alerts: an urgent level, or a pre-alert the crew asked for."""
        return self.acuity <= URGENT_ACUITY_MAX or self.crew_prealert


@dataclass(frozen=True)
class Decision:
    acuity: int
    hub_acuity: int | None
    alert: HospitalAlert | None


@dataclass(frozen=True)
class Plan:
    """What an urgent result does to the incident's alerts."""

    action: str  # "new", "update", "suppress"
    alert: AlertRow | None = None  # the alert updated or repeated
    cancel: tuple[AlertRow, ...] = ()  # alerts at other hospitals to cancel: the crew re-routed


def alert_id_for(result: TriageResult) -> str:
    """Return the alert id of a result: one per result, so every redelivery maps to the same alert."""
    return f"{result.device_id}-{result.sequence}"


def assess(
    result: TriageResult,
    summary: WindowSummary,
    hub_scores: Scores | None,
    operating_point: OperatingPoint | None = None,
) -> Assessment:
    """Combine the opinions: the more urgent wins, because a missed urgent patient costs more than an
    unneeded pre-alert. NEWS2 is recomputed from the window here rather than trusted from the edge.
    """
    floor = news2_acuity_floor(summary.news2)
    edge_acuity = min(result.acuity, floor)
    hub_acuity = None if hub_scores is None else final_acuity(hub_scores, summary.news2, operating_point)[0]
    acuity = edge_acuity if hub_acuity is None else min(edge_acuity, hub_acuity)

    # Every opinion is listed, urgent or not, so a reader sees when NEWS2 overruled both models.
    reasons = []
    if result.crew_prealert:
        reasons.append(f"crew pre-alert: {result.crew_note}" if result.crew_note else "crew pre-alert")
    if result.scores.model is not None:
        reasons.append(f"edge model KTAS {result.scores.model_acuity}")
    else:
        reasons.append("edge: NEWS2 only, no usable model")
    if hub_scores is not None:
        reasons.append(f"hub model KTAS {hub_scores.model_acuity}")
    if floor <= URGENT_ACUITY_MAX:
        red = summary.news2.red_parameters
        detail = f", red: {', '.join(red)}" if red else ""
        reasons.append(f"NEWS2 {summary.news2.total}{detail} sets KTAS {floor} or more urgent")
    # Shown beside the levels so the hospital gets the sepsis and shock screens; sources in models/scores.py.
    if summary.qsofa is not None and summary.qsofa >= QSOFA_POSITIVE:
        reasons.append(f"qSOFA {summary.qsofa} (sepsis screen positive)")
    if summary.shock_index is not None and summary.shock_index >= SHOCK_INDEX_ABNORMAL:
        reasons.append(f"shock index {summary.shock_index:.2f} (circulatory shock)")
    scores = hub_scores or result.scores
    ectopy = scores.ventricular_ectopy_probability
    if ectopy is not None:
        threshold = operating_point.ectopy_threshold if operating_point else 0.5
        verdict = "ventricular ectopy" if ectopy >= threshold else "no ventricular ectopy"
        reasons.append(f"ECG strip: {verdict} (p {ectopy:.2f})")
    # An edge without a model has no opinion of its own to disagree with.
    disagreement = (
        hub_acuity is not None
        and result.scores.model is not None
        and (result.acuity <= URGENT_ACUITY_MAX) != (hub_acuity <= URGENT_ACUITY_MAX)
    )
    return Assessment(
        acuity, hub_acuity, scores.emergency_type, "; ".join(reasons), disagreement, result.crew_prealert
    )


def trend_of(result: TriageResult) -> list[TrendPoint]:
    frames = result.window[-MAX_TREND_POINTS:]
    return [
        TrendPoint(
            timestamp=frame.timestamp,
            hr_bpm=frame.hr_bpm,
            rr_per_min=frame.rr_per_min,
            spo2_pct=frame.spo2_pct,
            sbp_mmhg=frame.sbp_mmhg,
            dbp_mmhg=frame.dbp_mmhg,
            temp_c=frame.temp_c,
        )
        for frame in frames
    ]


def build_alert(
    result: TriageResult,
    summary: WindowSummary,
    assessment: Assessment,
    hub_scores: Scores | None,
    hospital_id: str,
    *,
    alert_id: str | None = None,
    eta_minutes: float | None = None,
    now: datetime | None = None,
) -> HospitalAlert:
    return HospitalAlert(
        alert_id=alert_id or alert_id_for(result),
        hospital_id=hospital_id,
        device_id=result.device_id,
        incident_id=result.incident_id,
        sequence=result.sequence,
        created_at=now or datetime.now(UTC),
        frame_timestamp=result.frame_timestamp,
        acuity=assessment.acuity,
        emergency_type=assessment.emergency_type,
        reason=_clip(assessment.reason, MAX_REASON_CHARS),
        edge=result.scores,
        hub=hub_scores,
        disagreement=assessment.disagreement,
        news2=summary.news2,
        qsofa=summary.qsofa,
        shock_index=summary.shock_index,
        vitals=summary.latest,
        trend=trend_of(result),
        eta_minutes=eta_minutes,
    )


def plan(
    assessment: Assessment,
    result: TriageResult,
    hospital_id: str,
    open_alerts: list[AlertRow],
    suppression_window_s: float,
    now: datetime,
) -> Plan:
    """Decide what an urgent result does, given the incident's alerts that are not cancelled.

    - The crew named a destination other than a hospital already alerted: cancel those, alert anew.
    - An alert of the same emergency type within the suppression window: an update if the patient
      is now more urgent, otherwise nothing (the hospital already knows).
    - A pre-alert the crew sent by hand: always a new alert, which carries their note.
    - Otherwise a new alert.
    """
    live = [row for row in open_alerts if row.state in (ALERT_PENDING, ALERT_DELIVERED, ALERT_ACKNOWLEDGED)]
    chosen = result.destination_hospital_id
    rerouted = tuple(
        row for row in live if chosen is not None and row.hospital_id != chosen and row.escalation_of is None
    )
    if rerouted:
        return Plan("new", cancel=rerouted)
    if result.crew_prealert:
        return Plan("new")  # the crew's note must reach the hospital, so it is never suppressed
    same_type = [row for row in live if row.emergency_type == assessment.emergency_type.value]
    if same_type:
        newest = max(same_type, key=lambda row: row.created_at)
        if (now - newest.created_at).total_seconds() < suppression_window_s:
            if assessment.acuity < newest.acuity:
                return Plan("update", alert=newest)
            return Plan("suppress", alert=newest)
    return Plan("new")


def decide(
    result: TriageResult,
    summary: WindowSummary,
    hub_scores: Scores | None,
    hospital_id: str,
    operating_point: OperatingPoint | None = None,
    now: datetime | None = None,
) -> Decision:
    """Assess a result and build its alert if it is urgent, without looking at earlier alerts."""
    assessment = assess(result, summary, hub_scores, operating_point)
    if not assessment.urgent:
        return Decision(assessment.acuity, assessment.hub_acuity, None)
    alert = build_alert(result, summary, assessment, hub_scores, hospital_id, now=now)
    return Decision(assessment.acuity, assessment.hub_acuity, alert)
