"""TFLite export of the trained Keras models (needs TensorFlow; training side only)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from models.bundle import SIGNATURE_NAME

log = logging.getLogger(__name__)

Calibration = Callable[[], Iterator[dict[str, np.ndarray]]]


def export_tflite(
    model: keras.Model,
    input_shapes: dict[str, tuple[int, ...]],
    calibration: Calibration,
    quantization: str = "int8",
) -> bytes:
    """Convert `model` to TFLite with one signature whose tensors keep the Keras names.

    `input_shapes` maps each input name, in the model's input order, to its shape without the batch
    dimension. `int8` quantizes weights and activations with the rows `calibration` yields and keeps
    float32 input and output tensors, so callers pass and read plain floats. `dynamic-range` quantizes
    weights only; `float16` stores weights as float16.
    """
    names = list(input_shapes)
    specs = [tf.TensorSpec([None, *shape], tf.float32, name=name) for name, shape in input_shapes.items()]

    def serve(*tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = tensors[0] if len(tensors) == 1 else list(tensors)
        return model(inputs, training=False)

    with tempfile.TemporaryDirectory() as folder:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name=SIGNATURE_NAME, fn=serve, input_signature=specs)
        saved_model = Path(folder) / "saved_model"
        archive.write_out(str(saved_model), verbose=False)

        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(saved_model), signature_keys=[SIGNATURE_NAME]
        )
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "int8":
            converter.representative_dataset = calibration
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        elif quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantization != "dynamic-range":
            raise ValueError(f"unknown quantization {quantization!r}; use int8, dynamic-range or float16")
        flatbuffer = converter.convert()
    log.info("exported %s TFLite model with inputs %s, %d bytes", quantization, names, len(flatbuffer))
    return flatbuffer
