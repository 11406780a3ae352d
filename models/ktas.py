"""Loader for the KTAS emergency-department triage data set (Moon et al., PLoS ONE 2019).

Source: Moon SH, Shim JL, Park KS, Park CS. Triage accuracy and causes of mistriage using the Korean
Triage and Acuity Scale. PLoS ONE 14(9): e0216972 (2019), supporting information S1 and S2. CC BY 4.0.

The file as published is `;`-separated cp1252 text with CRLF line endings. Its quirks:
- `??` marks a vital sign that could not be measured, and Korean chief complaints that lost their
  characters in the cp1252 export;
- `#BOÞ!` is an empty cell; in `NRS_pain` it means no pain score was taken;
- `Saturation` is empty for every row of hospital group 1;
- `Pain` is coded 0/1 (no/yes) in the data, although the codebook says 1/2;
- `KTAS duration_min` uses a decimal comma, and some codes carry trailing spaces (`"0 "`).
A copy re-saved as UTF-8 (with or without a byte-order mark) or with the codebook's 1/2 pain coding
loads the same way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from protocol import Consciousness, PatientContext, VitalsFrame

log = logging.getLogger(__name__)

NOT_MEASURABLE = "??"
EMPTY_CELL = "#BOÞ!"

REQUIRED_COLUMNS = (
    "Group", "Sex", "Age", "Arrival mode", "Injury", "Chief_complain", "Mental", "Pain", "NRS_pain",
    "SBP", "DBP", "HR", "RR", "BT", "Saturation", "KTAS_RN", "Diagnosis in ED", "Disposition",
    "KTAS_expert",
)  # fmt: skip

# Codebook S2: Arrival mode 2 is a public (119) ambulance, 4 a private ambulance.
AMBULANCE_ARRIVAL_MODES = frozenset({2, 4})
# Codebook S2 arrival modes: 1 walk, 2 public ambulance, 3 private vehicle, 4 private ambulance,
# 5 police or public transport, 6 wheelchair, 7 other.
ARRIVAL_MODE_NAMES = {
    1: "walk-in",
    2: "ambulance",
    3: "private-vehicle",
    4: "ambulance",
    5: "other",
    6: "other",
    7: "other",
}
# Codebook S2: Mental 1 alert, 2 verbal, 3 pain, 4 unresponsive (AVPU).
MENTAL_TO_CONSCIOUSNESS = {
    1: Consciousness.ALERT,
    2: Consciousness.VOICE,
    3: Consciousness.PAIN,
    4: Consciousness.UNRESPONSIVE,
}


class KtasFormatError(ValueError):
    """The file cannot be read as the KTAS format at all (wrong separator, missing columns)."""


@dataclass(frozen=True)
class KtasVisit:
    """One emergency-department visit; each row of the file is a different patient."""

    row_number: int  # 1-based data row in the file, for provenance
    group: int
    sex: str  # "female" or "male"
    age_years: int
    arrival_mode: int
    injury: bool
    chief_complaint: str | None  # None where the text was lost (`??`)
    mental: int
    pain: bool
    nrs_pain: int | None
    sbp_mmhg: float | None
    dbp_mmhg: float | None
    hr_bpm: float | None
    rr_per_min: float | None
    temp_c: float | None
    spo2_pct: float | None
    # Known only after triage: labels and evaluation, never model inputs.
    ktas_rn: int
    diagnosis: str
    disposition: int
    ktas_expert: int
    mistriage: int | None

    @property
    def arrived_by_ambulance(self) -> bool:
        return self.arrival_mode in AMBULANCE_ARRIVAL_MODES

    def context(self) -> PatientContext:
        return PatientContext(
            age_years=self.age_years,
            sex=self.sex,  # type: ignore[arg-type]
            chief_complaint=self.chief_complaint,
            injury=self.injury,
            pain_nrs=self.nrs_pain,
            arrival_mode=ARRIVAL_MODE_NAMES[self.arrival_mode],  # type: ignore[arg-type]
        )

    def fingerprint(self) -> str:
        """Return a short hash of the visit's content, the same whatever file or row it is read from."""
        fields = {name: value for name, value in self.__dict__.items() if name != "row_number"}
        return hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()[:16]

    def frame_values(self) -> dict[str, Any]:
        """Return the visit's triage vital signs and context as VitalsFrame fields."""
        return {
            "hr_bpm": self.hr_bpm,
            "rr_per_min": self.rr_per_min,
            "spo2_pct": self.spo2_pct,
            "sbp_mmhg": self.sbp_mmhg,
            "dbp_mmhg": self.dbp_mmhg,
            "temp_c": self.temp_c,
            "consciousness": MENTAL_TO_CONSCIOUSNESS[self.mental],
            # The data set does not record oxygen therapy at triage.
            "supplemental_oxygen": None,
            "context": self.context(),
            "source": f"ktas row {self.row_number}",
        }

    def to_frame(self, device_id: str, incident_id: str, timestamp: datetime) -> VitalsFrame:
        return VitalsFrame(
            device_id=device_id, incident_id=incident_id, timestamp=timestamp, **self.frame_values()
        )


@dataclass
class KtasData:
    visits: list[KtasVisit]
    rejected_rows: list[tuple[int, str]] = field(default_factory=list)  # (row number, reason)
    # (row number, column, value) of readings outside physical limits, loaded as not measured
    implausible_values: list[tuple[int, str, str]] = field(default_factory=list)
    encoding: str = "cp1252"
    pain_coding: str = "0/1"


def read_text(path: Path) -> tuple[str, str]:
    """Return the file's text and the encoding that decoded it: UTF-8 if valid, else cp1252."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace"), "cp1252"


def load_ktas(path: str | Path) -> KtasData:
    """Load a KTAS file; rows with an unusable label or code are listed in `rejected_rows`."""
    path = Path(path)
    text, encoding = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=";")
    columns = [name.strip() for name in (reader.fieldnames or [])]
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise KtasFormatError(
            f"{path}: missing columns {missing}; expected the `;`-separated KTAS format with header "
            f"{', '.join(REQUIRED_COLUMNS)}"
        )
    rows = [{(k or "").strip(): (v or "") for k, v in row.items()} for row in reader]

    pain_coding = _detect_pain_coding(row["Pain"] for row in rows)
    data = KtasData(visits=[], encoding=encoding, pain_coding=pain_coding)
    for row_number, row in enumerate(rows, start=1):
        try:
            data.visits.append(_parse_row(row_number, row, pain_coding, data.implausible_values))
        except ValueError as exc:
            data.rejected_rows.append((row_number, str(exc)))
    if data.implausible_values:
        log.warning(
            "%s: %d readings outside physical limits were loaded as not measured, first: row %d %s %r",
            path, len(data.implausible_values), *data.implausible_values[0],
        )  # fmt: skip
    if data.rejected_rows:
        log.warning(
            "%s: rejected %d of %d rows, first: row %d: %s",
            path, len(data.rejected_rows), len(rows), *data.rejected_rows[0],
        )  # fmt: skip
    return data


def _detect_pain_coding(values: Iterable[str]) -> str:
    seen = {value.strip() for value in values if not _is_spreadsheet_error(value.strip())}
    seen -= {"", NOT_MEASURABLE}
    if seen <= {"1", "2"} and "2" in seen:
        return "1/2"
    return "0/1"


def _parse_row(
    row_number: int,
    row: dict[str, str],
    pain_coding: str,
    implausible: list[tuple[int, str, str]],
) -> KtasVisit:
    def vital(column: str, low: float, high: float) -> float | None:
        number = _optional_number(row, column, float("-inf"), float("inf"))
        if number is not None and not low <= number <= high:
            implausible.append((row_number, column, row[column]))
            return None
        return number

    pain_code = _code(row, "Pain", {0, 1} if pain_coding == "0/1" else {1, 2})
    pain = pain_code == (1 if pain_coding == "0/1" else 2)
    nrs = _optional_number(row, "NRS_pain", 0, 10)
    if nrs is None and not pain:
        nrs = 0.0  # no pain reported, so no score was taken
    sbp, dbp = vital("SBP", 0, 300), vital("DBP", 0, 250)
    if sbp is not None and dbp is not None and dbp > sbp:
        implausible.append((row_number, "DBP", f"{row['DBP']} above SBP {row['SBP']}"))
        sbp = dbp = None
    complaint = row["Chief_complain"].strip()
    if not complaint or set(complaint) <= set("? "):
        complaint_text = None
    else:
        complaint_text = complaint
    return KtasVisit(
        row_number=row_number,
        group=_code(row, "Group", {1, 2}),
        sex="female" if _code(row, "Sex", {1, 2}) == 1 else "male",
        age_years=int(_required_number(row, "Age", 0, 120)),
        arrival_mode=_code(row, "Arrival mode", set(range(1, 8))),
        injury=_code(row, "Injury", {1, 2}) == 2,
        chief_complaint=complaint_text,
        mental=_code(row, "Mental", {1, 2, 3, 4}),
        pain=pain,
        nrs_pain=None if nrs is None else int(nrs),
        sbp_mmhg=sbp,
        dbp_mmhg=dbp,
        hr_bpm=vital("HR", 0, 300),
        rr_per_min=vital("RR", 0, 80),
        temp_c=vital("BT", 25, 45),
        spo2_pct=vital("Saturation", 0, 100),
        ktas_rn=_code(row, "KTAS_RN", {1, 2, 3, 4, 5}),
        diagnosis=row["Diagnosis in ED"].strip(),
        disposition=_code(row, "Disposition", set(range(1, 8))),
        ktas_expert=_code(row, "KTAS_expert", {1, 2, 3, 4, 5}),
        mistriage=_optional_code(row, "mistriage", {0, 1, 2}),
    )


def _is_spreadsheet_error(value: str) -> bool:
    # `#BOÞ!` is a localized spreadsheet error like `#NULL!` or `#VALUE!`; treat them all as empty.
    return len(value) >= 3 and value.startswith("#") and value.endswith("!")


def _cell(row: dict[str, str], column: str) -> str | None:
    value = row.get(column, "").strip()
    if value in ("", NOT_MEASURABLE) or _is_spreadsheet_error(value):
        return None
    return value.replace(",", ".")


def _optional_number(row: dict[str, str], column: str, low: float, high: float) -> float | None:
    value = _cell(row, column)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{column} {row[column]!r} is not a number") from None
    if not low <= number <= high:
        raise ValueError(f"{column} {number} is outside [{low}, {high}]")
    return number


def _required_number(row: dict[str, str], column: str, low: float, high: float) -> float:
    number = _optional_number(row, column, low, high)
    if number is None:
        raise ValueError(f"{column} {row.get(column)!r} is missing or outside [{low}, {high}]")
    return number


def _code(row: dict[str, str], column: str, allowed: set[int]) -> int:
    code = _optional_code(row, column, allowed)
    if code is None:
        raise ValueError(f"{column} is empty; expected one of {sorted(allowed)}")
    return code


def _optional_code(row: dict[str, str], column: str, allowed: set[int]) -> int | None:
    value = _cell(row, column)
    if value is None:
        return None
    try:
        code = int(float(value))
    except ValueError:
        raise ValueError(f"{column} {row[column]!r} is not a code") from None
    if code not in allowed:
        raise ValueError(f"{column} {code} is not one of {sorted(allowed)}")
    return code
