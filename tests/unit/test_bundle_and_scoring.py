"""Model bundles, edge and hub scoring, and the edge's independence from TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edge_agent.inference import EdgeScorer
from models.bundle import BundleError, default_bundle_dir, load_bundle
from models.features import FEATURE_COUNT, summarize_window
from protocol import Consciousness, VitalsFrame

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PROJECT_DIR = Path(__file__).resolve().parents[2]


def critical_frame() -> VitalsFrame:
    return VitalsFrame(
        device_id="amb-1", incident_id="inc-1", timestamp=NOW,
        hr_bpm=140, rr_per_min=32, spo2_pct=84, sbp_mmhg=80, dbp_mmhg=45, temp_c=39.5,
        consciousness=Consciousness.PAIN, supplemental_oxygen=True,
    )  # fmt: skip


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(default_bundle_dir(), target)
    return target


ALL_FILES = (
    ("triage", "keras"),
    ("triage", "tflite"),
    ("deterioration", "keras"),
    ("deterioration", "tflite"),
)


def test_default_bundle_verifies() -> None:
    bundle = load_bundle(files=ALL_FILES)
    assert len(bundle.manifest.triage.feature_names) == FEATURE_COUNT
    assert bundle.manifest.triage.tflite_quantization in {"int8", "dynamic-range", "float16"}
    assert bundle.manifest.training_data[0].rows == 1014
    assert 0 < bundle.manifest.operating_point.urgent_threshold < 1
    assert len(bundle.manifest.held_out["ktas_rows"]) == 202


def test_corrupt_model_file_rejected(bundle_copy: Path) -> None:
    model = bundle_copy / "triage.tflite"
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(BundleError, match="corrupt or was altered"):
        load_bundle(bundle_copy)


def test_manifest_for_other_features_rejected(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["triage"]["feature_spec"] = "something-else"
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="expects features"):
        load_bundle(bundle_copy)


def test_missing_bundle_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="make train"):
        load_bundle(tmp_path)


def test_edge_scorer_scores_with_model() -> None:
    scorer = EdgeScorer()
    assert scorer.model is not None
    assessment = scorer.assess([critical_frame()])
    assert assessment.scores.model == scorer.model
    assert sum(assessment.scores.acuity_probabilities) == pytest.approx(1, abs=0.01)
    assert assessment.acuity <= 2  # NEWS2 alone makes this patient urgent
    assert assessment.inference_ms >= 0


def test_corrupt_model_falls_back_to_news2(bundle_copy: Path, caplog) -> None:
    (bundle_copy / "triage.tflite").write_bytes(b"not a model")
    scorer = EdgeScorer(bundle_copy)
    assert scorer.model is None
    assert "NEWS2 alone" in caplog.text
    assessment = scorer.assess([critical_frame()])
    assert assessment.scores.model is None
    assert assessment.acuity == 2  # the NEWS2 floor for a score >= 7


def test_corrupt_triage_model_keeps_deterioration(bundle_copy: Path) -> None:
    from models.series import summarize_frames

    (bundle_copy / "triage.tflite").write_bytes(b"not a model")
    scorer = EdgeScorer(bundle_copy)
    frames = [critical_frame().model_copy(update={"timestamp": NOW + timedelta(minutes=m)}) for m in range(4)]
    assessment = scorer.assess(frames, history=summarize_frames(frames))
    assert scorer.mode.startswith("NEWS2 only")
    assert assessment.scores.model is None
    assert assessment.scores.deterioration_risk is not None


def test_edge_and_hub_models_agree(data_dir: Path) -> None:
    from cloud_hub.scoring import HubScorer
    from models.ktas import load_ktas

    visits = load_ktas(data_dir / "ktas" / "triage-moon-2019.csv").visits[:200]
    hub = HubScorer()
    edge = EdgeScorer()
    frames = [visit.to_frame("amb-1", f"inc-{visit.row_number}", NOW) for visit in visits]
    summaries = [summarize_window([f]) for f in frames]
    hub_levels = np.array([s.model_acuity for s in hub.score(summaries)])
    edge_levels = np.array([edge.assess([f]).scores.model_acuity for f in frames])
    assert np.mean(hub_levels == edge_levels) >= 0.98


def test_image_path_runs_with_and_without_strip(data_dir: Path) -> None:
    from models.ecg_records import load_rhythm_records
    from models.ecg_strips import render_strip

    records = {record.patient_id: record for record in load_rhythm_records(data_dir)}
    ectopic = records["mitdb/208"]
    # A strip from the last quarter of the 208 excerpt, which the ECG branch never trained on.
    start_s = next(
        sample / ectopic.fs_hz - 3
        for sample, ventricular in ectopic.beats
        if ventricular and sample / ectopic.fs_hz > 240
    )
    image = render_strip(ectopic.signal_mv, ectopic.fs_hz, start_s)
    scorer = EdgeScorer()
    without = scorer.assess([critical_frame()])
    with_strip = scorer.assess([critical_frame()], ecg_image=image)
    assert without.scores.ventricular_ectopy_probability is None
    assert with_strip.scores.ventricular_ectopy_probability is not None
    assert with_strip.scores.ventricular_ectopy_probability > 0.5
    # The image changes only the ectopy output, never the acuity heads.
    assert with_strip.scores.acuity_probabilities == without.scores.acuity_probabilities


def test_deterioration_risk_needs_a_history() -> None:
    from models.series import summarize_frames

    scorer = EdgeScorer()
    frames = [critical_frame().model_copy(update={"timestamp": NOW + timedelta(minutes=m)}) for m in range(5)]
    short = scorer.assess(frames[:1], history=summarize_frames(frames[:1]))
    longer = scorer.assess(frames, history=summarize_frames(frames))
    assert short.scores.deterioration_risk is None
    assert longer.scores.deterioration_risk is not None
    assert 0 <= longer.scores.deterioration_risk <= 1


def test_edge_agent_never_imports_tensorflow() -> None:
    code = (
        "import sys\n"
        "from datetime import UTC, datetime\n"
        "import edge_agent.cli, edge_agent.agent\n"
        "from edge_agent.inference import EdgeScorer\n"
        "from protocol import VitalsFrame\n"
        "EdgeScorer().assess([VitalsFrame(device_id='a', incident_id='b', timestamp=datetime.now(UTC), hr_bpm=90)])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'keras', 'tf_keras'})\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_DIR)
    assert result.returncode == 0, f"edge agent imported {result.stdout.strip()}: {result.stderr[-500:]}"
