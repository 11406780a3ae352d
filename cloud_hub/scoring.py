"""Re-scoring on the hub with the bundle's full Keras models."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from models.bundle import (
    ACUITY_OUTPUT,
    DETERIORATION_OUTPUT,
    ECTOPY_OUTPUT,
    TYPE_OUTPUT,
    URGENT_OUTPUT,
    BundleError,
    load_bundle,
)
from models.features import FEATURE_COUNT, WindowSummary, features_from_summary
from models.series import DETERIORATION_FEATURE_COUNT, MIN_HISTORY_FRAMES, deterioration_features
from models.triage import OperatingPoint, scores_from_outputs
from protocol import ModelInfo, Scores, SeriesSummary

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence file descriptor 2 while TensorFlow loads.

    TensorFlow's C++ runtime prints absl and oneDNN start-up notices straight to file descriptor 2,
    which TF_CPP_MIN_LOG_LEVEL does not reach (TensorFlow 2.21). Python exceptions still propagate.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class HubScorer:
    """The bundle's Keras models behind compiled calls; `model` is None when no bundle could be loaded."""

    def __init__(self, bundle_dir: Path | None = None):
        self.model: ModelInfo | None = None
        self.operating_point: OperatingPoint | None = None
        self._predict_triage = None
        self._predict_deterioration = None
        try:
            bundle = load_bundle(bundle_dir, files=(("triage", "keras"), ("deterioration", "keras")))
        except BundleError as exc:
            log.error("hub model unavailable, alerts use the edge scores and NEWS2 alone: %s", exc)
            return
        with _native_stderr_silenced():
            import keras
            import tensorflow as tf

        try:
            triage = keras.saving.load_model(bundle.path("triage", "keras"), compile=False)
            deterioration = keras.saving.load_model(bundle.path("deterioration", "keras"), compile=False)
        except (OSError, ValueError) as exc:
            log.error("hub model %s cannot be loaded, using edge scores alone: %s", bundle.version, exc)
            return

        height, width = bundle.manifest.ecg_image_shape
        self.image_shape = (height, width)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, FEATURE_COUNT], tf.float32),
                tf.TensorSpec([None, height, width], tf.float32),
                tf.TensorSpec([None, 1], tf.float32),
            ],
            reduce_retracing=True,
        )
        def predict_triage(
            features: tf.Tensor, images: tf.Tensor, present: tf.Tensor
        ) -> dict[str, tf.Tensor]:
            return triage([features, images, present], training=False)

        @tf.function(
            input_signature=[tf.TensorSpec([None, DETERIORATION_FEATURE_COUNT], tf.float32)],
            reduce_retracing=True,
        )
        def predict_deterioration(features: tf.Tensor) -> dict[str, tf.Tensor]:
            return deterioration(features, training=False)

        self._predict_triage = predict_triage
        self._predict_deterioration = predict_deterioration
        self.model = ModelInfo(version=bundle.version, sha256=bundle.sha256("triage", "keras"))
        self.operating_point = bundle.manifest.operating_point
        # Trace once now so the first patient does not wait for graph compilation.
        self._predict_triage(
            np.zeros((1, FEATURE_COUNT), np.float32),
            np.zeros((1, height, width), np.float32),
            np.zeros((1, 1), np.float32),
        )
        self._predict_deterioration(np.zeros((1, DETERIORATION_FEATURE_COUNT), np.float32))
        log.info("loaded hub models of bundle %s from %s", bundle.version, bundle.directory)

    def score(
        self,
        summaries: Sequence[WindowSummary],
        histories: Sequence[SeriesSummary | None] | None = None,
        images: Sequence[np.ndarray | None] | None = None,
    ) -> list[Scores | None]:
        """Score a batch of windows in one call per model; None entries if no model is loaded."""
        count = len(summaries)
        if self._predict_triage is None or self._predict_deterioration is None or not summaries:
            return [None] * count
        histories = histories or [None] * count
        images = images or [None] * count
        features = np.stack([features_from_summary(summary) for summary in summaries])
        image_batch = np.zeros((count, *self.image_shape), dtype=np.float32)
        present = np.zeros((count, 1), dtype=np.float32)
        for index, image in enumerate(images):
            if image is not None:
                image_batch[index] = image
                present[index] = 1.0
        outputs = {
            name: value.numpy()
            for name, value in self._predict_triage(features, image_batch, present).items()
        }

        risks: list[float | None] = [None] * count
        with_history = [
            i
            for i, history in enumerate(histories)
            if history is not None and history.frames >= MIN_HISTORY_FRAMES
        ]
        if with_history:
            batch = np.stack([deterioration_features(histories[i]) for i in with_history])  # type: ignore[arg-type]
            predicted = self._predict_deterioration(batch)[DETERIORATION_OUTPUT].numpy()[:, 0]
            for i, risk in zip(with_history, predicted, strict=True):
                risks[i] = float(risk)

        return [
            scores_from_outputs(
                outputs[ACUITY_OUTPUT][i],
                float(outputs[URGENT_OUTPUT][i, 0]),
                outputs[TYPE_OUTPUT][i],
                self.operating_point,  # type: ignore[arg-type]
                self.model,
                ventricular_ectopy=float(outputs[ECTOPY_OUTPUT][i, 0]) if present[i, 0] else None,
                deterioration_risk=risks[i],
            )
            for i in range(count)
        ]
