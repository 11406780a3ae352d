"""Configuration loading shared by the services: TOML file, command-line overrides, strict validation.

Unknown keys are rejected and no invalid value silently falls back to a default; the error names the
file, the setting and the value.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from protocol.messages import describe_validation_error

Settings = TypeVar("Settings", bound=BaseModel)


class StrictSettings(BaseModel):
    """Base of every configuration section: unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A configuration that cannot be used; the text names the setting and the value."""


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `overrides` applied recursively; None values in `overrides` are skipped."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict):
            merged[key] = merge_overrides(merged.get(key, {}), value)
        elif value is not None:
            merged[key] = value
    return merged


def load_settings(
    model: type[Settings], path: Path | None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Read a TOML file (if any), apply overrides and validate against `model`."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    data = merge_overrides(data, overrides or {})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where = f"config file {path}" if path else "configuration"
        raise ConfigError(describe_validation_error(where, exc)) from exc


def read_secret(path: Path | None, env_name: str, setting: str) -> str | None:
    """Return a secret from `path` if set, else from the environment variable, else None."""
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{setting} {path} cannot be read: {exc}") from exc
    return os.environ.get(env_name)
