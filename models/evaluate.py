"""Evaluate a model bundle on KTAS and PhysioNet 2012 files and print a JSON report.

    python -m models.evaluate --ktas FILE.csv --physionet DIR --bundle models/trained_models/1.1.0

`--ktas` takes any file in the KTAS format (`;`-separated, the published columns); `--physionet` a
`set-a`-style folder of stay files with an `Outcomes*.txt` file inside it or beside it. The edge's
TFLite models give the reported scores; the Keras models, when TensorFlow is installed, give the float
reference for the int8-versus-float agreement. Every patient is scored by a model that never saw it:
KTAS rows used to develop the bundle are recognised by content and left out, and PhysioNet stays it
trained on are scored with their out-of-fold risk.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
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


def evaluate_ktas(path: Path, bundle: Bundle) -> dict[str, Any]:
    try:
        visits = load_ktas(path).visits
    except KtasFormatError as exc:
        raise EvaluationError(str(exc)) from exc
    if not visits:
        raise EvaluationError(f"{path}: no usable rows")
    matrix = build_ktas_matrix(visits)
    # Rows the bundle was developed on are recognised by content, whatever file or order they come in.
    seen = set(bundle.manifest.training_members.get("ktas_fingerprints", []))
    rows = np.array([i for i, visit in enumerate(visits) if visit.fingerprint() not in seen], dtype=int)
    excluded = len(visits) - len(rows)
    if len(rows) == 0:
        raise EvaluationError(
            f"{path}: every row was used to develop bundle {bundle.version}; nothing unseen to evaluate"
        )
    note = (
        f"{len(rows)} rows the bundle never saw; {excluded} rows used in its development excluded"
        if excluded
        else "all rows of the file; none was used to develop this bundle"
    )

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
        "rows_excluded_as_training": int(excluded),
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
    subfolders = [
        path
        for path in sorted(folder.iterdir())
        if path.is_dir() and any(p.stem.isdigit() for p in path.glob("*.txt"))
    ]
    if len(subfolders) == 1:
        return subfolders[0]
    if subfolders:
        names = ", ".join(path.name for path in subfolders)
        raise EvaluationError(f"{folder} holds several stay folders ({names}); pass one of them")
    raise EvaluationError(f"no stay files (NNNNNN.txt) in {folder}")


def _out_of_fold_risks(bundle: Bundle) -> dict[int, float]:
    """Out-of-fold risk per training stay, from the file training left in the bundle."""
    path = bundle.directory / "evaluation" / "deterioration_out_of_fold.csv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as handle:
        return {
            int(float(row["record_id"])): float(row["out_of_fold_risk"]) for row in csv.DictReader(handle)
        }


def evaluate_physionet(folder: Path, bundle: Bundle) -> dict[str, Any]:
    """Score every stay with a model that never saw it.

    Stays the bundle trained on get the out-of-fold risk of the fold model that left them out; other
    stays get the shipped model's risk. The shipped model's in-sample figures are reported apart.
    """
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
    shipped = runner.run(**{DETERIORATION_INPUT: matrix.features})[DETERIORATION_OUTPUT][:, 0]
    threshold = bundle.manifest.operating_point.deterioration_threshold or 0.5
    died = matrix.died

    trained_on = set(bundle.manifest.training_members.get("physionet_record_ids", []))
    out_of_fold = _out_of_fold_risks(bundle)
    in_training = np.array([int(record_id) in trained_on for record_id in matrix.record_ids])
    missing = [
        int(r) for r, t in zip(matrix.record_ids, in_training, strict=True) if t and int(r) not in out_of_fold
    ]
    if missing:
        raise EvaluationError(
            f"{len(missing)} stays were used in training but the bundle has no out-of-fold risk for them; "
            "rebuild the bundle with `make train`"
        )
    risk = np.array(
        [
            out_of_fold[int(r)] if t else s
            for r, t, s in zip(matrix.record_ids, in_training, shipped, strict=True)
        ]
    )

    def scores(mask: np.ndarray, values: np.ndarray) -> dict[str, Any]:
        return {
            "stays": int(mask.sum()),
            "deaths": int(died[mask].sum()),
            "auroc": round(auroc(died[mask], values[mask]), 4),
            "auprc": round(auprc(died[mask], values[mask]), 4),
            "min_se_ppv": round(min_sensitivity_ppv(died[mask], values[mask] >= threshold), 4),
        }

    everyone = np.ones(len(died), dtype=bool)
    report: dict[str, Any] = {
        "folder": str(stays_dir),
        "outcomes": str(outcomes_path),
        "stays": int(len(died)),
        "deaths": int(died.sum()),
        "scored_out_of_fold": int(in_training.sum()),
        "scored_by_shipped_model": int((~in_training).sum()),
        "deterioration": {**scores(everyone, risk), "flag_threshold": threshold},
    }
    if in_training.any():
        report["shipped_model_in_sample"] = {
            **scores(in_training, shipped),
            "note": "the shipped model trained on these stays; optimistic, for comparison only",
        }
    saps_known = ~np.isnan(matrix.saps_i)
    saps_threshold = bundle.manifest.metrics.get("deterioration", {}).get("saps_i_threshold")
    if saps_known.any():
        saps = np.where(saps_known, matrix.saps_i, 0.0)
        saps_scores = scores(saps_known, saps)
        if saps_threshold is None:
            saps_scores["min_se_ppv"] = None
        else:
            saps_scores["min_se_ppv"] = round(
                min_sensitivity_ppv(died[saps_known], matrix.saps_i[saps_known] >= saps_threshold), 4
            )
        report["saps_i"] = {
            **saps_scores,
            "model_auroc_on_same_stays": round(auroc(died[saps_known], risk[saps_known]), 4),
        }
    report["int8_vs_float"] = _deterioration_agreement(bundle, matrix.features, shipped, threshold)
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
    parser.add_argument(
        "--bundle", type=Path, help="bundle folder or its manifest.json (default: the default bundle)"
    )
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
    print(json.dumps(_without_nan(report), indent=2))
    return 0


def _without_nan(value: Any) -> Any:
    """Replace NaN (a metric undefined on these rows, such as AUROC without urgent patients) by null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nan(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
