"""Loader for PhysioNet/CinC Challenge 2012 ICU stays (`set-a` folder and `Outcomes-a.txt`).

Source: Silva I, Moody G, Scott DJ, Celi LA, Mark RG. Predicting In-Hospital Mortality of ICU Patients:
The PhysioNet/Computing in Cardiology Challenge 2012. Comput Cardiol 2012;39:245-248. PhysioNet project
challenge-2012 1.0.0, Open Data Commons Attribution 1.0.

Each stay file is long format `Time,Parameter,Value` with Time as hh:mm since ICU admission. The
descriptors (RecordID, Age, Gender, Height, ICUType, Weight) come at 00:00; -1 means missing. Some
stays hold descriptors only.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from protocol import PatientContext

log = logging.getLogger(__name__)

DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")

# Frame field <- PhysioNet parameters, first one present wins. Invasive pressures come before the
# non-invasive cuff; SaO2 is arterial oxygen saturation from blood gases, the nearest to SpO2 recorded.
FRAME_PARAMETERS: dict[str, tuple[str, ...]] = {
    "hr_bpm": ("HR",),
    "rr_per_min": ("RespRate",),
    "sbp_mmhg": ("SysABP", "NISysABP"),
    "dbp_mmhg": ("DiasABP", "NIDiasABP"),
    "temp_c": ("Temp",),
    "spo2_pct": ("SaO2",),
    "gcs": ("GCS",),
}
# FiO2 is a fraction; above room air (0.21) the patient receives supplemental oxygen.
ROOM_AIR_FIO2 = 0.21
# Charted values outside these bounds are artefacts, not physiology: zeros from a flushed or zeroed
# arterial line, a respiratory rate of 0 on a ventilator, temperatures from a probe off the patient.
# They are dropped from the timeline and counted in `IcuStay.dropped`.
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "hr_bpm": (20, 300),
    "rr_per_min": (1, 80),
    "sbp_mmhg": (40, 300),
    "dbp_mmhg": (10, 250),
    "temp_c": (25, 45),
    "spo2_pct": (50, 100),
    "gcs": (3, 15),
}


class PhysioNetFormatError(ValueError):
    """A file that is not in the challenge's `Time,Parameter,Value` format."""


@dataclass
class IcuStay:
    record_id: int
    age_years: float | None
    gender: int | None  # 0 female, 1 male
    icu_type: int | None
    # parameter -> [(minutes since admission, value)], in time order
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    dropped: int = 0  # implausible values left out of the last timeline() call
    unreadable_lines: int = 0  # lines of the file that could not be parsed

    def context(self) -> PatientContext:
        sex = None if self.gender is None else ("male" if self.gender == 1 else "female")
        age = None if self.age_years is None else int(min(self.age_years, 120))
        return PatientContext(age_years=age, sex=sex)

    def timeline(self, until_minute: int | None = None) -> list[tuple[int, dict[str, float | int | bool]]]:
        """Return (minute, frame fields measured then) in time order, up to `until_minute` inclusive.

        Carrying values forward between measurements is the window's job, not this function's.
        """
        by_minute: dict[int, dict[str, float | int | bool]] = defaultdict(dict)
        self.dropped = 0
        for frame_field, names in FRAME_PARAMETERS.items():
            low, high = PLAUSIBLE_RANGES[frame_field]
            # Walk the parameters in reverse priority so the preferred one overwrites the other.
            for name in reversed(names):
                for minute, value in self.series.get(name, []):
                    if not low <= value <= high:
                        self.dropped += 1
                        continue
                    by_minute[minute][frame_field] = int(value) if frame_field == "gcs" else value
        for values in by_minute.values():
            sbp, dbp = values.get("sbp_mmhg"), values.get("dbp_mmhg")
            if sbp is not None and dbp is not None and dbp > sbp:
                del values["sbp_mmhg"], values["dbp_mmhg"]
                self.dropped += 2
        for minute, value in self.series.get("FiO2", []):
            by_minute[minute]["supplemental_oxygen"] = value > ROOM_AIR_FIO2
        return [
            (minute, by_minute[minute])
            for minute in sorted(by_minute)
            if (until_minute is None or minute <= until_minute) and by_minute[minute]
        ]


@dataclass(frozen=True)
class Outcome:
    record_id: int
    saps_i: float | None
    sofa: float | None
    in_hospital_death: int


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    if not 0 <= int(minutes) < 60:
        raise ValueError(f"minutes {minutes} out of range")
    return int(hours) * 60 + int(minutes)


def load_stay(path: str | Path) -> IcuStay:
    """Parse one stay file; -1 values and unreadable lines are skipped with a debug log."""
    path = Path(path)
    descriptors: dict[str, float] = {}
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    unreadable = 0
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != ["Time", "Parameter", "Value"]:
            raise PhysioNetFormatError(f"{path}: header {header} is not Time,Parameter,Value")
        for line_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 3:
                log.debug("%s:%d: skipped malformed line %r", path, line_number, row)
                unreadable += 1
                continue
            time_text, parameter, value_text = row
            try:
                minute = _minutes(time_text)
                value = float(value_text)
                if not 0 <= minute < 100 * 60:
                    raise ValueError(f"time {time_text} out of range")
            except ValueError:
                log.debug("%s:%d: skipped unreadable line %r", path, line_number, row)
                unreadable += 1
                continue
            if minute == 0 and parameter in DESCRIPTORS:
                descriptors[parameter] = value
            elif value != -1:
                series[parameter].append((minute, value))
    if "RecordID" not in descriptors:
        raise PhysioNetFormatError(f"{path}: no RecordID descriptor at 00:00")

    def descriptor(name: str) -> float | None:
        value = descriptors.get(name, -1)
        return None if value == -1 else value

    gender = descriptor("Gender")
    icu_type = descriptor("ICUType")
    for values in series.values():
        values.sort(key=lambda pair: pair[0])
    if unreadable:
        log.warning("%s: %d unreadable lines skipped", path, unreadable)
    return IcuStay(
        record_id=int(descriptors["RecordID"]),
        age_years=descriptor("Age"),
        gender=None if gender is None else int(gender),
        icu_type=None if icu_type is None else int(icu_type),
        series=dict(series),
        unreadable_lines=unreadable,
    )


def stay_files(folder: str | Path) -> list[Path]:
    """Return the stay files of a `set-a`-style folder, sorted by name."""
    files = sorted(Path(folder).glob("*.txt"))
    return [path for path in files if path.stem.isdigit()]


def load_outcomes(path: str | Path) -> dict[int, Outcome]:
    """Parse `Outcomes-a.txt` into RecordID -> Outcome; -1 scores become None."""
    outcomes: dict[int, Outcome] = {}
    with Path(path).open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                record_id = int(row["RecordID"])
                saps = float(row["SAPS-I"])
                sofa = float(row["SOFA"])
                death = int(row["In-hospital_death"])
            except (KeyError, ValueError) as exc:
                raise PhysioNetFormatError(f"{path}: unreadable outcome row {row}: {exc}") from exc
            outcomes[record_id] = Outcome(
                record_id=record_id,
                saps_i=None if saps == -1 else saps,
                sofa=None if sofa == -1 else sofa,
                in_hospital_death=death,
            )
    return outcomes
