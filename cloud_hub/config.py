"""Hub configuration: a TOML file and command-line overrides, validated before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from cloud_hub.hospitals import Hospital
from protocol.messages import Identifier
from protocol.settings import ConfigError, StrictSettings, load_settings, read_secret

PASSWORD_ENV = "HUB_AMQP_PASSWORD"


class AmqpConfig(StrictSettings):
    host: str = Field(default="127.0.0.1", description="broker host name or address")
    port: int = Field(default=5672, ge=1, le=65535, description="AMQP port")
    username: str = Field(default="guest", description="AMQP user")
    password_file: Path | None = Field(
        default=None, description=f"file holding the AMQP password; else ${PASSWORD_ENV}, else 'guest'"
    )
    virtual_host: str = Field(default="/", description="RabbitMQ virtual host")
    heartbeat_s: int = Field(default=30, ge=0, le=600, description="AMQP heartbeat in seconds; 0 disables")
    prefetch: int = Field(default=64, ge=1, le=10000, description="unacknowledged deliveries at most")

    def password(self) -> str:
        return read_secret(self.password_file, PASSWORD_ENV, "amqp.password_file") or "guest"


class HubConfig(StrictSettings):
    amqp: AmqpConfig = Field(default_factory=AmqpConfig)
    store_url: str = Field(
        default="sqlite:///hub.sqlite",
        description="SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB",
    )
    bundle_dir: Path | None = Field(default=None, description="model bundle folder; default bundle if unset")
    hospitals: list[Hospital] = Field(
        default_factory=lambda: [Hospital(id="general-hospital")],
        min_length=1,
        description="hospital registry: ids, or tables with name, position and capabilities",
    )
    default_hospital_id: Identifier | None = Field(
        default=None, description="hospital for results without a known destination; the first if unset"
    )
    road_speed_kmh: float = Field(default=50.0, gt=0, le=200, description="average ambulance speed for ETAs")
    suppression_window_s: float = Field(
        default=900.0, ge=0, le=86400, description="no second alert per incident and type within this time"
    )
    ack_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="wait for a hospital's acknowledgement"
    )
    max_resends: int = Field(default=1, ge=0, le=10, description="re-sends before escalating to the backup")
    escalation_check_s: float = Field(
        default=1.0, gt=0, le=60, description="how often unacknowledged alerts are checked"
    )
    batch_size: int = Field(
        default=256, ge=1, le=10000, description="results re-scored in one model call at most"
    )
    batch_wait_ms: float = Field(
        default=2.0, ge=0, le=1000, description="wait for more results before scoring"
    )
    engine_process: bool = Field(
        default=True,
        description="parse, re-score and store in a worker process, using a second core; false runs them inline",
    )
    http_host: str = Field(default="127.0.0.1", description="address of the board, health and metrics server")
    http_port: int = Field(default=8080, ge=0, le=65535, description="0 disables the HTTP server")
    reconnect_min_s: float = Field(default=1.0, ge=0.05, le=60, description="first reconnect delay")
    reconnect_max_s: float = Field(default=30.0, ge=0.1, le=600, description="longest reconnect delay")
    report_every_s: float = Field(default=10.0, ge=0.5, le=3600, description="seconds between status lines")

    @field_validator("hospitals", mode="before")
    @classmethod
    def _hospital_ids_or_tables(cls, values: object) -> object:
        if isinstance(values, list):
            return [{"id": value} if isinstance(value, str) else value for value in values]
        return values

    @model_validator(mode="after")
    def _default_is_known(self) -> HubConfig:
        ids = [hospital.id for hospital in self.hospitals]
        if len(set(ids)) != len(ids):
            raise ValueError(f"hospital ids must be unique, got {ids}")
        if self.default_hospital_id is None:
            self.default_hospital_id = ids[0]
        elif self.default_hospital_id not in ids:
            raise ValueError(f"default_hospital_id {self.default_hospital_id!r} is not among hospitals {ids}")
        for hospital in self.hospitals:
            if hospital.backup_hospital_id is not None and hospital.backup_hospital_id not in ids:
                raise ValueError(
                    f"hospital {hospital.id}: backup_hospital_id {hospital.backup_hospital_id!r} is not among {ids}"
                )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"reconnect_max_s {self.reconnect_max_s} is below reconnect_min_s {self.reconnect_min_s}"
            )
        return self


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> HubConfig:
    """Read a TOML file (if any), apply overrides (None values are ignored) and validate."""
    return load_settings(HubConfig, path, overrides)


__all__ = ["AmqpConfig", "ConfigError", "HubConfig", "load_config"]
