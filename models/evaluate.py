"""Evaluate a model bundle on KTAS and PhysioNet 2012 files and print a JSON report.

    python -m models.evaluate --ktas FILE.csv --physionet DIR --bundle models/trained_models/1.1.0

`--ktas` takes any file in the KTAS format (`;`-separated, the published columns); `--physionet` a
`set-a`-style folder of stay files with an `Outcomes*.txt` file inside it or beside it. The edge's
TFLite models give the reported scores; the Keras models, when TensorFlow is installed, give the float
reference for the int8-versus-float agreement. On the very file a bundle was trained on, the KTAS
report covers only the held-out rows the manifest lists, and the PhysioNet report says it is in sample.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import (
    ACUITY_OUTPUT,
    DETERIORATION_INPUT,
    DETERIORATION_OUTPUT,
    ECG_IMAGE_INPUT,
    ECG_PRESENT_INPUT,
    INPUT_NAME,
    TYPE_OUTPUT,
    URGENT_OUTPUT,
    Bundle,
    BundleError,
    load_bundle,
    sha256_file,
)
from models.dataset import build_ktas_matrix
from models.deterioration_data import build_deterioration_matrix, load_physionet
from models.ktas import KtasFormatError, load_ktas
from models.litert import SignatureModel
from models.metrics import accuracy, acuity_report, auprc, auroc, min_sensitivity_ppv
from models.physionet import PhysioNetFormatError
from models.triage import model_levels

log = logging.getLogger("models.evaluate")


class EvaluationError(ValueError):
    """Input files that cannot be evaluated; the text names the file and what to do."""


def _keras_available() -> bool:
    try:
        import keras  # noqa: F401
    except ImportError:
        return False
    return True


def _triage_inputs(features: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    rows = len(features)
    return {
        INPUT_NAME: features.astype(np.float32),
        ECG_IMAGE_INPUT: np.zeros((rows, *shape), np.float32),
        ECG_PRESENT_INPUT: np.zeros((rows, 1), np.float32),
    }


def _training_sha256(bundle: Bundle, prefix: str) -> str | None:
    for data in bundle.manifest.training_data:
        if data.name.startswith(prefix):
            return data.sha256
    return None


def evaluate_ktas(path: Path, bundle: Bundle) -> dict[str, Any]:
    try:
        visits = load_ktas(path).visits
    except KtasFormatError as exc:
        raise EvaluationError(str(exc)) from exc
    if not visits:
        raise EvaluationError(f"{path}: no usable rows")
    matrix = build_ktas_matrix(visits)
    rows = np.arange(len(visits))
    note = "all rows of the file; none was used to train this bundle"
    if sha256_file(path) == _training_sha256(bundle, "ktas/"):
        held_out = set(bundle.manifest.held_out.get("ktas_rows", []))
        rows = np.array([i for i, row in enumerate(matrix.row_numbers) if int(row) in held_out])
        note = f"the bundle's training file: only the {len(rows)} held-out rows listed in its manifest"

    operating_point = bundle.manifest.operating_point
    inputs = _triage_inputs(matrix.features[rows], bundle.manifest.ecg_image_shape)
    runner = SignatureModel(
        bundle.path("triage", "tflite"), list(inputs), [ACUITY_OUTPUT, URGENT_OUTPUT, TYPE_OUTPUT]
    )
    outputs = runner.run(**inputs)
    urgent = outputs[URGENT_OUTPUT][:, 0]
    floors = matrix.news2_floor[rows]
    levels = np.minimum(
        model_levels(outputs[ACUITY_OUTPUT], urgent, operating_point.urgent_threshold), floors
    )
    true_level = matrix.acuity_index[rows] + 1
    nurse = matrix.nurse_level[rows]

    report: dict[str, Any] = {
        "file": str(path),
        "rows_evaluated": int(len(rows)),
        "rows": note,
        "operating_point": operating_point.urgent_threshold,
        "acuity": acuity_report(true_level, levels, urgent, urgent),
        "triage_nurse": acuity_report(true_level, nurse, -nurse.astype(float)),
        "news2_only": acuity_report(true_level, floors, -floors.astype(float)),
        "emergency_type_accuracy_derived_labels": round(
            accuracy(matrix.type_index[rows], outputs[TYPE_OUTPUT].argmax(axis=1)), 4
        ),
    }
    report["int8_vs_float"] = _triage_agreement(bundle, inputs, levels, floors)
    return report


def _triage_agreement(
    bundle: Bundle, inputs: dict[str, np.ndarray], export_levels: np.ndarray, floors: np.ndarray
) -> dict[str, Any]:
    quantization = bundle.manifest.triage.tflite_quantization
    if not _keras_available():
        return {"quantization": quantization, "agreement": None, "note": "TensorFlow not installed"}
    import keras

    model = keras.saving.load_model(bundle.path("triage", "keras"), compile=False)
    float_out = model(
        [inputs[INPUT_NAME], inputs[ECG_IMAGE_INPUT], inputs[ECG_PRESENT_INPUT]], training=False
    )
    float_levels = np.minimum(
        model_levels(
            np.asarray(float_out[ACUITY_OUTPUT]),
            np.asarray(float_out[URGENT_OUTPUT])[:, 0],
            bundle.manifest.operating_point.urgent_threshold,
        ),
        floors,
    )
    return {
        "quantization": quantization,
        "agreement": round(float(np.mean(float_levels == export_levels)), 4),
    }


def _outcomes_file(folder: Path) -> Path:
    for candidate_dir in (folder, folder.parent):
        candidates = sorted(candidate_dir.glob("Outcomes*.txt"))
        if candidates:
            return candidates[0]
    raise EvaluationError(
        f"Outcomes*.txt not found in {folder} or {folder.parent}; add the outcomes file with In-hospital_death"
    )


def _stay_folder(folder: Path) -> Path:
    if any(path.stem.isdigit() for path in folder.glob("*.txt")):
        return folder
    subfolders = [path for path in sorted(folder.iterdir()) if path.is_dir() and any(path.glob("*.txt"))]
    if subfolders:
        return subfolders[0]
    raise EvaluationError(f"no stay files (NNNNNN.txt) in {folder}")


def evaluate_physionet(folder: Path, bundle: Bundle) -> dict[str, Any]:
    stays_dir = _stay_folder(folder)
    outcomes_path = _outcomes_file(stays_dir)
    try:
        stays, outcomes = load_physionet(stays_dir, outcomes_path)
    except PhysioNetFormatError as exc:
        raise EvaluationError(str(exc)) from exc
    if not stays:
        raise EvaluationError(f"{stays_dir}: no stay has an outcome in {outcomes_path}")
    matrix = build_deterioration_matrix(stays, outcomes)
    runner = SignatureModel(
        bundle.path("deterioration", "tflite"), [DETERIORATION_INPUT], [DETERIORATION_OUTPUT]
    )
    risk = runner.run(**{DETERIORATION_INPUT: matrix.features})[DETERIORATION_OUTPUT][:, 0]
    threshold = bundle.manifest.operating_point.deterioration_threshold or 0.5
    died = matrix.died

    report: dict[str, Any] = {
        "folder": str(stays_dir),
        "outcomes": str(outcomes_path),
        "stays": int(len(died)),
        "deaths": int(died.sum()),
        "deterioration": {
            "auroc": round(auroc(died, risk), 4),
            "auprc": round(auprc(died, risk), 4),
            "min_se_ppv": round(min_sensitivity_ppv(died, risk >= threshold), 4),
            "flag_threshold": threshold,
        },
    }
    saps_known = ~np.isnan(matrix.saps_i)
    saps_threshold = bundle.manifest.metrics.get("deterioration", {}).get("saps_i_threshold")
    if saps_known.any():
        saps = matrix.saps_i[saps_known]
        report["saps_i"] = {
            "stays": int(saps_known.sum()),
            "auroc": round(auroc(died[saps_known], saps), 4),
            "auprc": round(auprc(died[saps_known], saps), 4),
            "min_se_ppv": None
            if saps_threshold is None
            else round(min_sensitivity_ppv(died[saps_known], saps >= saps_threshold), 4),
            "model_auroc_on_same_stays": round(auroc(died[saps_known], risk[saps_known]), 4),
        }
    if sha256_file(outcomes_path) == _training_sha256(bundle, "physionet-2012/"):
        report["note"] = (
            "in sample: the shipped model averages fold models trained on these stays; its held-out "
            "estimate is the out-of-fold report below"
        )
        report["out_of_fold_from_training"] = bundle.manifest.metrics.get("deterioration", {}).get("model")
    report["int8_vs_float"] = _deterioration_agreement(bundle, matrix.features, risk, threshold)
    return report


def _deterioration_agreement(
    bundle: Bundle, features: np.ndarray, risk: np.ndarray, threshold: float
) -> dict[str, Any]:
    quantization = bundle.manifest.deterioration.tflite_quantization
    if not _keras_available():
        return {"quantization": quantization, "agreement": None, "note": "TensorFlow not installed"}
    import keras

    model = keras.saving.load_model(bundle.path("deterioration", "keras"), compile=False)
    float_risk = np.asarray(model(features, training=False)[DETERIORATION_OUTPUT])[:, 0]
    return {
        "quantization": quantization,
        "agreement": round(float(np.mean((float_risk >= threshold) == (risk >= threshold))), 4),
        "max_risk_difference": round(float(np.max(np.abs(float_risk - risk))), 4),
    }


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description="Evaluate a model bundle and print a JSON report.")
    parser.add_argument("--ktas", type=Path, help="KTAS CSV file in the published format")
    parser.add_argument("--physionet", type=Path, help="set-a-style folder of stays with Outcomes*.txt")
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: the default bundle)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.ktas is None and args.physionet is None:
        parser.error("give --ktas FILE, --physionet DIR or both")
    try:
        bundle = load_bundle(
            args.bundle,
            files=(
                ("triage", "tflite"),
                ("deterioration", "tflite"),
                ("triage", "keras"),
                ("deterioration", "keras"),
            ),
        )
        report: dict[str, Any] = {"bundle": bundle.version, "bundle_dir": str(bundle.directory)}
        if args.ktas is not None:
            if not args.ktas.is_file():
                raise EvaluationError(f"KTAS file {args.ktas} not found")
            report["ktas"] = evaluate_ktas(args.ktas, bundle)
        if args.physionet is not None:
            if not args.physionet.is_dir():
                raise EvaluationError(f"PhysioNet folder {args.physionet} not found")
            report["physionet"] = evaluate_physionet(args.physionet, bundle)
    except (BundleError, EvaluationError) as exc:
        log.error("%s", exc)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
