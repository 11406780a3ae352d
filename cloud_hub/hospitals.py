"""The hospital registry and the choice of destination for a pre-alert."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import Field, model_validator

from protocol import EmergencyType, GeoPosition
from protocol.messages import Identifier
from protocol.settings import StrictSettings

EARTH_RADIUS_KM = 6371.0


class Hospital(StrictSettings):
    """One receiving hospital: where it is and what it can treat."""

    id: Identifier
    name: str = Field(default="", max_length=120)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    pci: bool = Field(default=False, description="percutaneous coronary intervention around the clock")
    stroke_centre: bool = Field(default=False, description="thrombolysis and thrombectomy for stroke")
    trauma_level: int | None = Field(default=None, ge=1, le=4, description="trauma centre level, 1 highest")
    backup_hospital_id: Identifier | None = Field(
        default=None, description="alerted when this one does not acknowledge"
    )

    @model_validator(mode="after")
    def _both_coordinates(self) -> Hospital:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError(f"hospital {self.id}: give both latitude and longitude, or neither")
        return self

    @property
    def position(self) -> GeoPosition | None:
        return GeoPosition.optional(self.latitude, self.longitude)

    @property
    def label(self) -> str:
        return self.name or self.id

    def can_treat(self, emergency_type: EmergencyType) -> bool:
        """Whether the hospital offers the service an emergency type needs first.

        This project's mapping: cardiac patients need PCI, neurological patients a stroke centre and
        trauma patients a level 1 or 2 trauma centre; any emergency department takes the others.
        Only a share of cardiac patients (STEMI) need PCI, so the mapping over-routes on purpose.
        """
        if emergency_type == EmergencyType.CARDIAC:
            return self.pci
        if emergency_type == EmergencyType.NEUROLOGICAL:
            return self.stroke_centre
        if emergency_type == EmergencyType.TRAUMA:
            return self.trauma_level is not None and self.trauma_level <= 2
        return True


def parse_hospitals(values: list[object]) -> list[Hospital]:
    """Accept plain ids (from the command line) and full tables (from a config file) alike."""
    return [
        Hospital(id=value) if isinstance(value, str) else Hospital.model_validate(value) for value in values
    ]


def distance_km(a: GeoPosition, b: GeoPosition) -> float:
    """Great-circle distance by the haversine formula."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.latitude, a.longitude, b.latitude, b.longitude))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


@dataclass(frozen=True)
class Destination:
    hospital: Hospital
    how: str  # "crew choice", "nearest capable", "nearest", "default"
    distance_km: float | None


class HospitalRegistry:
    def __init__(self, hospitals: list[Hospital], default_hospital_id: str, road_speed_kmh: float):
        self.hospitals = {hospital.id: hospital for hospital in hospitals}
        self.default = self.hospitals[default_hospital_id]
        self.road_speed_kmh = road_speed_kmh

    def __contains__(self, hospital_id: str) -> bool:
        return hospital_id in self.hospitals

    def get(self, hospital_id: str) -> Hospital | None:
        return self.hospitals.get(hospital_id)

    def choose(
        self, chosen_id: str | None, emergency_type: EmergencyType, position: GeoPosition | None
    ) -> Destination:
        """The crew's chosen hospital if known; else the nearest that can treat the emergency type.

        Without a position, or when no hospital has one, the default hospital.
        """
        if chosen_id is not None and chosen_id in self.hospitals:
            hospital = self.hospitals[chosen_id]
            return Destination(hospital, "crew choice", self._distance(hospital, position))
        placed = [h for h in self.hospitals.values() if h.position is not None]
        if position is None or not placed:
            return Destination(self.default, "default", self._distance(self.default, position))
        capable = [h for h in placed if h.can_treat(emergency_type)]
        candidates, how = (capable, "nearest capable") if capable else (placed, "nearest")
        nearest = min(candidates, key=lambda h: distance_km(position, h.position))  # type: ignore[arg-type]
        return Destination(nearest, how, self._distance(nearest, position))

    def _distance(self, hospital: Hospital, position: GeoPosition | None) -> float | None:
        if position is None or hospital.position is None:
            return None
        return distance_km(position, hospital.position)

    def eta_minutes(self, distance: float | None) -> float | None:
        """Estimated minutes to arrival at the configured average road speed; None without a distance."""
        if distance is None:
            return None
        return round(distance / self.road_speed_kmh * 60, 1)

    def backup_for(self, hospital_id: str) -> Hospital | None:
        hospital = self.hospitals.get(hospital_id)
        if hospital is None or hospital.backup_hospital_id is None:
            return None
        return self.hospitals.get(hospital.backup_hospital_id)
