"""The quantization gate, on synthetic decisions and on the shipped bundle's own exports."""

from __future__ import annotations

import numpy as np

from models.bundle import load_bundle
from models.gate import MAX_UNDER_TRIAGE_INCREASE, MIN_AGREEMENT, check_export, select_export

TRUE = np.array([1, 2] * 50 + [3, 4, 5] * 100)  # 100 urgent, 300 routine patients
FLOAT = TRUE.copy()


def with_changes(levels: np.ndarray, rows: list[int], level: int) -> np.ndarray:
    changed = levels.copy()
    changed[rows] = level
    return changed


def test_identical_export_passes() -> None:
    result = check_export("int8", TRUE, FLOAT, FLOAT.copy())
    assert result.passed
    assert result.agreement == 1.0


def test_low_agreement_fails() -> None:
    export = with_changes(FLOAT, list(range(100, 104)), 2)  # 4 of 400 routine patients called urgent
    result = check_export("int8", TRUE, FLOAT, export)
    assert result.agreement == 0.99
    assert not result.passed


def test_extra_under_triage_fails_despite_agreement() -> None:
    export = with_changes(FLOAT, [0, 1], 3)  # two urgent patients become routine: 2 points
    result = check_export("int8", TRUE, FLOAT, export)
    assert result.agreement >= MIN_AGREEMENT
    assert result.under_triage_change > MAX_UNDER_TRIAGE_INCREASE
    assert not result.passed


def test_fallback_taken_and_reported() -> None:
    exports = {"int8": with_changes(FLOAT, list(range(100, 110)), 5), "dynamic-range": FLOAT.copy()}
    built: list[str] = []

    def build(quantization: str) -> np.ndarray:
        built.append(quantization)
        return exports[quantization]

    chosen, results = select_export(build, TRUE, FLOAT)
    assert chosen == "dynamic-range"
    assert built == ["int8", "dynamic-range"]
    assert [result.passed for result in results] == [False, True]
    assert "int8 export failed the gate" in results[0].describe()


def test_shipped_bundle_respects_gate() -> None:
    manifest = load_bundle().manifest
    gate = manifest.metrics["triage"]["quantization_gate"]
    chosen = next(result for result in gate if result["quantization"] == manifest.triage.tflite_quantization)
    assert chosen["passed"]
    assert chosen["agreement"] >= MIN_AGREEMENT
    assert chosen["under_triage_change"] <= MAX_UNDER_TRIAGE_INCREASE
    if manifest.triage.tflite_quantization != "int8":
        assert any("int8 export rejected" in note for note in manifest.notes)


def test_shipped_export_agrees_with_keras(data_dir) -> None:
    """Recompute the gate on the shipped files: the TFLite export decides like the Keras model."""
    import keras

    from models.bundle import ACUITY_OUTPUT, ECG_IMAGE_INPUT, ECG_PRESENT_INPUT, INPUT_NAME, URGENT_OUTPUT
    from models.dataset import build_ktas_matrix
    from models.ktas import load_ktas
    from models.litert import SignatureModel
    from models.triage import model_levels

    bundle = load_bundle(files=(("triage", "keras"), ("triage", "tflite")))
    matrix = build_ktas_matrix(load_ktas(data_dir / "ktas" / "triage-moon-2019.csv").visits)
    rows = len(matrix.features)
    height, width = bundle.manifest.ecg_image_shape
    inputs = {
        INPUT_NAME: matrix.features,
        ECG_IMAGE_INPUT: np.zeros((rows, height, width), np.float32),
        ECG_PRESENT_INPUT: np.zeros((rows, 1), np.float32),
    }
    threshold = bundle.manifest.operating_point.urgent_threshold
    model = keras.saving.load_model(bundle.path("triage", "keras"), compile=False)
    expected = model([inputs[INPUT_NAME], inputs[ECG_IMAGE_INPUT], inputs[ECG_PRESENT_INPUT]], training=False)
    runner = SignatureModel(bundle.path("triage", "tflite"), list(inputs), [ACUITY_OUTPUT, URGENT_OUTPUT])
    actual = runner.run(**inputs)

    def levels(outputs) -> np.ndarray:  # noqa: ANN001
        level = model_levels(
            np.asarray(outputs[ACUITY_OUTPUT]), np.asarray(outputs[URGENT_OUTPUT])[:, 0], threshold
        )
        return np.minimum(level, matrix.news2_floor)

    result = check_export(
        bundle.manifest.triage.tflite_quantization, matrix.acuity_index + 1, levels(expected), levels(actual)
    )
    assert result.passed, result.describe()
