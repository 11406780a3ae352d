"""TFLite inference through LiteRT's signature runner, without TensorFlow.

`ai-edge-litert` is the maintained runtime; `tflite_runtime` (which stopped at 2.14) is the fallback on
devices where only it exists. Inputs and outputs are addressed by name through the signature, never by
tensor position.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import SIGNATURE_NAME

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


class SignatureModel:
    """One TFLite model with a `serving_default` signature whose tensor names are checked on load."""

    def __init__(self, model_path: Path, inputs: Iterable[str], outputs: Iterable[str], num_threads: int = 1):
        interpreter_class, self.runtime = _interpreter_class()
        try:
            self._interpreter = interpreter_class(model_path=str(model_path), num_threads=num_threads)
        except ValueError as exc:
            raise ValueError(f"{model_path} is not a loadable TFLite model: {exc}") from exc
        signatures = self._interpreter.get_signature_list()
        if SIGNATURE_NAME not in signatures:
            raise ValueError(f"{model_path} has signatures {sorted(signatures)}, expected {SIGNATURE_NAME!r}")
        found_inputs = set(signatures[SIGNATURE_NAME]["inputs"])
        found_outputs = set(signatures[SIGNATURE_NAME]["outputs"])
        if found_inputs != set(inputs) or not set(outputs) <= found_outputs:
            raise ValueError(
                f"{model_path} has inputs {sorted(found_inputs)} and outputs {sorted(found_outputs)}, "
                f"expected inputs {sorted(inputs)} and outputs {sorted(outputs)}"
            )
        self._runner = self._interpreter.get_signature_runner(SIGNATURE_NAME)

    def run(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch; every input's first dimension is the batch."""
        return {name: np.asarray(value) for name, value in self._runner(**inputs).items()}
