"""Alert policy: whether a triage result warrants a hospital pre-alert, and the alert itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from models.features import WindowSummary
from models.scores import news2_acuity_floor
from models.triage import OperatingPoint, final_acuity
from protocol import URGENT_ACUITY_MAX, HospitalAlert, Scores, TriageResult


@dataclass(frozen=True)
class Decision:
    acuity: int  # the more urgent (lower) of the edge's and the hub's final KTAS levels
    hub_acuity: int | None
    alert: HospitalAlert | None


def alert_id_for(result: TriageResult) -> str:
    """Return the alert id of a result: one per result, so every redelivery maps to the same alert."""
    return f"{result.device_id}-{result.sequence}"


def decide(
    result: TriageResult,
    summary: WindowSummary,
    hub_scores: Scores | None,
    hospital_id: str,
    operating_point: OperatingPoint | None = None,
    now: datetime | None = None,
) -> Decision:
    """Alert when the edge or the hub, each after the NEWS2 safety floor, finds the patient urgent.

    The more urgent opinion wins: a missed urgent patient costs more than an unneeded pre-alert. NEWS2
    is recomputed from the window here rather than trusted from the edge.
    """
    floor = news2_acuity_floor(summary.news2)
    edge_acuity = min(result.acuity, floor)
    hub_acuity = None if hub_scores is None else final_acuity(hub_scores, summary.news2, operating_point)[0]
    acuity = edge_acuity if hub_acuity is None else min(edge_acuity, hub_acuity)
    if acuity > URGENT_ACUITY_MAX:
        return Decision(acuity, hub_acuity, None)

    # Every opinion is listed, urgent or not, so a reader sees when NEWS2 overruled both models.
    reasons = []
    if result.scores.model is not None:
        reasons.append(f"edge model KTAS {result.scores.model_acuity}")
    if hub_scores is not None:
        reasons.append(f"hub model KTAS {hub_scores.model_acuity}")
    if floor <= URGENT_ACUITY_MAX:
        red = summary.news2.red_parameters
        detail = f", red: {', '.join(red)}" if red else ""
        reasons.append(f"NEWS2 {summary.news2.total}{detail} sets KTAS {floor} or more urgent")
    elif not reasons:
        reasons.append(f"edge KTAS {result.acuity}")
    ectopy = (hub_scores or result.scores).ventricular_ectopy_probability
    if ectopy is not None:
        threshold = operating_point.ectopy_threshold if operating_point else 0.5
        verdict = "ventricular ectopy" if ectopy >= threshold else "no ventricular ectopy"
        reasons.append(f"ECG strip: {verdict} (p {ectopy:.2f})")
    disagreement = hub_acuity is not None and (
        (result.acuity <= URGENT_ACUITY_MAX) != (hub_acuity <= URGENT_ACUITY_MAX)
    )
    scores_for_type = hub_scores or result.scores
    alert = HospitalAlert(
        alert_id=alert_id_for(result),
        hospital_id=hospital_id,
        device_id=result.device_id,
        incident_id=result.incident_id,
        sequence=result.sequence,
        created_at=now or datetime.now(UTC),
        frame_timestamp=result.frame_timestamp,
        acuity=acuity,
        emergency_type=scores_for_type.emergency_type,
        reason="; ".join(reasons),
        edge=result.scores,
        hub=hub_scores,
        disagreement=disagreement,
        news2=summary.news2,
        qsofa=summary.qsofa,
        shock_index=summary.shock_index,
        vitals=summary.latest,
    )
    return Decision(acuity, hub_acuity, alert)
