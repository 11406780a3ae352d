"""TFLite export of a trained Keras triage model (needs TensorFlow; training side only)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from models.bundle import INPUT_NAME, SIGNATURE_NAME

log = logging.getLogger(__name__)


def export_tflite(
    model: keras.Model,
    representative_features: np.ndarray,
    quantization: str = "int8",
) -> bytes:
    """Convert `model` to TFLite with one signature whose outputs keep the Keras head names.

    `int8` quantizes weights and activations with `representative_features` as calibration data and
    keeps float32 input and output tensors, so callers pass and read plain floats. `dynamic-range`
    quantizes weights only; `float16` stores weights as float16.
    """
    feature_count = representative_features.shape[1]
    with tempfile.TemporaryDirectory() as folder:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name=SIGNATURE_NAME,
            fn=lambda features: model(features, training=False),
            input_signature=[tf.TensorSpec([None, feature_count], tf.float32, name=INPUT_NAME)],
        )
        saved_model = Path(folder) / "saved_model"
        archive.write_out(str(saved_model), verbose=False)

        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(saved_model), signature_keys=[SIGNATURE_NAME]
        )
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "int8":

            def calibration() -> Iterator[dict[str, np.ndarray]]:
                for row in representative_features:
                    yield {INPUT_NAME: row[np.newaxis, :].astype(np.float32)}

            converter.representative_dataset = calibration
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        elif quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantization != "dynamic-range":
            raise ValueError(f"unknown quantization {quantization!r}; use int8, dynamic-range or float16")
        flatbuffer = converter.convert()
    log.info("exported %s TFLite model, %d bytes", quantization, len(flatbuffer))
    return flatbuffer
