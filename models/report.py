"""Write a bundle's model card (Markdown) and its plots (`make report`).

    python -m models.report [--bundle models/trained_models/1.1.0] [--data-dir ../shared/data]

Figures come from the manifest, from the per-row evaluation files that training leaves in the bundle's
`evaluation/` folder, and from running the bundle's TFLite triage model on the held-out KTAS rows.
Output: `report/MODEL_CARD.md` and PNG files beside it, inside the bundle folder.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.bundle import Bundle, BundleError, load_bundle  # noqa: E402
from models.data_paths import KTAS_FILE, default_data_dir  # noqa: E402
from models.evaluate import evaluate_ktas  # noqa: E402
from models.metrics import auroc  # noqa: E402
from models.train_triage import ACS_MAX_OVER_TRIAGE, ACS_MAX_UNDER_TRIAGE  # noqa: E402

log = logging.getLogger("models.report")

LEVELS = ["1", "2", "3", "4", "5"]


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, np.ndarray] = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        try:
            columns[name] = np.array(
                [float(value) if value not in ("", "nan") else np.nan for value in values]
            )
        except ValueError:
            columns[name] = np.array(values)
    return columns


def roc_points(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score, from the strictest threshold down."""
    positive = positive.astype(bool)
    order = np.argsort(-score, kind="mergesort")
    sorted_scores = score[order]
    hits = positive[order]
    distinct = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(score) - 1]
    true_positives = np.cumsum(hits)[distinct]
    false_positives = (distinct + 1) - true_positives
    tpr = np.r_[0, true_positives / max(positive.sum(), 1)]
    fpr = np.r_[0, false_positives / max((~positive).sum(), 1)]
    return fpr, tpr


def plot_confusions(metrics: dict[str, Any], path: Path) -> None:
    raters = [("Model (TFLite, NEWS2 floor)", metrics["acuity"]), ("Triage nurse", metrics["triage_nurse"]),
              ("NEWS2 only", metrics["news2_only"])]  # fmt: skip
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for axis, (title, report) in zip(axes, raters, strict=True):
        matrix = np.array(report["confusion_matrix"])
        axis.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            axis.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                color="black" if value < matrix.max() / 2 else "white",
            )
        axis.set_xticks(range(5), LEVELS)
        axis.set_yticks(range(5), LEVELS)
        axis.set_xlabel("assigned KTAS level")
        axis.set_ylabel("expert KTAS level")
        axis.set_title(
            f"{title}\nunder {report['under_triage_rate']:.1%}, over {report['over_triage_rate']:.1%}"
        )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_tradeoff(metrics: dict[str, Any], path: Path) -> None:
    curve = metrics["cross_validated_tradeoff"]
    under = [point["under_triage_rate"] for point in curve]
    over = [point["over_triage_rate"] for point in curve]
    figure, axis = plt.subplots(figsize=(6.5, 5))
    axis.add_patch(
        plt.Rectangle(
            (0, 0),
            ACS_MAX_OVER_TRIAGE,
            ACS_MAX_UNDER_TRIAGE,
            color="green",
            alpha=0.12,
            label="ACS benchmark region",
        )
    )
    axis.plot(over, under, "-", color="tab:blue", label="model, cross-validated (development rows)")
    chosen = metrics["operating_point"]["urgent_threshold"]
    point = next(p for p in curve if p["threshold"] == chosen)
    axis.plot(
        point["over_triage_rate"],
        point["under_triage_rate"],
        "o",
        color="tab:blue",
        label=f"operating point P >= {chosen}",
    )
    nearest = metrics["nearest_to_acs_benchmark"]
    axis.plot(nearest["over_triage_rate"], nearest["under_triage_rate"], "s", color="tab:green",
              label=f"nearest to ACS (P >= {nearest['threshold']})")  # fmt: skip
    for label, key, marker in (("model, held out", "acuity", "*"), ("triage nurse, held out", "triage_nurse", "^"),
                               ("NEWS2 only, held out", "news2_only", "v")):  # fmt: skip
        axis.plot(
            metrics[key]["over_triage_rate"],
            metrics[key]["under_triage_rate"],
            marker,
            markersize=10,
            label=label,
        )
    axis.set_xlabel("over-triage rate (routine patients called urgent)")
    axis.set_ylabel("under-triage rate (urgent patients called routine)")
    axis.set_xlim(0, 0.8)
    axis.set_ylim(0, 0.7)
    axis.legend(fontsize=8)
    axis.set_title("Urgent (KTAS 1-2) decision trade-off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_calibration(urgent: np.ndarray, probability: np.ndarray, path: Path, bins: int = 10) -> None:
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(probability, edges[1:-1]), 0, bins - 1)
    predicted, observed, counts = [], [], []
    for b in range(bins):
        members = index == b
        if members.any():
            predicted.append(probability[members].mean())
            observed.append(urgent[members].mean())
            counts.append(int(members.sum()))
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    axis.plot(predicted, observed, "o-", label="model, held out")
    for x, y, n in zip(predicted, observed, counts, strict=True):
        axis.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.set_xlabel("predicted P(KTAS 1-2)")
    axis.set_ylabel("observed share with expert KTAS 1-2")
    axis.set_title("Calibration of the urgent probability\n(numbers: patients per bin)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_rocs(curves: list[tuple[str, np.ndarray, np.ndarray]], title: str, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], ":", color="grey")
    for label, positive, score in curves:
        fpr, tpr = roc_points(positive, score)
        axis.plot(fpr, tpr, label=f"{label} (AUROC {auroc(positive, score):.3f})")
    axis.set_xlabel("false-positive rate")
    axis.set_ylabel("true-positive rate")
    axis.set_title(title)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _three(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _agreement(result: dict[str, Any]) -> str:
    if result.get("agreement") is None:
        return f"not measured ({result.get('note', 'no float model')})"
    return f"{result['agreement']:.1%} ({result['quantization']} export vs Keras)"


def _row(name: str, report: dict[str, Any]) -> str:
    def cell(key: str) -> str:
        value = report.get(key)
        return "-" if value is None else f"{value:.3f}"

    return (
        f"| {name} | {cell('accuracy')} | {cell('macro_f1')} | {cell('under_triage_rate')} | "
        f"{cell('over_triage_rate')} | {cell('urgent_auroc')} | {cell('ece')} |"
    )


def write_report(bundle: Bundle, data_dir: Path) -> Path:
    out = bundle.directory / "report"
    out.mkdir(exist_ok=True)
    manifest = bundle.manifest
    triage = manifest.metrics["triage"]
    deterioration = manifest.metrics["deterioration"]
    ecg = triage["ecg"]
    evaluation = bundle.directory / "evaluation"

    # Held-out KTAS rows through the shipped TFLite model, for calibration and ROC.
    from models.dataset import build_ktas_matrix
    from models.ktas import load_ktas

    held_out = evaluate_ktas(data_dir / KTAS_FILE, bundle)
    visits = load_ktas(data_dir / KTAS_FILE).visits
    matrix = build_ktas_matrix(visits)
    rows = np.array(
        [i for i, row in enumerate(matrix.row_numbers) if int(row) in set(manifest.held_out["ktas_rows"])]
    )
    from models.bundle import ECG_IMAGE_INPUT, ECG_PRESENT_INPUT, INPUT_NAME, URGENT_OUTPUT
    from models.litert import SignatureModel

    runner = SignatureModel(
        bundle.path("triage", "tflite"), [INPUT_NAME, ECG_IMAGE_INPUT, ECG_PRESENT_INPUT], [URGENT_OUTPUT]
    )
    shape = manifest.ecg_image_shape
    urgent_probability = runner.run(
        **{
            INPUT_NAME: matrix.features[rows],
            ECG_IMAGE_INPUT: np.zeros((len(rows), *shape), np.float32),
            ECG_PRESENT_INPUT: np.zeros((len(rows), 1), np.float32),
        }
    )[URGENT_OUTPUT][:, 0]
    truly_urgent = (matrix.acuity_index[rows] <= 1).astype(float)
    nurse = matrix.nurse_level[rows].astype(float)
    news2_floor = matrix.news2_floor[rows].astype(float)

    plot_confusions(triage, out / "confusion_matrices.png")
    plot_tradeoff(triage, out / "tradeoff.png")
    plot_calibration(truly_urgent, urgent_probability, out / "calibration.png")
    plot_rocs(
        [
            ("model P(urgent)", truly_urgent, urgent_probability),
            ("triage nurse level", truly_urgent, -nurse),
            ("NEWS2 floor level", truly_urgent, -news2_floor),
        ],  # fmt: skip
        "Urgent (KTAS 1-2), held-out visits",
        out / "roc_urgent.png",
    )
    oof = _read_csv(evaluation / "deterioration_out_of_fold.csv")
    with_saps = ~np.isnan(oof["saps_i"])
    plot_rocs(
        [
            ("model, out of fold", oof["died"], oof["out_of_fold_risk"]),
            ("SAPS-I", oof["died"][with_saps], oof["saps_i"][with_saps]),
        ],  # fmt: skip
        "In-hospital death, PhysioNet 2012 stays",
        out / "roc_deterioration.png",
    )
    strips = _read_csv(evaluation / "ecg_held_out.csv")
    plot_rocs(
        [("ECG branch", strips["label"], strips["score"])],
        "Ventricular ectopy, held-out strips",
        out / "roc_ecg.png",
    )

    card = _model_card(bundle, triage, deterioration, ecg, held_out)
    (out / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    log.info("wrote %s", out / "MODEL_CARD.md")
    return out / "MODEL_CARD.md"


def _model_card(bundle: Bundle, triage: dict, deterioration: dict, ecg: dict, held_out: dict) -> str:
    manifest = bundle.manifest
    op = triage["operating_point"]
    nearest = triage["nearest_to_acs_benchmark"]
    model = deterioration["model"]
    saps = deterioration["saps_i"]
    gate = "; ".join(
        f"{g['quantization']}: agreement {g['agreement']:.4f}, under-triage change {g['under_triage_change']:+.4f}, "
        f"{'passed' if g['passed'] else 'failed'}"
        for g in triage["quantization_gate"]
    )
    det_gate = "; ".join(
        f"{g['quantization']}: flag agreement {g['agreement']:.4f}, {'passed' if g['passed'] else 'failed'}"
        for g in deterioration["quantization_gate"]
    )
    # The mapping implemented by models.scores.news2_acuity_floor, on the RCP NEWS2 2017 response thresholds.
    floor_text = "NEWS2 >= 7 or a single parameter scoring 3 -> KTAS 2 or more urgent; NEWS2 5-6 -> KTAS 3 or more urgent"
    lines = [
        f"# Model card: ambulance triage bundle {manifest.version}",
        "",
        f"Built {manifest.created_at:%Y-%m-%d %H:%M} UTC from source commit {manifest.source_commit or 'unknown'}. "
        "Files and hashes: `manifest.json`.",
        "",
        "## What the models do",
        "",
        "- **Triage** (edge TFLite, hub Keras): from the vital signs, consciousness, pain, age, sex, arrival mode, injury",
        "  flag and chief complaint known at triage, the probability of each KTAS level (1 most urgent to 5), of",
        "  KTAS 1-2 (urgent) and of an emergency type. An optional photographed ECG rhythm strip, with a presence",
        "  flag, adds the probability of ventricular ectopy; without a strip that output is 0 and nothing else changes.",
        "- **Deterioration**: from the incident's vital-sign history (HR, RR, SBP, DBP, temperature, SpO2/SaO2, GCS,",
        "  oxygen, age, sex), the probability of in-hospital death, learned from ICU stays.",
        "- **Safety floor**: the final level is never less urgent than NEWS2 implies: "
        + floor_text
        + ". A strip",
        "  flagged for ventricular ectopy makes a patient at least KTAS 3 (this project's choice).",
        "",
        "Intended use: decision support for ambulance crews and receiving hospitals, never a replacement for",
        "clinical judgement. Not validated prospectively; see the limits below.",
        "",
        "## Data and licenses",
        "",
    ]
    lines += [
        f"- `{data.name}`: {data.rows} rows, {data.license}, sha256 `{data.sha256[:16]}...`"
        for data in manifest.training_data
    ]
    lines += [
        "",
        "## Splits",
        "",
        "- KTAS: each row is one patient. 20% of visits (202) are held out once, stratified on the expert level",
        "  with a fixed seed, and used only for the figures below. The operating point was chosen on the other",
        "  80% by 5-fold cross-validation repeated twice.",
        "- PhysioNet 2012: each stay is one patient. Five stratified folds; every stay is scored by the fold model",
        "  that never saw it (out of fold). The shipped model averages the five fold models.",
        "- ECG strips: only MIT-BIH record 208 has many ventricular beats, so the last quarter of each record is",
        "  held out (a split by time, not by patient).",
        "",
        "## Acuity: held-out visits",
        "",
        f"Operating point: urgent when P(KTAS 1-2) >= {op['urgent_threshold']} ({op['chosen_on']}).",
        "",
        "| rater | accuracy | macro F1 | under-triage | over-triage | urgent AUROC | ECE |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        _row("model (TFLite, NEWS2 floor)", triage["acuity"]),
        _row("model before the NEWS2 floor", triage["acuity_before_news2_floor"]),
        _row("triage nurse (KTAS_RN)", triage["triage_nurse"]),
        _row("NEWS2 only", triage["news2_only"]),
        "",
        "NEWS2 only assigns the safety floor as the level (KTAS 2 for NEWS2 >= 7 or a red parameter, 3 for 5-6)",
        "and KTAS 5 otherwise, so it calls few patients urgent.",
        "",
        f"{triage['acuity']['urgent_rows']} of the {triage['acuity']['rows']} held-out visits are urgent, so one",
        f"missed urgent patient moves under-triage by {1 / triage['acuity']['urgent_rows']:.1%}.",
        f"Emergency-type accuracy on held-out visits (derived labels): {triage['emergency_type_accuracy']:.3f}.",
        "",
        "![confusion matrices](confusion_matrices.png)",
        "",
        "### Under/over-triage trade-off (cross-validated on development rows)",
        "",
        "| P(urgent) threshold | under-triage | over-triage |",
        "| --- | --- | --- |",
    ]
    for point in triage["cross_validated_tradeoff"]:
        # Every threshold up to 0.10, where the benchmark region lies, then steps of 0.05.
        if (
            point["threshold"] <= 0.10
            or round(point["threshold"] * 100) % 5 == 0
            or point["threshold"]
            in (
                op["urgent_threshold"],
                nearest["threshold"],
            )
        ):
            lines.append(
                f"| {point['threshold']:.2f} | {point['under_triage_rate']:.3f} | {point['over_triage_rate']:.3f} |"
            )
    lines += [
        "",
        "Nearest to the American College of Surgeons field-triage benchmark (under-triage <= 5%, over-triage",
        f"<= 35%): threshold {nearest['threshold']}, under-triage {nearest['under_triage_rate']:.3f}, over-triage",
        f"{nearest['over_triage_rate']:.3f} (distance {nearest['distance_to_acs_region']:.3f} from the region).",
        "",
        "![trade-off](tradeoff.png) ![calibration](calibration.png) ![ROC](roc_urgent.png)",
        "",
        "## Deterioration: PhysioNet 2012 stays",
        "",
        "| score | AUROC | AUPRC | min(Se, PPV) |",
        "| --- | --- | --- | --- |",
        f"| model, out of fold ({model['stays']} stays, {model['deaths']} deaths) | {model['auroc']:.3f} | {model['auprc']:.3f} | {model['min_se_ppv']:.3f} |",
        f"| SAPS-I ({saps['stays']} stays with a score) | {saps['auroc']:.3f} | {saps['auprc']:.3f} | {saps['min_se_ppv']:.3f} |",
        f"| model on the same stays as SAPS-I | {deterioration['model_on_stays_with_saps_i']['auroc']:.3f} | "
        f"{deterioration['model_on_stays_with_saps_i']['auprc']:.3f} | {deterioration['model_on_stays_with_saps_i']['min_se_ppv']:.3f} |",
        "",
        f"AUROC per fold: {', '.join(f'{value:.3f}' for value in model['auroc_per_fold'])}. min(Se, PPV) is the",
        "challenge's event 1 score, each fold flagged at the share of deaths among its training folds.",
        "",
        "![ROC deterioration](roc_deterioration.png)",
        "",
        "## ECG strip branch",
        "",
        f"Held-out strips: {ecg['held_out_strips']} ({ecg['held_out_with_ectopy']} with a ventricular beat).",
        f"AUROC {ecg['auroc']:.3f}; at p >= 0.5 sensitivity {_three(ecg['sensitivity'])}, specificity "
        f"{_three(ecg['specificity'])}. These strips come from the same four patients as the training strips.",
        "PTB record s0010_re lasts 38 s, too short for a held-out 10 s strip in its last quarter.",
        "Per record: "
        + "; ".join(
            f"{k}: {v['flagged']} of {v['strips']} flagged, {v['with_ectopy']} with ectopy"
            for k, v in ecg["per_record"].items()
        )
        + ".",
        "",
        "![ROC ECG](roc_ecg.png)",
        "",
        "## Quantization",
        "",
        f"- Triage: shipped {manifest.triage.tflite_quantization}. Gate (agreement of final KTAS levels with the",
        f"  Keras model on the {triage.get('development_rows', 'development')} development visits >= 99.5%, under-triage",
        "  at most 1 point worse):",
        f"  {gate}. Calibration used development visits and training strips only.",
        f"- Deterioration: shipped {manifest.deterioration.tflite_quantization}. Gate on who is flagged: {det_gate}.",
        f"- Agreement of final KTAS levels on the held-out visits, measured by `models.evaluate`: "
        f"{_agreement(held_out['int8_vs_float'])}.",
        "",
        "## Known limits",
        "",
        "- The KTAS data come from two Korean emergency departments, triaged at the door, not in an ambulance;",
        "  only 335 of 1,014 visits arrived by ambulance. Prehospital vitals and complaints will differ.",
        "- KTAS 1 has 22 visits in all, 4 of them held out: too few to judge how well level 1 is told from level 2.",
        "- The held-out set has 38 urgent visits; each under-triage figure carries an uncertainty of several points.",
        "- Emergency-type labels are derived from the diagnosis text by a keyword map (`models/labels.py`), not coded",
        "  by clinicians.",
        "- The deterioration model learned in-hospital death of ICU patients over 48 h; on an ambulance it sees",
        "  minutes to hours of history from a different population. Its risk is a trend signal, not a prognosis.",
        "  Fold-to-fold AUROC varies by about 0.06, so one 20% split may land anywhere in that range. The",
        "  hidden-layer width was chosen by cross-validation within 80% of these same stays, which makes the",
        "  out-of-fold AUROC slightly optimistic.",
        "- The ECG branch saw strips of four patients, and its positives come from one (MIT-BIH 208, beats labelled by",
        "  this project's detector, not by cardiologists). It has not been tested on new patients or real photos.",
        "",
        "## Reproduce",
        "",
        "`make train` rebuilds the bundle; `make report` rewrites this card;",
        "`python -m models.evaluate --ktas FILE --physionet DIR --bundle DIR` evaluates on other files.",
        "",
    ]
    notes = [f"- {note}" for note in manifest.notes]
    return "\n".join(lines + ["## Notes from training", "", *notes, ""])


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description="Write a bundle's model card and plots.")
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: the default bundle)")
    parser.add_argument("--data-dir", type=Path, help="folder with ktas/ (default: ../shared/data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        bundle = load_bundle(args.bundle)
    except BundleError as exc:
        log.error("%s", exc)
        return 2
    data_dir = args.data_dir or default_data_dir()
    if not (data_dir / KTAS_FILE).is_file():
        log.error("KTAS file %s not found; pass --data-dir", data_dir / KTAS_FILE)
        return 2
    if not (bundle.directory / "evaluation").is_dir():
        log.error("%s has no evaluation/ folder; rebuild the bundle with `make train`", bundle.directory)
        return 2
    print(write_report(bundle, data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
