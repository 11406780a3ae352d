"""On-board scoring: the bundle's TFLite models on an incident's window, history and ECG strip.

The triage model scores the window's newest state (and the crew's ECG strip photo, when there is
one); the deterioration model scores the incident's whole vitals history once it has enough frames.
The NEWS2 safety floor applies to every result. Without a usable bundle, NEWS2 scores alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.bundle import (
    ACUITY_OUTPUT,
    DETERIORATION_INPUT,
    DETERIORATION_OUTPUT,
    ECG_IMAGE_INPUT,
    ECG_PRESENT_INPUT,
    ECTOPY_OUTPUT,
    INPUT_NAME,
    TYPE_OUTPUT,
    URGENT_OUTPUT,
    BundleError,
    load_bundle,
)
from models.features import WindowSummary, features_from_summary, summarize_window
from models.litert import RuntimeMissingError, SignatureModel
from models.series import MIN_HISTORY_FRAMES, deterioration_features
from models.triage import OperatingPoint, final_acuity, news2_only_scores, scores_from_outputs
from protocol import ModelInfo, Scores, SeriesSummary, VitalsFrame

log = logging.getLogger(__name__)

TRIAGE_INPUTS = (INPUT_NAME, ECG_IMAGE_INPUT, ECG_PRESENT_INPUT)
TRIAGE_OUTPUTS = (ACUITY_OUTPUT, URGENT_OUTPUT, TYPE_OUTPUT, ECTOPY_OUTPUT)


@dataclass(frozen=True)
class Assessment:
    summary: WindowSummary
    scores: Scores
    acuity: int
    floor_applied: bool
    inference_ms: float


class EdgeScorer:
    """Scores incidents with the TFLite models, or with NEWS2 alone when no bundle can be loaded."""

    def __init__(self, bundle_dir: Path | None = None, num_threads: int = 1):
        self.model: ModelInfo | None = None
        self.operating_point: OperatingPoint | None = None
        self.image_shape: tuple[int, int] | None = None
        self._triage: SignatureModel | None = None
        self._deterioration: SignatureModel | None = None
        # Each model is checked and loaded on its own, so a damaged file disables only its own task.
        try:
            bundle = load_bundle(bundle_dir, files=())
        except BundleError as exc:
            log.error(
                "no usable model bundle, scoring with NEWS2 alone until a valid one is installed: %s", exc
            )
            return
        try:
            load_bundle(bundle.directory, files=(("triage", "tflite"),))
            self._triage = SignatureModel(
                bundle.path("triage", "tflite"), TRIAGE_INPUTS, TRIAGE_OUTPUTS, num_threads=num_threads
            )
            self.model = ModelInfo(version=bundle.version, sha256=bundle.sha256("triage", "tflite"))
            self.operating_point = bundle.manifest.operating_point
            self.image_shape = bundle.manifest.ecg_image_shape
        except (BundleError, RuntimeMissingError, ValueError) as exc:
            log.error(
                "triage model unusable, scoring acuity with NEWS2 alone until a valid bundle is installed: %s",
                exc,
            )
        try:
            load_bundle(bundle.directory, files=(("deterioration", "tflite"),))
            self._deterioration = SignatureModel(
                bundle.path("deterioration", "tflite"),
                (DETERIORATION_INPUT,),
                (DETERIORATION_OUTPUT,),
                num_threads,
            )
        except (BundleError, RuntimeMissingError, ValueError) as exc:
            log.error("deterioration model unusable, no risk will be reported: %s", exc)
        log.info(
            "model bundle %s from %s: triage %s, deterioration %s",
            bundle.version,
            bundle.directory,
            bundle.manifest.triage.tflite_quantization if self._triage else "unavailable (NEWS2 only)",
            bundle.manifest.deterioration.tflite_quantization if self._deterioration else "unavailable",
        )

    @property
    def mode(self) -> str:
        """How acuity is scored now, for status lines: the model version or NEWS2 alone."""
        return f"model {self.model.version}" if self.model is not None else "NEWS2 only (no usable model)"

    def assess(
        self,
        window: Sequence[VitalsFrame],
        history: SeriesSummary | None = None,
        ecg_image: np.ndarray | None = None,
    ) -> Assessment:
        """Score a window; `history` feeds the deterioration model, `ecg_image` the ectopy branch.

        `ecg_image` is a prepared strip (`models.ecg_strips.prepare_strip_image`) of the bundle's
        image shape.
        """
        started = time.perf_counter()
        summary = summarize_window(window)
        if self._triage is None or self.operating_point is None:
            scores = news2_only_scores(summary).model_copy(update={"deterioration_risk": self._risk(history)})
        else:
            scores = self._score(summary, history, ecg_image)
        acuity, floor_applied = final_acuity(scores, summary.news2, self.operating_point)
        return Assessment(
            summary=summary,
            scores=scores,
            acuity=acuity,
            floor_applied=floor_applied,
            inference_ms=(time.perf_counter() - started) * 1000,
        )

    def _risk(self, history: SeriesSummary | None) -> float | None:
        if self._deterioration is None or history is None or history.frames < MIN_HISTORY_FRAMES:
            return None
        output = self._deterioration.run(
            **{DETERIORATION_INPUT: deterioration_features(history)[np.newaxis, :]}
        )
        return float(output[DETERIORATION_OUTPUT][0, 0])

    def _score(
        self, summary: WindowSummary, history: SeriesSummary | None, ecg_image: np.ndarray | None
    ) -> Scores:
        assert self._triage is not None
        assert self.image_shape is not None
        if ecg_image is not None and tuple(ecg_image.shape) != tuple(self.image_shape):
            raise ValueError(f"ECG image has shape {ecg_image.shape}, the model expects {self.image_shape}")
        present = ecg_image is not None
        image = ecg_image if present else np.zeros(self.image_shape, dtype=np.float32)
        outputs = self._triage.run(
            **{
                INPUT_NAME: features_from_summary(summary)[np.newaxis, :],
                ECG_IMAGE_INPUT: image[np.newaxis, :, :].astype(np.float32),
                ECG_PRESENT_INPUT: np.array([[1.0 if present else 0.0]], dtype=np.float32),
            }
        )
        risk = self._risk(history)
        return scores_from_outputs(
            outputs[ACUITY_OUTPUT][0],
            float(outputs[URGENT_OUTPUT][0, 0]),
            outputs[TYPE_OUTPUT][0],
            self.operating_point,  # type: ignore[arg-type]
            self.model,
            ventricular_ectopy=float(outputs[ECTOPY_OUTPUT][0, 0]) if present else None,
            deterioration_risk=risk,
        )
