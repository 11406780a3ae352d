"""Message contracts between ambulances, the hub and hospitals.

Every message is JSON. Parsing goes through `parse_message`, which raises `ContractError` naming each
invalid field and the value it held, so a rejected message can be dead-lettered with a readable reason.
Plausibility bounds on vital signs reject values that no living patient or working monitor produces
(a heart rate of 400/min, a diastolic pressure above the systolic one); they are not clinical alarms.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from protocol.topics import ID_PATTERN

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]

ACUITY_LEVELS = (1, 2, 3, 4, 5)
# KTAS levels 1 (resuscitation) and 2 (emergency) are the ones a hospital must be warned about.
URGENT_ACUITY_MAX = 2


class ContractError(ValueError):
    """A message that does not match its contract; the text names each invalid field and value."""


class Consciousness(StrEnum):
    """ACVPU level as NEWS2 uses it: Alert, new Confusion, responds to Voice, to Pain, Unresponsive."""

    ALERT = "A"
    CONFUSED = "C"
    VOICE = "V"
    PAIN = "P"
    UNRESPONSIVE = "U"


class EmergencyType(StrEnum):
    CARDIAC = "cardiac"
    RESPIRATORY = "respiratory"
    NEUROLOGICAL = "neurological"
    TRAUMA = "trauma"
    SEPSIS = "sepsis"
    OTHER = "other"


EMERGENCY_TYPES: tuple[EmergencyType, ...] = tuple(EmergencyType)


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PatientContext(_Contract):
    """What the crew knows about the patient besides the monitor's numbers."""

    age_years: int | None = Field(default=None, ge=0, le=120)
    sex: Literal["female", "male"] | None = None
    chief_complaint: str | None = Field(default=None, max_length=200)
    injury: bool | None = None
    pain_nrs: int | None = Field(default=None, ge=0, le=10, description="numeric rating scale 0-10")
    arrival_mode: Literal["ambulance", "walk-in", "private-vehicle", "other"] | None = None


class VitalsFrame(_Contract):
    """One set of vital signs for one patient at one moment."""

    device_id: Identifier
    incident_id: Identifier
    timestamp: AwareDatetime
    hr_bpm: float | None = Field(default=None, ge=0, le=300)
    rr_per_min: float | None = Field(default=None, ge=0, le=80)
    spo2_pct: float | None = Field(default=None, ge=0, le=100)
    sbp_mmhg: float | None = Field(default=None, ge=0, le=300)
    dbp_mmhg: float | None = Field(default=None, ge=0, le=250)
    temp_c: float | None = Field(default=None, ge=25, le=45)
    consciousness: Consciousness | None = None
    gcs: int | None = Field(default=None, ge=3, le=15)
    supplemental_oxygen: bool | None = None
    context: PatientContext | None = None
    destination_hospital_id: Identifier | None = None
    source: str | None = Field(
        default=None, max_length=120, description="provenance of replayed data, e.g. 'ktas row 17'"
    )

    @field_validator("hr_bpm", "rr_per_min", "spo2_pct", "sbp_mmhg", "dbp_mmhg", "temp_c")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _diastolic_below_systolic(self) -> VitalsFrame:
        if self.sbp_mmhg is not None and self.dbp_mmhg is not None and self.dbp_mmhg > self.sbp_mmhg:
            raise ValueError(
                f"dbp_mmhg {self.dbp_mmhg} is above sbp_mmhg {self.sbp_mmhg}; check the cuff reading"
            )
        return self


class News2Score(_Contract):
    """National Early Warning Score 2 with the parameters behind it."""

    total: int = Field(ge=0, le=20)
    subscores: dict[str, int]
    red_parameters: list[str] = Field(description="parameters that scored 3 on their own")
    missing: list[str] = Field(description="parameters absent from the frame; they scored 0")


SERIES_VITALS = ("hr_bpm", "rr_per_min", "sbp_mmhg", "dbp_mmhg", "temp_c", "spo2_pct", "gcs")


class VitalStats(_Contract):
    """Summary of one vital sign's measurements over an incident, in time order.

    "Early" is the older half of the measurements, "late" the newer half, "recent" the newest quarter.
    """

    count: int = Field(ge=1)
    min: float
    max: float
    mean: float
    std: float = Field(ge=0)
    first: float
    last: float
    recent_mean: float
    early_min: float
    early_max: float
    late_min: float
    late_max: float
    late_mean: float
    share_low: float = Field(ge=0, le=1, description="share of measurements below the low cut-off")
    share_high: float = Field(ge=0, le=1, description="share of measurements above the high cut-off")


class SeriesSummary(_Contract):
    """The incident's vital-sign history so far, condensed for the deterioration model."""

    frames: int = Field(ge=1)
    vitals: dict[str, VitalStats]
    oxygen_frames: int = Field(ge=0, description="frames recorded on supplemental oxygen")
    age_years: int | None = Field(default=None, ge=0, le=120)
    sex: Literal["female", "male"] | None = None

    @field_validator("vitals")
    @classmethod
    def _known_vitals(cls, vitals: dict[str, VitalStats]) -> dict[str, VitalStats]:
        unknown = set(vitals) - set(SERIES_VITALS)
        if unknown:
            raise ValueError(f"unknown vitals {sorted(unknown)}; expected some of {list(SERIES_VITALS)}")
        return vitals


class ModelInfo(_Contract):
    version: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Scores(_Contract):
    """One model bundle's opinion of a patient.

    `model_acuity` is the KTAS level the model's outputs give at the bundle's operating point, before
    any safety floor: urgent (1-2) when `urgent_probability` reaches the bundle's threshold.
    """

    acuity_probabilities: list[float] = Field(
        min_length=5, max_length=5, description="per KTAS level, index 0 is level 1"
    )
    urgent_probability: float = Field(ge=0, le=1, description="probability of KTAS 1-2")
    model_acuity: int = Field(ge=1, le=5)
    emergency_type_probabilities: dict[EmergencyType, float]
    ventricular_ectopy_probability: float | None = Field(
        default=None, ge=0, le=1, description="from the ECG strip image; None without an image"
    )
    deterioration_risk: float | None = Field(
        default=None, ge=0, le=1, description="probability of in-hospital death from the vitals history"
    )
    model: ModelInfo | None = Field(description="None when no model was usable and NEWS2 alone scored")

    @field_validator("acuity_probabilities")
    @classmethod
    def _probabilities(cls, values: list[float]) -> list[float]:
        _check_distribution(values)
        return values

    @field_validator("emergency_type_probabilities")
    @classmethod
    def _type_probabilities(cls, values: dict[EmergencyType, float]) -> dict[EmergencyType, float]:
        _check_distribution(list(values.values()))
        return values

    @property
    def emergency_type(self) -> EmergencyType:
        return max(self.emergency_type_probabilities, key=self.emergency_type_probabilities.__getitem__)


def _check_distribution(values: list[float]) -> None:
    if any(not math.isfinite(v) or v < 0 or v > 1 for v in values):
        raise ValueError(f"probabilities must lie in [0, 1], got {values}")
    # int8 models quantize each probability to 1/256, so their sum drifts by a few hundredths.
    if values and abs(sum(values) - 1) > 0.05:
        raise ValueError(f"probabilities must sum to 1, got {sum(values):.3f}")


class GeoPosition(_Contract):
    """WGS 84 position in decimal degrees."""

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)

    @classmethod
    def optional(cls, latitude: float | None, longitude: float | None) -> GeoPosition | None:
        """Return the position, or None unless both coordinates are given."""
        if latitude is None or longitude is None:
            return None
        return cls(latitude=latitude, longitude=longitude)


class TriageResult(_Contract):
    """The edge agent's assessment of one patient, computed from a window of vitals frames."""

    kind: Literal["triage_result"] = "triage_result"
    device_id: Identifier
    incident_id: Identifier
    sequence: int = Field(ge=0, description="per-device, increases by one per result, survives restarts")
    created_at: AwareDatetime
    window: list[VitalsFrame] = Field(min_length=1, max_length=600)
    scores: Scores
    acuity: int = Field(ge=1, le=5, description="final KTAS level after the NEWS2 safety floor")
    acuity_floor_applied: bool = Field(description="True when NEWS2 made the level more urgent")
    emergency_type: EmergencyType
    news2: News2Score
    qsofa: int | None = Field(default=None, ge=0, le=3)
    shock_index: float | None = Field(default=None, ge=0)
    inference_ms: float = Field(ge=0)
    destination_hospital_id: Identifier | None = None
    series: SeriesSummary | None = Field(
        default=None, description="the incident's vital-sign history, for the deterioration model"
    )
    ecg_strip_png: str | None = Field(
        default=None,
        max_length=200_000,
        description="base64 PNG of the prepared ECG strip image the model scored, if the crew sent one",
    )
    position: GeoPosition | None = Field(default=None, description="where the ambulance was when it scored")
    crew_prealert: bool = Field(
        default=False, description="the crew asked for a pre-alert whatever the scores say"
    )
    crew_note: str | None = Field(default=None, max_length=280, description="the crew's note to the hospital")

    @model_validator(mode="after")
    def _window_matches(self) -> TriageResult:
        for frame in self.window:
            if frame.device_id != self.device_id or frame.incident_id != self.incident_id:
                raise ValueError(
                    f"window frame for {frame.device_id}/{frame.incident_id} does not belong to "
                    f"{self.device_id}/{self.incident_id}"
                )
        timestamps = [frame.timestamp for frame in self.window]
        if timestamps != sorted(timestamps):
            raise ValueError("window frames must be in time order")
        return self

    @property
    def frame_timestamp(self) -> datetime:
        """Time of the newest vitals frame, the start of the alert's end-to-end latency."""
        return self.window[-1].timestamp

    @property
    def is_urgent(self) -> bool:
        return self.acuity <= URGENT_ACUITY_MAX


class IncidentCancel(_Contract):
    """The crew ends an incident early (patient refused transport, died, handed over elsewhere)."""

    kind: Literal["incident_cancel"] = "incident_cancel"
    device_id: Identifier
    incident_id: Identifier
    cancelled_at: AwareDatetime
    reason: str = Field(min_length=1, max_length=300)


AmbulanceMessage = Annotated[TriageResult | IncidentCancel, Field(discriminator="kind")]

Message = TypeVar("Message")

_ADAPTERS: dict[object, TypeAdapter] = {}


def parse_message(model: type[Message] | Any, payload: bytes | str) -> Message:
    """Parse a JSON payload into `model` (a contract or a union of them), raising ContractError.

    The error names each invalid field and the value it held.
    """
    is_contract = isinstance(model, type) and issubclass(model, BaseModel)
    name = model.__name__ if is_contract else "message"
    try:
        if is_contract:
            return model.model_validate_json(payload)  # type: ignore[union-attr]
        adapter = _ADAPTERS.get(model)
        if adapter is None:
            adapter = _ADAPTERS[model] = TypeAdapter(model)
        return adapter.validate_json(payload)
    except ValidationError as exc:
        raise ContractError(describe_validation_error(name, exc)) from exc


def describe_validation_error(name: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "(message)"
        if error["type"] == "missing" or not error["loc"]:
            # The input of a missing field, or of a check across fields, is the enclosing object,
            # which is no help. The message names the values itself.
            problems.append(f"{location}: {error['msg']}")
            continue
        value = repr(error.get("input"))
        if len(value) > 80:
            value = value[:77] + "..."
        problems.append(f"{location}: {error['msg']} (got {value})")
    return f"invalid {name}: " + "; ".join(problems)
