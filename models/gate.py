"""The quantization gate: ship an int8 export only when it decides like the float model.

An export passes when its final KTAS levels agree with the float model's on at least 99.5% of the
evaluation rows and its under-triage rate is at most one point worse. Otherwise the next, less
aggressive quantization is tried: int8, then dynamic-range, then float16.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.metrics import under_triage_rate

MIN_AGREEMENT = 0.995
MAX_UNDER_TRIAGE_INCREASE = 0.01
QUANTIZATIONS = ("int8", "dynamic-range", "float16")


@dataclass(frozen=True)
class GateResult:
    quantization: str
    agreement: float
    under_triage_change: float
    passed: bool

    def describe(self) -> str:
        verdict = "passed" if self.passed else "failed"
        return (
            f"{self.quantization} export {verdict} the gate: agreement with float {self.agreement:.4f} "
            f"(minimum {MIN_AGREEMENT}), under-triage change {self.under_triage_change:+.4f} "
            f"(maximum +{MAX_UNDER_TRIAGE_INCREASE})"
        )


def check_export(
    quantization: str, true_level: np.ndarray, float_level: np.ndarray, export_level: np.ndarray
) -> GateResult:
    agreement = float(np.mean(float_level == export_level))
    change = under_triage_rate(true_level, export_level) - under_triage_rate(true_level, float_level)
    passed = agreement >= MIN_AGREEMENT and change <= MAX_UNDER_TRIAGE_INCREASE
    return GateResult(quantization, round(agreement, 4), round(change, 4), passed)


def select_export(
    build: Callable[[str], np.ndarray], true_level: np.ndarray, float_level: np.ndarray
) -> tuple[str, list[GateResult]]:
    """Try each quantization in turn; `build(q)` exports with q and returns the export's levels.

    Returns the first quantization that passes and every result. float16 is kept even if it fails,
    because nothing less aggressive remains, and its failed result is returned with the others.
    """
    results = []
    for quantization in QUANTIZATIONS:
        result = check_export(quantization, true_level, float_level, build(quantization))
        results.append(result)
        if result.passed:
            return quantization, results
    return QUANTIZATIONS[-1], results
