"""Model bundles: one folder per version with the triage and deterioration models and a manifest.

Each task has a Keras model for the hub and a TFLite export for the edge. The manifest lists every file
with its sha256, the feature specification each model expects, the operating point, the data the
models were trained on, the held-out splits and the evaluation metrics. Loading a bundle checks the
hash of every file it is asked for, so a truncated or altered model is rejected before an interpreter
reads it. This module imports neither TensorFlow nor LiteRT: the edge agent uses it too.
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
from models.series import DETERIORATION_FEATURE_NAMES, DETERIORATION_FEATURE_SPEC
from models.triage import OperatingPoint

log = logging.getLogger(__name__)

TRAINED_MODELS_DIR = Path(__file__).resolve().parent / "trained_models"
DEFAULT_POINTER = "default"  # text file in TRAINED_MODELS_DIR naming the default version
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "serving_default"

# Tensor names of the exported signatures, shared by the Keras models and every runtime.
INPUT_NAME = "features"
ECG_IMAGE_INPUT = "ecg_image"
ECG_PRESENT_INPUT = "ecg_present"
ACUITY_OUTPUT = "acuity"
URGENT_OUTPUT = "urgent"
TYPE_OUTPUT = "emergency_type"
ECTOPY_OUTPUT = "ventricular_ectopy"
DETERIORATION_INPUT = "series_features"
DETERIORATION_OUTPUT = "deterioration"

TASKS = ("triage", "deterioration")
Quantization = Literal["int8", "dynamic-range", "float16"]


class BundleError(RuntimeError):
    """A bundle that is missing, malformed, altered or built for other features."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Strict):
    path: str = Field(description="file name inside the bundle folder")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class TaskModel(_Strict):
    """One task's models: the Keras original and its TFLite export."""

    keras: FileEntry
    tflite: FileEntry
    tflite_quantization: Quantization
    feature_spec: str
    feature_names: list[str]


class TrainingData(_Strict):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(ge=0)
    license: str


class Manifest(_Strict):
    format: Literal[2] = 2
    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    created_at: datetime
    source_commit: str | None = Field(
        default=None, description="git commit of the training code, '-dirty' if changed"
    )
    triage: TaskModel
    deterioration: TaskModel
    ecg_image_shape: tuple[int, int] = Field(description="height and width of the strip image input")
    acuity_levels: list[int]
    emergency_types: list[str]
    operating_point: OperatingPoint
    signature: str = SIGNATURE_NAME
    training_data: list[TrainingData]
    held_out: dict[str, list[Any]] = Field(
        default_factory=dict, description="data set -> row numbers or record ids never used in training"
    )
    training_members: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="data set -> fingerprints or record ids of what training saw, to keep evaluation honest",
    )
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

    def task(self, task: str) -> TaskModel:
        if task not in TASKS:
            raise KeyError(f"unknown task {task!r}; expected one of {TASKS}")
        return getattr(self.manifest, task)

    def path(self, task: str, kind: str) -> Path:
        """Return the file of `task` ('triage' or 'deterioration') and `kind` ('keras' or 'tflite')."""
        return self.directory / getattr(self.task(task), kind).path

    def sha256(self, task: str, kind: str) -> str:
        return getattr(self.task(task), kind).sha256

    def __repr__(self) -> str:
        return f"Bundle({self.directory}, version={self.version!r})"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(path=path.name, sha256=sha256_file(path), bytes=path.stat().st_size)


def default_bundle_dir() -> Path:
    """Return the folder of the default bundle named by `trained_models/default`."""
    pointer = TRAINED_MODELS_DIR / DEFAULT_POINTER
    try:
        version = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise BundleError(f"{pointer} is missing; run `make train` to build a model bundle") from None
    return TRAINED_MODELS_DIR / version


def read_manifest(folder: Path) -> Manifest:
    manifest_path = folder / MANIFEST_NAME
    try:
        raw = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(
            f"no {MANIFEST_NAME} in {folder}; point to a bundle folder built by `make train`"
        ) from None
    try:
        return Manifest.model_validate(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise BundleError(f"{manifest_path} is not a valid bundle manifest: {exc}") from exc


def load_bundle(
    directory: str | Path | None = None,
    files: tuple[tuple[str, str], ...] = (("triage", "tflite"), ("deterioration", "tflite")),
) -> Bundle:
    """Read a bundle's manifest and check the sha256 of each (task, kind) file in `files`.

    Raises BundleError naming the folder, the file and what to do.
    """
    folder = Path(directory) if directory is not None else default_bundle_dir()
    manifest = read_manifest(folder)

    expected = {
        "triage": (FEATURE_SPEC, FEATURE_NAMES),
        "deterioration": (DETERIORATION_FEATURE_SPEC, DETERIORATION_FEATURE_NAMES),
    }
    for task, (spec, names) in expected.items():
        model = getattr(manifest, task)
        if model.feature_spec != spec or tuple(model.feature_names) != names:
            raise BundleError(
                f"bundle {manifest.version}: the {task} model expects features {model.feature_spec!r} "
                f"but this software computes {spec!r}; install a bundle built for this release"
            )

    bundle = Bundle(folder, manifest)
    for task, kind in files:
        entry = getattr(bundle.task(task), kind)
        path = folder / entry.path
        if not path.is_file():
            raise BundleError(f"bundle {manifest.version}: {path} is missing; reinstall the bundle")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise BundleError(
                f"bundle {manifest.version}: {path} has sha256 {actual[:12]}..., the manifest records "
                f"{entry.sha256[:12]}...; the file is corrupt or was altered, reinstall the bundle"
            )
    return bundle
