"""The crew terminal's settings and the hospitals the crew can choose as destination."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.messages import Identifier, describe_validation_error
from protocol.settings import ConfigError, StrictSettings
from protocol.topics import check_id


@dataclass(frozen=True)
class Hospital:
    id: str
    name: str


# The hospitals of examples/hub.toml (a unit test keeps the two in step). `--hospitals` or
# `--hub-config` name the real ones.
DEFAULT_HOSPITALS: tuple[Hospital, ...] = (
    Hospital("st-marys", "St Mary's Hospital"),
    Hospital("city-general", "City General Hospital"),
)


class TerminalSettings(StrictSettings):
    """Settings of the terminal: the outbox it reads, how often, and its time-outs (all in seconds)."""

    outbox_path: Path = Field(description="the edge agent's SQLite outbox file")
    poll_interval_s: float = Field(
        default=0.5, ge=0.05, le=10, description="seconds between two reads of the outbox"
    )
    command_timeout_s: float = Field(
        default=5.0, ge=0.5, le=120, description="seconds to wait for the agent to take a command"
    )
    stale_after_s: float = Field(
        default=120.0, ge=5, le=3600, description="seconds without a new result before saying so"
    )
    journey_rows: int = Field(default=8, ge=1, le=50, description="results listed in the journey table")
    night: bool = Field(default=False, description="start with the high-contrast night theme")
    hospitals: tuple[Hospital, ...] = Field(default=DEFAULT_HOSPITALS, min_length=1)


def make_settings(**values: object) -> TerminalSettings:
    """Validate settings from the command line, raising ConfigError that names the bad value."""
    try:
        return TerminalSettings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error("terminal settings", exc)) from exc


def parse_hospitals(text: str) -> tuple[Hospital, ...]:
    """Parse `--hospitals`: comma-separated ids, each optionally `id=Display name`."""
    hospitals = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        hospital_id, _, name = item.partition("=")
        hospital_id = hospital_id.strip()
        try:
            check_id(hospital_id, "hospital id")
        except ValueError as exc:
            raise ConfigError(f"--hospitals: {exc}") from exc
        hospitals.append(Hospital(hospital_id, name.strip() or hospital_id))
    if not hospitals:
        raise ConfigError("--hospitals names no hospital: give ids separated by commas")
    return tuple(hospitals)


class _HubHospital(BaseModel):
    """The part of a hub's `[[hospitals]]` entry the terminal uses; the hub checks the other keys."""

    model_config = ConfigDict(extra="ignore")

    id: Identifier
    name: str = Field(default="", max_length=120)


def hospitals_from_hub_config(path: Path) -> tuple[Hospital, ...]:
    """Read the hospital ids and names from a hub configuration file (`[[hospitals]]`)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"hub config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"hub config file {path} is not valid TOML: {exc}") from exc
    entries = data.get("hospitals")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"hub config file {path} has no [[hospitals]] entries")
    hospitals = []
    for number, entry in enumerate(entries, start=1):
        try:
            parsed = _HubHospital.model_validate(entry)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(f"{path} hospital {number}", exc)) from exc
        hospitals.append(Hospital(parsed.id, parsed.name or parsed.id))
    return tuple(hospitals)
