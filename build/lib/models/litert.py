"""TFLite inference through LiteRT's signature runner, without TensorFlow.

`ai-edge-litert` is the maintained runtime; `tflite_runtime` (which stopped at 2.14) is the fallback on
devices where only it exists. Outputs are read by name from the signature, never by tensor position.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import ACUITY_OUTPUT, INPUT_NAME, SIGNATURE_NAME, TYPE_OUTPUT

log = logging.getLogger(__name__)


class RuntimeMissingError(RuntimeError):
    """Neither ai-edge-litert nor tflite-runtime is installed."""


def _interpreter_class() -> tuple[Any, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise RuntimeMissingError(
            "no TFLite runtime found; install `ai-edge-litert` (or `tflite-runtime` where it has "
            "no wheel for this platform)"
        ) from None


class TriageInterpreter:
    """One TFLite triage model, ready to score feature vectors."""

    def __init__(self, model_path: Path, num_threads: int = 1):
        interpreter_class, self.runtime = _interpreter_class()
        try:
            self._interpreter = interpreter_class(model_path=str(model_path), num_threads=num_threads)
        except ValueError as exc:
            raise ValueError(f"{model_path} is not a loadable TFLite model: {exc}") from exc
        signatures = self._interpreter.get_signature_list()
        if SIGNATURE_NAME not in signatures:
            raise ValueError(
                f"{model_path} has signatures {sorted(signatures)}, expected {SIGNATURE_NAME!r}"
            )
        outputs = set(signatures[SIGNATURE_NAME]["outputs"])
        if not {ACUITY_OUTPUT, TYPE_OUTPUT} <= outputs:
            raise ValueError(
                f"{model_path} outputs {sorted(outputs)}, expected {ACUITY_OUTPUT!r} and {TYPE_OUTPUT!r}"
            )
        self._runner = self._interpreter.get_signature_runner(SIGNATURE_NAME)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score a [rows, features] float32 batch; return acuity and emergency-type probabilities."""
        batch = np.atleast_2d(np.asarray(features, dtype=np.float32))
        outputs = self._runner(**{INPUT_NAME: batch})
        return np.asarray(outputs[ACUITY_OUTPUT]), np.asarray(outputs[TYPE_OUTPUT])
