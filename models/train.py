"""Train every model and write a model bundle (`make train`).

    python -m models.train [--data-dir ../shared/data] [--version 1.1.0] [--output models/trained_models]

Steps: the triage ensemble on the KTAS visits (80% development, 20% held out by patient), the ECG-strip
branch on rendered rhythm strips, the deterioration ensemble on PhysioNet 2012 stays (out of fold by
patient), TFLite exports through the quantization gate, and a manifest with hashes and metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from models.bundle import (  # noqa: E402
    ACUITY_OUTPUT,
    DEFAULT_POINTER,
    DETERIORATION_INPUT,
    DETERIORATION_OUTPUT,
    ECG_IMAGE_INPUT,
    ECG_PRESENT_INPUT,
    ECTOPY_OUTPUT,
    INPUT_NAME,
    MANIFEST_NAME,
    TRAINED_MODELS_DIR,
    TYPE_OUTPUT,
    URGENT_OUTPUT,
    Manifest,
    TaskModel,
    TrainingData,
    file_entry,
    load_bundle,
    sha256_file,
)
from models.data_paths import KTAS_FILE, PHYSIONET_DIR, PHYSIONET_OUTCOMES, default_data_dir  # noqa: E402
from models.dataset import build_ktas_matrix, stratified_split  # noqa: E402
from models.deterioration_data import build_deterioration_matrix, load_physionet  # noqa: E402
from models.ecg_strips import STRIP_HEIGHT, STRIP_WIDTH  # noqa: E402
from models.features import FEATURE_NAMES, FEATURE_SPEC  # noqa: E402
from models.gate import select_export  # noqa: E402
from models.ktas import load_ktas  # noqa: E402
from models.metrics import accuracy, acuity_report, auroc, prevalence_threshold  # noqa: E402
from models.series import DETERIORATION_FEATURE_NAMES, DETERIORATION_FEATURE_SPEC  # noqa: E402
from models.triage import model_levels  # noqa: E402
from protocol import ACUITY_LEVELS, EMERGENCY_TYPES  # noqa: E402

log = logging.getLogger("models.train")

SEED = 20190917
TEST_FRACTION = 0.2
KTAS_LICENSE = "CC BY 4.0, Moon SH et al., PLoS ONE 14(9): e0216972 (2019)"
PHYSIONET_LICENSE = (
    "ODC-By 1.0, PhysioNet/CinC Challenge 2012, Silva I et al., Comput Cardiol 2012;39:245-248"
)
ECG_LICENSE = "ODC-By 1.0, MIT-BIH Arrhythmia Database (Moody GB, Mark RG 2001) and PhysioNet records"


ECG_FILES = (
    "100.hea",
    "100.dat",
    "100.atr",
    "mitdb-208-excerpt.npz",
    "a103l.hea",
    "a103l.mat",
    "s0010_re.hea",
    "s0010_re.dat",
)


def _combined_sha256(paths: list[Path]) -> str:
    """sha256 over the files' own sha256 digests, in the given order."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _source_commit() -> str | None:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "models", "protocol", ":(exclude)models/trained_models"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if changed else commit


def _write_csv(path: Path, header: list[str], rows) -> None:  # noqa: ANN001 - any iterable of rows
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _triage_inputs(features: np.ndarray, images: np.ndarray | None = None) -> dict[str, np.ndarray]:
    rows = len(features)
    if images is None:
        images = np.zeros((rows, STRIP_HEIGHT, STRIP_WIDTH), dtype=np.float32)
        present = np.zeros((rows, 1), dtype=np.float32)
    else:
        present = np.ones((rows, 1), dtype=np.float32)
    return {
        INPUT_NAME: features.astype(np.float32),
        ECG_IMAGE_INPUT: images.astype(np.float32),
        ECG_PRESENT_INPUT: present,
    }


def _keras_triage(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # noqa: ANN001
    ordered = [inputs[INPUT_NAME], inputs[ECG_IMAGE_INPUT], inputs[ECG_PRESENT_INPUT]]
    return {name: np.asarray(value) for name, value in model(ordered, training=False).items()}


def _tflite(path: Path, inputs: list[str], outputs: list[str]):  # noqa: ANN202
    from models.litert import SignatureModel

    return SignatureModel(path, inputs, outputs)


def train(data_dir: Path, version: str, output_dir: Path, make_default: bool, seed: int) -> Path:
    from models.architecture import compose_deterioration_model, compose_triage_model
    from models.export import export_tflite
    from models.train_deterioration import train_deterioration
    from models.train_ecg import train_ecg
    from models.train_triage import train_triage

    folder = output_dir / version
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    notes: list[str] = []

    # --- triage: KTAS visits, split once by patient -------------------------------------------
    ktas_path = data_dir / KTAS_FILE
    log.info("loading %s", ktas_path)
    visits = load_ktas(ktas_path).visits
    matrix = build_ktas_matrix(visits)
    dev_rows, test_rows = stratified_split(matrix.acuity_index, TEST_FRACTION, seed)
    log.info(
        "%d visits, %d features: %d for development, %d held out (by patient, seed %d)",
        len(visits), len(FEATURE_NAMES), len(dev_rows), len(test_rows), seed,
    )  # fmt: skip
    triage = train_triage(matrix, dev_rows, seed)
    threshold = triage.operating_point.urgent_threshold

    ecg = train_ecg(data_dir, seed)
    triage_model = compose_triage_model(triage.members, ecg.branch)
    triage_keras = folder / "triage.keras"
    triage_model.save(triage_keras)

    # --- triage export through the gate ------------------------------------------------------
    # Calibration and the gate use development rows and training strips only, so the held-out
    # patients and strips stay unseen by every step that shapes the shipped file.
    dev_inputs = _triage_inputs(matrix.features[dev_rows])
    float_dev = _keras_triage(triage_model, dev_inputs)
    true_dev = matrix.acuity_index[dev_rows] + 1
    dev_floors = matrix.news2_floor[dev_rows]
    float_levels_dev = np.minimum(
        model_levels(float_dev[ACUITY_OUTPUT], float_dev[URGENT_OUTPUT][:, 0], threshold), dev_floors
    )
    strip_rows = np.random.default_rng(seed).choice(dev_rows, size=len(ecg.calibration_images), replace=True)

    def triage_calibration():  # noqa: ANN202
        for row in range(len(dev_rows)):
            yield {name: value[row : row + 1] for name, value in dev_inputs.items()}
        strips = _triage_inputs(matrix.features[strip_rows], ecg.calibration_images)
        for row in range(len(strip_rows)):
            yield {name: value[row : row + 1] for name, value in strips.items()}

    triage_tflite = folder / "triage.tflite"
    triage_input_shapes = {
        INPUT_NAME: (len(FEATURE_NAMES),),
        ECG_IMAGE_INPUT: (STRIP_HEIGHT, STRIP_WIDTH),
        ECG_PRESENT_INPUT: (1,),
    }
    triage_outputs = [ACUITY_OUTPUT, URGENT_OUTPUT, TYPE_OUTPUT, ECTOPY_OUTPUT]

    def build_triage(quantization: str) -> np.ndarray:
        triage_tflite.write_bytes(
            export_tflite(triage_model, triage_input_shapes, triage_calibration, quantization)
        )
        out = _tflite(triage_tflite, list(triage_input_shapes), triage_outputs).run(**dev_inputs)
        return np.minimum(model_levels(out[ACUITY_OUTPUT], out[URGENT_OUTPUT][:, 0], threshold), dev_floors)

    triage_quantization, triage_gate = select_export(build_triage, true_dev, float_levels_dev)
    for result in triage_gate:
        (log.info if result.passed else log.warning)(result.describe())
    if triage_quantization != "int8":
        notes.append(f"triage: int8 export rejected by the quantization gate, shipped {triage_quantization}")

    # --- triage held-out metrics ---------------------------------------------------------------
    runner = _tflite(triage_tflite, list(triage_input_shapes), triage_outputs)
    test_inputs = _triage_inputs(matrix.features[test_rows])
    tflite_test = runner.run(**test_inputs)
    float_test = _keras_triage(triage_model, test_inputs)
    true_test = matrix.acuity_index[test_rows] + 1
    floors = matrix.news2_floor[test_rows]

    def model_report(outputs: dict[str, np.ndarray], with_floor: bool) -> dict[str, object]:
        urgent = outputs[URGENT_OUTPUT][:, 0]
        levels = model_levels(outputs[ACUITY_OUTPUT], urgent, threshold)
        if with_floor:
            levels = np.minimum(levels, floors)
        return acuity_report(true_test, levels, urgent, urgent)

    nurse = matrix.nurse_level[test_rows]
    held_out_strip_rows = np.random.default_rng(seed + 1).choice(
        test_rows, size=len(ecg.held_out), replace=True
    )
    ectopy_tflite = runner.run(**_triage_inputs(matrix.features[held_out_strip_rows], ecg.held_out.images))[
        ECTOPY_OUTPUT
    ][:, 0]
    ectopy_float = _keras_triage(
        triage_model, _triage_inputs(matrix.features[held_out_strip_rows], ecg.held_out.images)
    )[ECTOPY_OUTPUT][:, 0]
    triage_metrics = {
        "held_out": "20% of KTAS visits by patient, stratified on the expert level, never used in development",
        "development_rows": int(len(dev_rows)),
        "acuity": model_report(tflite_test, with_floor=True),
        "acuity_before_news2_floor": model_report(tflite_test, with_floor=False),
        "acuity_float": model_report(float_test, with_floor=True),
        "triage_nurse": acuity_report(true_test, nurse, -nurse.astype(float)),
        "news2_only": acuity_report(true_test, floors, -floors.astype(float)),
        "emergency_type_accuracy": round(
            accuracy(matrix.type_index[test_rows], tflite_test[TYPE_OUTPUT].argmax(axis=1)), 4
        ),
        "operating_point": triage.operating_point.model_dump(),
        "cross_validated_tradeoff": triage.tradeoff,
        "nearest_to_acs_benchmark": triage.nearest_to_acs,
        "quantization_gate": [asdict(result) for result in triage_gate],
        "ecg": ecg.metrics,
        "ecg_tflite_float_flag_agreement": round(
            float(np.mean((ectopy_tflite >= 0.5) == (ectopy_float >= 0.5))), 4
        ),
    }
    chosen_gate = next(result for result in triage_gate if result.quantization == triage_quantization)
    triage_metrics["tflite_float_agreement"] = chosen_gate.agreement

    # --- deterioration: PhysioNet stays, out of fold by patient ----------------------------------
    physionet_folder = data_dir / PHYSIONET_DIR
    outcomes_path = data_dir / PHYSIONET_OUTCOMES
    stays, outcomes = load_physionet(physionet_folder, outcomes_path)
    det_matrix = build_deterioration_matrix(stays, outcomes)
    deterioration = train_deterioration(det_matrix, seed)
    det_model = compose_deterioration_model(deterioration.members)
    det_keras = folder / "deterioration.keras"
    det_model.save(det_keras)
    det_float = np.asarray(det_model(det_matrix.features, training=False)[DETERIORATION_OUTPUT])[:, 0]
    flag_threshold = prevalence_threshold(det_float, float(det_matrix.died.mean()))
    det_tflite = folder / "deterioration.tflite"
    det_shapes = {DETERIORATION_INPUT: (len(DETERIORATION_FEATURE_NAMES),)}

    def det_calibration():  # noqa: ANN202
        for row in det_matrix.features:
            yield {DETERIORATION_INPUT: row[np.newaxis, :]}

    # Deterioration has no KTAS level; its gate compares who is flagged at the prevalence threshold,
    # with deaths as the cases a worse export must not miss.
    def build_deterioration(quantization: str) -> np.ndarray:
        det_tflite.write_bytes(export_tflite(det_model, det_shapes, det_calibration, quantization))
        risk = _tflite(det_tflite, list(det_shapes), [DETERIORATION_OUTPUT]).run(
            **{DETERIORATION_INPUT: det_matrix.features}
        )[DETERIORATION_OUTPUT][:, 0]
        return np.where(risk >= flag_threshold, 1, 3)

    det_true = np.where(det_matrix.died == 1, 1, 3)
    det_float_levels = np.where(det_float >= flag_threshold, 1, 3)
    det_quantization, det_gate = select_export(build_deterioration, det_true, det_float_levels)
    for result in det_gate:
        (log.info if result.passed else log.warning)("deterioration " + result.describe())
    if det_quantization != "int8":
        notes.append(
            f"deterioration: int8 export rejected by the quantization gate, shipped {det_quantization}"
        )
    det_export = _tflite(det_tflite, list(det_shapes), [DETERIORATION_OUTPUT]).run(
        **{DETERIORATION_INPUT: det_matrix.features}
    )[DETERIORATION_OUTPUT][:, 0]
    saps_known = ~np.isnan(det_matrix.saps_i)
    saps_threshold = prevalence_threshold(
        det_matrix.saps_i[saps_known], float(det_matrix.died[saps_known].mean())
    )
    triage.operating_point.deterioration_threshold = round(flag_threshold, 4)
    deterioration_metrics = {
        **deterioration.metrics,
        "flag_threshold": round(flag_threshold, 4),
        "saps_i_threshold": saps_threshold,
        "quantization_gate": [asdict(result) for result in det_gate],
        "tflite_auroc_in_sample": round(auroc(det_matrix.died, det_export), 4),
        "float_auroc_in_sample": round(auroc(det_matrix.died, det_float), 4),
    }

    # --- per-row evaluation data for the model card (not model files, so not hashed) -----------------
    evaluation_dir = folder / "evaluation"
    evaluation_dir.mkdir()
    _write_csv(
        evaluation_dir / "deterioration_out_of_fold.csv",
        ["record_id", "died", "out_of_fold_risk", "saps_i", "fold"],
        zip(
            det_matrix.record_ids,
            det_matrix.died,
            np.round(deterioration.out_of_fold, 5),
            det_matrix.saps_i,
            deterioration.folds,
            strict=True,
        ),
    )
    ectopy_held_out = np.asarray(ecg.branch(ecg.held_out.images, training=False))[:, 0]
    _write_csv(
        evaluation_dir / "ecg_held_out.csv",
        ["patient_id", "start_s", "ventricular_beats", "label", "score"],
        zip(
            ecg.held_out.patient_ids,
            ecg.held_out.start_times_s,
            ecg.held_out.ventricular_counts,
            ecg.held_out.labels,
            np.round(ectopy_held_out, 5),
            strict=True,
        ),
    )
    _write_csv(
        evaluation_dir / "triage_cross_validated.csv",
        ["ktas_row", "ktas_expert", "news2_floor", "out_of_fold_urgent"],
        zip(
            matrix.row_numbers[dev_rows],
            matrix.acuity_index[dev_rows] + 1,
            matrix.news2_floor[dev_rows],
            np.round(triage.cv_urgent, 5),
            strict=True,
        ),
    )

    # --- manifest --------------------------------------------------------------------------------
    manifest = Manifest(
        version=version,
        created_at=datetime.now(UTC),
        source_commit=_source_commit(),
        triage=TaskModel(
            keras=file_entry(triage_keras),
            tflite=file_entry(triage_tflite),
            tflite_quantization=triage_quantization,
            feature_spec=FEATURE_SPEC,
            feature_names=list(FEATURE_NAMES),
        ),
        deterioration=TaskModel(
            keras=file_entry(det_keras),
            tflite=file_entry(det_tflite),
            tflite_quantization=det_quantization,
            feature_spec=DETERIORATION_FEATURE_SPEC,
            feature_names=list(DETERIORATION_FEATURE_NAMES),
        ),
        ecg_image_shape=(STRIP_HEIGHT, STRIP_WIDTH),
        acuity_levels=list(ACUITY_LEVELS),
        emergency_types=[emergency_type.value for emergency_type in EMERGENCY_TYPES],
        operating_point=triage.operating_point,
        training_data=[
            TrainingData(
                name=KTAS_FILE.as_posix(),
                sha256=sha256_file(ktas_path),
                rows=len(visits),
                license=KTAS_LICENSE,
            ),
            TrainingData(
                name=PHYSIONET_OUTCOMES.as_posix(),
                sha256=sha256_file(outcomes_path),
                rows=len(stays),
                license=PHYSIONET_LICENSE,
            ),
            TrainingData(
                name=", ".join(f"ecg/{name}" for name in ECG_FILES),
                sha256=_combined_sha256([data_dir / "ecg" / name for name in ECG_FILES]),
                rows=int(ecg.metrics["training_strips"]),
                license=ECG_LICENSE,
            ),
        ],
        held_out={"ktas_rows": [int(row) for row in matrix.row_numbers[test_rows]]},
        training_members={
            "ktas_fingerprints": sorted(visits[row].fingerprint() for row in dev_rows),
            "physionet_record_ids": sorted(int(record_id) for record_id in det_matrix.record_ids),
        },
        metrics={"triage": triage_metrics, "deterioration": deterioration_metrics},
        notes=notes
        + [
            "emergency-type labels are derived from the diagnosis text by keyword (models/labels.py)",
            "the deterioration model averages five fold models; its metrics are out of fold",
            "the ECG branch is evaluated on the last quarter of each record (by time, not by patient)",
        ],
    )
    (folder / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    load_bundle(
        folder,
        files=(
            ("triage", "keras"),
            ("triage", "tflite"),
            ("deterioration", "keras"),
            ("deterioration", "tflite"),
        ),
    )
    if make_default:
        (output_dir / DEFAULT_POINTER).write_text(version + "\n", encoding="utf-8")
    log.info("wrote bundle %s", folder)
    summary = {
        "acuity": {k: v for k, v in triage_metrics["acuity"].items() if k != "confusion_matrix"},
        "triage_nurse": {k: v for k, v in triage_metrics["triage_nurse"].items() if k != "confusion_matrix"},
        "operating_point": triage.operating_point.urgent_threshold,
        "triage_quantization": triage_quantization,
        "deterioration_auroc": deterioration.metrics["model"]["auroc"],
        "saps_i_auroc": deterioration.metrics["saps_i"]["auroc"],
        "deterioration_quantization": det_quantization,
        "ecg_auroc": ecg.metrics["auroc"],
    }
    print(json.dumps(summary, indent=2))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train the triage and deterioration models and write a bundle."
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="folder with ktas/, physionet-2012/ and ecg/"
    )
    parser.add_argument("--version", default="1.1.0", help="bundle version and folder name")
    parser.add_argument("--output", type=Path, default=TRAINED_MODELS_DIR, help="folder of bundle folders")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the held-out split and the training")
    parser.add_argument("--no-default", action="store_true", help="do not make this bundle the default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_dir = args.data_dir or default_data_dir()
    missing = [
        path
        for path in (data_dir / KTAS_FILE, data_dir / PHYSIONET_DIR, data_dir / "ecg")
        if not path.exists()
    ]
    if missing:
        log.error(
            "training data not found: %s; pass --data-dir or set AMBULANCE_DATA_DIR",
            ", ".join(map(str, missing)),
        )
        return 2
    train(data_dir, args.version, args.output, make_default=not args.no_default, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
