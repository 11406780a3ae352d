"""The KTAS loader on the shared file and on copies carrying each documented quirk."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from models.ktas import KtasFormatError, load_ktas
from protocol import Consciousness

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HEADER = (
    "Group;Sex;Age;Patients number per hour;Arrival mode;Injury;Chief_complain;Mental;Pain;NRS_pain;"
    "SBP;DBP;HR;RR;BT;Saturation;KTAS_RN;Diagnosis in ED;Disposition;KTAS_expert;Error_group;"
    "Length of stay_min;KTAS duration_min;mistriage"
)


def write_ktas(path: Path, rows: list[str], encoding: str = "cp1252", newline: str = "\r\n") -> Path:
    path.write_bytes((newline.join([HEADER, *rows]) + newline).encode(encoding))
    return path


def test_shared_file_loads_every_row(data_dir: Path) -> None:
    data = load_ktas(data_dir / "ktas" / "triage-moon-2019.csv")
    assert len(data.visits) == 1014
    assert data.rejected_rows == []
    assert data.encoding == "cp1252"
    assert data.pain_coding == "0/1"


def test_shared_file_quirks(data_dir: Path) -> None:
    visits = load_ktas(data_dir / "ktas" / "triage-moon-2019.csv").visits
    # Saturation is empty for every group 1 row.
    assert all(v.spo2_pct is None for v in visits if v.group == 1)
    assert any(v.spo2_pct is not None for v in visits if v.group == 2)
    # `??` vitals load as not measured.
    assert sum(v.sbp_mmhg is None for v in visits) >= 21
    # No pain reported and `#BOÞ!` in NRS_pain: a score of 0, not a missing value.
    assert all(v.nrs_pain == 0 for v in visits if not v.pain)
    # Chief complaints that lost their Korean text are None, not "??".
    assert all(v.chief_complaint is None or v.chief_complaint.strip("? ") for v in visits)
    assert sum(v.chief_complaint is None for v in visits) > 0
    assert sum(v.arrived_by_ambulance for v in visits) == 335
    assert {v.ktas_expert for v in visits} == {1, 2, 3, 4, 5}


def test_quirks_in_a_small_file(tmp_path: Path) -> None:
    path = write_ktas(
        tmp_path / "ktas.csv",
        [
            "2;2;71;3;2;2;right ocular pain;1;1;2;160;100;84;18;36.6;100;2;Corneal abrasion;1;4;2;86;5,00;1",
            "1;1;56;12;3;1;??;3;0;#BOÞ!;??;??;60;20;36.5;;4;Headache;1;5;0 ;64;3,95;0 ",
            "1;1;56;12;3;1;fever;1;1;#BOÞ!;120;80;??;20;??;;4;Fever;1;3;0 ;64;3,95;0 ",
        ],
    )
    data = load_ktas(path)
    first, second, third = data.visits

    assert first.sex == "male"
    assert first.injury
    assert first.arrived_by_ambulance
    assert first.nrs_pain == 2
    assert first.pain
    assert first.spo2_pct == 100.0

    assert second.chief_complaint is None
    assert second.sbp_mmhg is None
    assert second.dbp_mmhg is None
    assert second.spo2_pct is None
    assert second.nrs_pain == 0  # no pain, so no score was taken
    assert second.mistriage == 0  # "0 " with a trailing space
    assert second.to_frame("amb", "inc", NOW).consciousness == Consciousness.PAIN

    assert third.nrs_pain is None  # pain reported but no score recorded
    assert third.hr_bpm is None
    assert third.temp_c is None


def test_utf8_copy_loads_the_same(tmp_path: Path) -> None:
    row = "1;1;56;12;3;1;abd pain;1;0;#BOÞ!;130;80;90;20;36.5;;4;Colitis;1;4;0 ;64;3,95;0 "
    cp1252 = load_ktas(write_ktas(tmp_path / "a.csv", [row]))
    utf8 = load_ktas(write_ktas(tmp_path / "b.csv", [row], encoding="utf-8-sig", newline="\n"))
    assert utf8.encoding == "utf-8"
    assert utf8.visits[0].nrs_pain == 0
    assert utf8.visits[0] == cp1252.visits[0]


def test_codebook_pain_coding_detected(tmp_path: Path) -> None:
    rows = [
        "1;1;56;12;3;1;headache;1;2;5;130;80;90;20;36.5;;4;Headache;1;4;0;64;3;0",
        "1;1;56;12;3;1;headache;1;1;#BOÞ!;130;80;90;20;36.5;;4;Headache;1;4;0;64;3;0",
    ]
    data = load_ktas(write_ktas(tmp_path / "ktas.csv", rows))
    assert data.pain_coding == "1/2"
    assert data.visits[0].pain
    assert data.visits[0].nrs_pain == 5
    assert not data.visits[1].pain
    assert data.visits[1].nrs_pain == 0


def test_impossible_vitals_load_as_missing(tmp_path: Path) -> None:
    rows = ["1;1;56;12;3;1;fever;1;0;#BOÞ!;80;120;400;20;52;;4;Fever;1;3;0;64;3;0"]
    data = load_ktas(write_ktas(tmp_path / "ktas.csv", rows))
    visit = data.visits[0]
    assert visit.hr_bpm is None
    assert visit.temp_c is None
    # Diastolic above systolic: both readings are dropped.
    assert visit.sbp_mmhg is None
    assert visit.dbp_mmhg is None
    columns = {column for _, column, _ in data.implausible_values}
    assert columns == {"HR", "BT", "DBP"}


def test_unusable_row_is_rejected_with_reason(tmp_path: Path) -> None:
    rows = [
        "1;1;56;12;3;1;fever;1;0;#BOÞ!;120;80;90;20;36.5;;4;Fever;1;3;0;64;3;0",
        "1;1;56;12;3;1;fever;1;0;#BOÞ!;120;80;90;20;36.5;;4;Fever;1;7;0;64;3;0",
    ]
    data = load_ktas(write_ktas(tmp_path / "ktas.csv", rows))
    assert len(data.visits) == 1
    assert data.rejected_rows == [(2, "KTAS_expert 7 is not one of [1, 2, 3, 4, 5]")]


def test_wrong_format_names_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "wrong.csv"
    path.write_text("a,b,c\n1,2,3\n", encoding="utf-8")
    with pytest.raises(KtasFormatError, match="missing columns"):
        load_ktas(path)
