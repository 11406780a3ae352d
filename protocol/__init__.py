"""Message contracts and topic names shared by the edge agent, the hub, hospitals and the fleet."""

from protocol.messages import (
    ACUITY_LEVELS,
    EMERGENCY_TYPES,
    URGENT_ACUITY_MAX,
    Consciousness,
    ContractError,
    EmergencyType,
    HospitalAlert,
    ModelInfo,
    News2Score,
    PatientContext,
    Scores,
    SeriesSummary,
    TriageResult,
    VitalsFrame,
    VitalStats,
    parse_message,
)

__all__ = [
    "ACUITY_LEVELS",
    "EMERGENCY_TYPES",
    "URGENT_ACUITY_MAX",
    "Consciousness",
    "ContractError",
    "EmergencyType",
    "HospitalAlert",
    "ModelInfo",
    "News2Score",
    "PatientContext",
    "Scores",
    "SeriesSummary",
    "TriageResult",
    "VitalsFrame",
    "VitalStats",
    "parse_message",
]
