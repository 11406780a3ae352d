"""On-board scoring: the bundle's TFLite model on a window of frames, with the NEWS2 safety floor."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.bundle import BundleError, load_bundle
from models.features import WindowSummary, features_from_summary, summarize_window
from models.litert import RuntimeMissingError, TriageInterpreter
from models.triage import final_acuity, news2_only_scores, scores_from_probabilities
from protocol import ModelInfo, Scores, VitalsFrame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assessment:
    summary: WindowSummary
    scores: Scores
    acuity: int
    floor_applied: bool
    inference_ms: float


class EdgeScorer:
    """Scores windows with the TFLite model, or with NEWS2 alone when no model can be loaded."""

    def __init__(self, bundle_dir: Path | None = None, num_threads: int = 1):
        self.model: ModelInfo | None = None
        self._interpreter: TriageInterpreter | None = None
        try:
            bundle = load_bundle(bundle_dir, roles=("tflite",))
            self._interpreter = TriageInterpreter(bundle.path("tflite"), num_threads=num_threads)
            self.model = ModelInfo(version=bundle.version, sha256=bundle.sha256("tflite"))
            log.info(
                "loaded model %s (%s, %s) from %s",
                bundle.version, bundle.manifest.tflite_quantization, self._interpreter.runtime,
                bundle.directory,
            )  # fmt: skip
        except (BundleError, RuntimeMissingError, ValueError) as exc:
            log.error(
                "no usable triage model, scoring with NEWS2 alone until a valid bundle is installed: %s",
                exc,
            )

    def assess(self, window: Sequence[VitalsFrame]) -> Assessment:
        started = time.perf_counter()
        summary = summarize_window(window)
        if self._interpreter is None:
            scores = news2_only_scores(summary)
        else:
            acuity, emergency_type = self._interpreter.predict(features_from_summary(summary))
            scores = scores_from_probabilities(acuity[0], emergency_type[0], self.model)
        acuity_level, floor_applied = final_acuity(scores, summary.news2)
        return Assessment(
            summary=summary,
            scores=scores,
            acuity=acuity_level,
            floor_applied=floor_applied,
            inference_ms=(time.perf_counter() - started) * 1000,
        )
