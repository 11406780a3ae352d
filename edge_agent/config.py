"""Edge agent configuration: a TOML file and command-line overrides, validated before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from protocol import GeoPosition
from protocol.messages import Identifier
from protocol.settings import ConfigError, StrictSettings, load_settings, read_secret

PASSWORD_ENV = "EDGE_MQTT_PASSWORD"


class MqttConfig(StrictSettings):
    host: str = Field(default="127.0.0.1", description="broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="MQTT port")
    username: str | None = Field(default=None, description="MQTT user; none connects anonymously")
    password_file: Path | None = Field(
        default=None, description=f"file holding the MQTT password; else ${PASSWORD_ENV}"
    )
    keepalive_s: int = Field(default=30, ge=5, le=600, description="MQTT keepalive in seconds")
    reconnect_min_s: float = Field(default=1.0, ge=0.1, le=60, description="first reconnect delay")
    reconnect_max_s: float = Field(
        default=10.0,
        ge=1,
        le=600,
        description="maximum reconnect delay, so also the maximum wait after coverage returns",
    )
    max_inflight: int = Field(default=100, ge=1, le=1000, description="unacknowledged messages at most")
    tls: bool = Field(
        default=False, description="connect over TLS (RabbitMQ's MQTT TLS listener, usually 8883)"
    )
    tls_ca_file: Path | None = Field(
        default=None, description="CA bundle that signed the broker's certificate; the system's when unset"
    )
    tls_cert_file: Path | None = Field(default=None, description="this device's client certificate (PEM)")
    tls_key_file: Path | None = Field(default=None, description="this device's private key (PEM)")

    @model_validator(mode="after")
    def _delays_ordered(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"reconnect_max_s {self.reconnect_max_s} is below reconnect_min_s {self.reconnect_min_s}"
            )
        return self

    @model_validator(mode="after")
    def _tls_files(self) -> MqttConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("give both tls_cert_file and tls_key_file, or neither")
        files = [self.tls_ca_file, self.tls_cert_file, self.tls_key_file]
        if not self.tls and any(files):
            raise ValueError("TLS files are set but tls is false: set tls = true to use them")
        for path in files:
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {str(path)!r} not found: check the path")
        return self

    def password(self) -> str | None:
        return read_secret(self.password_file, PASSWORD_ENV, "mqtt.password_file")


class ReplayConfig(StrictSettings):
    source: Literal["ktas", "physionet"] = Field(default="ktas", description="recorded patients to play")
    data_dir: Path | None = Field(default=None, description="folder holding ktas/ and physionet-2012/")
    start: int = Field(default=0, ge=0, description="index of the first visit or stay to play")
    interval_s: float = Field(default=2.0, gt=0, le=3600, description="seconds between KTAS patients")
    speed: float = Field(
        default=3600.0,
        gt=0,
        le=1e6,
        description="recorded seconds played per second; 3600 plays an hour a second",
    )
    stays: int = Field(default=3, ge=1, le=5000, description="PhysioNet stays to play")


class OutboxConfig(StrictSettings):
    max_rows: int = Field(
        default=100_000, ge=10, le=10_000_000, description="results kept at most before eviction"
    )
    warn_ratio: float = Field(default=0.8, gt=0, le=1, description="warn when this share of max_rows is used")
    routine_synchronous: Literal["full", "normal"] = Field(
        default="normal",
        description="disk flush for routine results: normal survives a crash, full also a power cut",
    )


class AgentConfig(StrictSettings):
    device_id: Identifier = Field(description="ambulance id, one MQTT topic level")
    destination_hospital_id: Identifier | None = Field(
        default=None, description="hospital to alert when the crew has not chosen one"
    )
    outbox_path: Path = Field(description="SQLite outbox file")
    bundle_dir: Path | None = Field(default=None, description="model bundle folder; default bundle if unset")
    window_s: float = Field(default=600.0, ge=1, le=86400, description="sliding window length in seconds")
    window_max_frames: int = Field(default=60, ge=1, le=600, description="frames per window at most")
    # NOTE: a fixed position, for a station-based or demo ambulance. A moving ambulance needs its GPS
    # receiver read here, which the agent does not do yet.
    latitude: float | None = Field(default=None, ge=-90, le=90, description="ambulance position, WGS 84")
    longitude: float | None = Field(default=None, ge=-180, le=180, description="ambulance position, WGS 84")
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)

    @model_validator(mode="after")
    def _both_coordinates(self) -> AgentConfig:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("give both latitude and longitude, or neither")
        return self

    @property
    def position(self) -> GeoPosition | None:
        return GeoPosition.optional(self.latitude, self.longitude)


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Read a TOML file (if any), apply overrides (None values are ignored) and validate."""
    return load_settings(AgentConfig, path, overrides)


__all__ = ["AgentConfig", "ConfigError", "MqttConfig", "OutboxConfig", "ReplayConfig", "load_config"]
