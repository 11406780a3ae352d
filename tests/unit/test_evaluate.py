"""`python -m models.evaluate` on copies of the data in the published formats, not only the shared files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]


def run_evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "models.evaluate", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_DIR,
        timeout=300,
    )


def test_evaluate_on_other_files(data_dir: Path, tmp_path: Path) -> None:
    # A KTAS copy re-saved as UTF-8 with LF line endings, 400 rows.
    source = (data_dir / "ktas" / "triage-moon-2019.csv").read_bytes().decode("cp1252").splitlines()
    ktas = tmp_path / "ktas-copy.csv"
    ktas.write_text("\n".join(source[:401]) + "\n", encoding="utf-8")
    # A set-a-style folder of 300 stays with the outcomes file inside it.
    stays = tmp_path / "set-x"
    stays.mkdir()
    files = sorted((data_dir / "physionet-2012" / "set-a").glob("*.txt"))[:300]
    for path in files:
        shutil.copy(path, stays / path.name)
    outcomes = (data_dir / "physionet-2012" / "Outcomes-a.txt").read_text().splitlines()
    (stays / "Outcomes-x.txt").write_text("\n".join(outcomes[:301]) + "\n")

    result = run_evaluate("--ktas", str(ktas), "--physionet", str(stays))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)

    ktas_report = report["ktas"]
    # Rows the bundle was developed on are recognised in the re-saved copy and left out.
    assert ktas_report["rows_evaluated"] + ktas_report["rows_excluded_as_training"] == 400
    assert ktas_report["rows_excluded_as_training"] > 250
    for rater in ("acuity", "triage_nurse", "news2_only"):
        for key in ("accuracy", "macro_f1", "under_triage_rate", "over_triage_rate", "urgent_auroc"):
            assert 0 <= ktas_report[rater][key] <= 1, (rater, key)
    assert 0 <= ktas_report["acuity"]["ece"] <= 1
    assert 0.9 <= ktas_report["int8_vs_float"]["agreement"] <= 1

    physionet = report["physionet"]
    assert physionet["stays"] == 300
    # The copied stays were all in training, so each is scored out of fold, never in sample.
    assert physionet["scored_out_of_fold"] == 300
    assert physionet["scored_by_shipped_model"] == 0
    for key in ("auroc", "auprc", "min_se_ppv"):
        assert 0 <= physionet["deterioration"][key] <= 1
        assert 0 <= physionet["saps_i"][key] <= 1
    assert physionet["shipped_model_in_sample"]["auroc"] > physionet["deterioration"]["auroc"]


def test_evaluate_on_training_file_uses_held_out_rows(data_dir: Path) -> None:
    result = run_evaluate("--ktas", str(data_dir / "ktas" / "triage-moon-2019.csv"))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)["ktas"]
    assert report["rows_evaluated"] == 202
    assert report["rows_excluded_as_training"] == 812


def test_evaluate_rejects_wrong_format(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    result = run_evaluate("--ktas", str(wrong))
    assert result.returncode == 2
    assert "missing columns" in result.stderr
