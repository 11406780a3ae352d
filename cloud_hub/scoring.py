"""Re-scoring on the hub with the bundle's full Keras model."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from models.bundle import ACUITY_OUTPUT, TYPE_OUTPUT, BundleError, load_bundle
from models.features import FEATURE_COUNT, WindowSummary, features_from_summary
from models.triage import scores_from_probabilities
from protocol import ModelInfo, Scores

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
    """The Keras model behind one compiled call; `model` is None when no bundle could be loaded."""

    def __init__(self, bundle_dir: Path | None = None):
        self.model: ModelInfo | None = None
        self._predict = None
        try:
            bundle = load_bundle(bundle_dir, roles=("keras",))
        except BundleError as exc:
            log.error("hub model unavailable, alerts use the edge scores and NEWS2 alone: %s", exc)
            return
        with _native_stderr_silenced():
            import keras
            import tensorflow as tf

        try:
            keras_model = keras.saving.load_model(bundle.path("keras"), compile=False)
        except (OSError, ValueError) as exc:
            log.error("hub model %s cannot be loaded, using edge scores alone: %s", bundle.version, exc)
            return

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURE_COUNT], tf.float32)], reduce_retracing=True)
        def predict(features: tf.Tensor) -> dict[str, tf.Tensor]:
            return keras_model(features, training=False)

        self._predict = predict
        self.model = ModelInfo(version=bundle.version, sha256=bundle.sha256("keras"))
        # Trace once now so the first patient does not wait for graph compilation.
        self._predict(np.zeros((1, FEATURE_COUNT), dtype=np.float32))
        log.info("loaded hub model %s from %s", bundle.version, bundle.directory)

    def score(self, summaries: Sequence[WindowSummary]) -> list[Scores | None]:
        """Score a batch of windows in one model call; None entries if no model is loaded."""
        if self._predict is None or not summaries:
            return [None] * len(summaries)
        batch = np.stack([features_from_summary(summary) for summary in summaries])
        outputs = self._predict(batch)
        acuity = outputs[ACUITY_OUTPUT].numpy()
        emergency_type = outputs[TYPE_OUTPUT].numpy()
        return [
            scores_from_probabilities(acuity[i], emergency_type[i], self.model) for i in range(len(summaries))
        ]
