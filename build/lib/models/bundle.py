"""Model bundles: one folder per version holding the Keras model, its TFLite export and a manifest.

The manifest lists each file with its sha256, the feature specification the model expects, the data
it was trained on and its evaluation metrics. Loading a bundle checks every hash it is asked for, so a
truncated or altered model file is rejected before any interpreter reads it. This module imports
neither TensorFlow nor LiteRT: the edge agent uses it too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.features import FEATURE_NAMES, FEATURE_SPEC

log = logging.getLogger(__name__)

TRAINED_MODELS_DIR = Path(__file__).resolve().parent / "trained_models"
DEFAULT_POINTER = "default"  # text file in TRAINED_MODELS_DIR naming the default version
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "serving_default"
# Tensor names of the exported signature, shared by the Keras model and every runtime.
INPUT_NAME = "features"
ACUITY_OUTPUT = "acuity"
TYPE_OUTPUT = "emergency_type"


class BundleError(RuntimeError):
    """A bundle that is missing, malformed, altered or built for other features."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="file name inside the bundle folder")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class TrainingData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(ge=0)
    license: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    created_at: datetime
    feature_spec: str
    feature_names: list[str]
    acuity_levels: list[int]
    emergency_types: list[str]
    files: dict[str, FileEntry] = Field(description="role ('keras', 'tflite') -> file")
    tflite_quantization: Literal["int8", "dynamic-range", "float16"]
    signature: str = SIGNATURE_NAME
    training_data: list[TrainingData]
    metrics: dict[str, Any]
    notes: list[str] = Field(default_factory=list)


class Bundle:
    """A verified bundle folder."""

    def __init__(self, directory: Path, manifest: Manifest):
        self.directory = directory
        self.manifest = manifest

    @property
    def version(self) -> str:
        return self.manifest.version

    def path(self, role: str) -> Path:
        return self.directory / self.manifest.files[role].path

    def sha256(self, role: str) -> str:
        return self.manifest.files[role].sha256

    def __repr__(self) -> str:
        return f"Bundle({self.directory}, version={self.version!r})"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_bundle_dir() -> Path:
    """Return the folder of the default bundle named by `trained_models/default`."""
    pointer = TRAINED_MODELS_DIR / DEFAULT_POINTER
    try:
        version = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise BundleError(f"{pointer} is missing; run `make train` to build a model bundle") from None
    return TRAINED_MODELS_DIR / version


def load_bundle(directory: str | Path | None = None, roles: tuple[str, ...] = ("tflite",)) -> Bundle:
    """Read a bundle's manifest and check the sha256 of each file in `roles`.

    Raises BundleError naming the folder, the file and what to do.
    """
    folder = Path(directory) if directory is not None else default_bundle_dir()
    manifest_path = folder / MANIFEST_NAME
    try:
        raw = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(
            f"no {MANIFEST_NAME} in {folder}; point to a bundle folder built by `make train`"
        ) from None
    try:
        manifest = Manifest.model_validate(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise BundleError(f"{manifest_path} is not a valid bundle manifest: {exc}") from exc

    if manifest.feature_spec != FEATURE_SPEC or tuple(manifest.feature_names) != FEATURE_NAMES:
        raise BundleError(
            f"bundle {manifest.version} expects features {manifest.feature_spec!r} but this software "
            f"computes {FEATURE_SPEC!r}; install a bundle built for this release"
        )

    for role in roles:
        entry = manifest.files.get(role)
        if entry is None:
            raise BundleError(f"bundle {manifest.version} in {folder} has no {role!r} file")
        path = folder / entry.path
        if not path.is_file():
            raise BundleError(f"bundle {manifest.version}: {path} is missing; reinstall the bundle")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise BundleError(
                f"bundle {manifest.version}: {path} has sha256 {actual[:12]}..., manifest says "
                f"{entry.sha256[:12]}...; the file is corrupt or was altered, reinstall the bundle"
            )
    return Bundle(folder, manifest)
