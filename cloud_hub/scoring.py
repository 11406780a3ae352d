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
    TYPE_OUTPUT,
    URGENT_OUTPUT,
    BundleError,
    load_bundle,
)
from models.features import FEATURE_COUNT, WindowSummary, features_from_summary
from models.series import DETERIORATION_FEATURE_COUNT, MIN_HISTORY_FRAMES, deterioration_features
from models.triage import OperatingPoint, scores_from_batch
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


def _single_threaded(tf) -> None:  # noqa: ANN001 - the tensorflow module, imported late
    """Run TensorFlow's ops on one thread.

    The models are small multilayer perceptrons: a batch costs well under a millisecond, less than
    handing its ops to TensorFlow's thread pools and waking them, which on a machine shared with the
    broker also means waiting for a free core. Measured on 2 cores: a 16-row batch took 0.47 ms on one
    thread against 0.77 ms with the default pools. This works only before TensorFlow's
    runtime starts, as in the hub's engine process. A process that already ran TensorFlow keeps its
    pools.
    """
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:
        log.debug("TensorFlow already started; its thread pools stay as they are")


class HubScorer:
    """The bundle's Keras models behind compiled calls; `model` is None when no bundle could be loaded.

    The triage model's tabular members and its ECG branch are called separately, so a batch without
    strip images never runs the convolutional branch: on this data that is most batches, and the
    branch costs far more per row than the members.
    """

    def __init__(self, bundle_dir: Path | None = None):
        self.model: ModelInfo | None = None
        self.operating_point: OperatingPoint | None = None
        self.image_shape: tuple[int, int] = (1, 1)
        self._tabular = None
        self._ecg = None
        self._deterioration = None
        try:
            bundle = load_bundle(bundle_dir, files=(("triage", "keras"), ("deterioration", "keras")))
        except BundleError as exc:
            log.error("hub model unavailable, alerts use the edge scores and NEWS2 alone: %s", exc)
            return
        with _native_stderr_silenced():
            import keras
            import tensorflow as tf
        _single_threaded(tf)

        try:
            triage = keras.saving.load_model(bundle.path("triage", "keras"), compile=False)
            deterioration = keras.saving.load_model(bundle.path("deterioration", "keras"), compile=False)
            members = [layer for layer in triage.layers if layer.name.startswith("member_")]
            ecg_branch = triage.get_layer("ecg_branch")
        except (OSError, ValueError) as exc:
            log.error("hub model %s cannot be loaded, using edge scores alone: %s", bundle.version, exc)
            return
        if not members:
            log.error("hub model %s has no ensemble members; using edge scores alone", bundle.version)
            return

        height, width = bundle.manifest.ecg_image_shape
        self.image_shape = (height, width)

        @tf.function(
            input_signature=[tf.TensorSpec([None, FEATURE_COUNT], tf.float32)], reduce_retracing=True
        )
        def tabular(features: tf.Tensor) -> dict[str, tf.Tensor]:
            # The same mean over members as the composed model's Average layers.
            opinions = [member(features, training=False) for member in members]
            return {
                name: tf.add_n([opinion[name] for opinion in opinions]) / len(opinions)
                for name in (ACUITY_OUTPUT, URGENT_OUTPUT, TYPE_OUTPUT)
            }

        @tf.function(
            input_signature=[tf.TensorSpec([None, height, width], tf.float32)], reduce_retracing=True
        )
        def ecg(images: tf.Tensor) -> tf.Tensor:
            return ecg_branch(images, training=False)

        @tf.function(
            input_signature=[tf.TensorSpec([None, DETERIORATION_FEATURE_COUNT], tf.float32)],
            reduce_retracing=True,
        )
        def risk(features: tf.Tensor) -> dict[str, tf.Tensor]:
            return deterioration(features, training=False)

        # Concrete functions: the input signature is fixed, so calls skip tf.function's argument
        # binding, a third of a small batch's model time.
        self._tabular = tabular.get_concrete_function()
        self._ecg = ecg.get_concrete_function()
        self._deterioration = risk.get_concrete_function()
        self.model = ModelInfo(version=bundle.version, sha256=bundle.sha256("triage", "keras"))
        self.operating_point = bundle.manifest.operating_point
        # Trace once now so the first patient does not wait for graph compilation.
        self._tabular(np.zeros((1, FEATURE_COUNT), np.float32))
        self._ecg(np.zeros((1, height, width), np.float32))
        self._deterioration(np.zeros((1, DETERIORATION_FEATURE_COUNT), np.float32))
        log.info("loaded hub models of bundle %s from %s", bundle.version, bundle.directory)

    def score(
        self,
        summaries: Sequence[WindowSummary],
        histories: Sequence[SeriesSummary | None] | None = None,
        images: Sequence[np.ndarray | None] | None = None,
    ) -> list[Scores | None]:
        """Score a batch of windows with one call per model; None entries if no model is loaded."""
        count = len(summaries)
        if self._tabular is None or not summaries:
            return [None] * count
        histories = histories or [None] * count
        images = images or [None] * count
        features = np.stack([features_from_summary(summary) for summary in summaries]).astype(np.float32)
        outputs = {name: value.numpy() for name, value in self._tabular(features).items()}

        ectopy: list[float | None] = [None] * count
        with_image = [i for i, image in enumerate(images) if image is not None]
        if with_image:
            batch = np.stack([images[i] for i in with_image]).astype(np.float32)  # type: ignore[misc]
            for i, probability in zip(with_image, self._ecg(batch).numpy()[:, 0], strict=True):
                ectopy[i] = float(probability)

        risks: list[float | None] = [None] * count
        with_history = [
            i for i, h in enumerate(histories) if h is not None and h.frames >= MIN_HISTORY_FRAMES
        ]
        if with_history:
            batch = np.stack([deterioration_features(histories[i]) for i in with_history]).astype(np.float32)  # type: ignore[arg-type]
            for i, value in zip(
                with_history, self._deterioration(batch)[DETERIORATION_OUTPUT].numpy()[:, 0], strict=True
            ):
                risks[i] = float(value)

        return scores_from_batch(
            outputs[ACUITY_OUTPUT],
            outputs[URGENT_OUTPUT][:, 0],
            outputs[TYPE_OUTPUT],
            self.operating_point,  # type: ignore[arg-type]
            self.model,
            ventricular_ectopy=ectopy,
            deterioration_risk=risks,
        )
