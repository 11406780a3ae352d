"""Replay sources on the real data sets and the PhysioNet loader."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest

from edge_agent.replay import open_source, physionet_frames
from models.physionet import PhysioNetFormatError, load_outcomes, load_stay, stay_files


def test_ktas_replay_plays_ambulance_arrivals(data_dir: Path) -> None:
    frames = list(islice(open_source("ktas", data_dir, interval_s=1.5), 5))
    assert [frame.at_s for frame in frames] == [0, 1.5, 3.0, 4.5, 6.0]
    assert len({frame.incident_id for frame in frames}) == 5
    assert all(frame.values["source"].startswith("ktas row") for frame in frames)
    assert all(frame.values["context"] is not None for frame in frames)


def test_ktas_replay_start_offsets_patients(data_dir: Path) -> None:
    first = next(open_source("ktas", data_dir, start=0))
    other = next(open_source("ktas", data_dir, start=10))
    assert first.incident_id != other.incident_id


def test_physionet_stay_parsed(data_dir: Path) -> None:
    files = stay_files(data_dir / "physionet-2012" / "set-a")
    assert len(files) == 2996
    stay = load_stay(files[0])
    assert stay.record_id == 132539
    assert stay.age_years == 54
    assert stay.series["HR"][0] == (7, 73.0)
    minute, values = stay.timeline()[0]
    assert minute == 7
    assert values["hr_bpm"] == 73.0
    assert values["sbp_mmhg"] == 147.0  # non-invasive pressure when no arterial line
    assert values["gcs"] == 15


def test_physionet_replay_compresses_time(data_dir: Path) -> None:
    stay = load_stay(stay_files(data_dir / "physionet-2012" / "set-a")[0])
    frames = list(physionet_frames([stay], speed=3600))
    assert frames[0].at_s == pytest.approx(7 / 60)  # 00:07 at one recorded hour per second
    assert all(b.at_s >= a.at_s for a, b in zip(frames, frames[1:], strict=False))
    assert {frame.incident_id for frame in frames} == {"icu-132539"}


def test_outcomes_parsed(data_dir: Path) -> None:
    outcomes = load_outcomes(data_dir / "physionet-2012" / "Outcomes-a.txt")
    assert len(outcomes) == 2996
    assert outcomes[132539].in_hospital_death == 0
    assert outcomes[132539].saps_i == 6


def test_stay_with_wrong_header_rejected(tmp_path: Path) -> None:
    path = tmp_path / "000001.txt"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(PhysioNetFormatError, match="header"):
        load_stay(path)


def test_unknown_source_rejected(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown replay source"):
        open_source("mimic", data_dir)
