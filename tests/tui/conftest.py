"""A fixture outbox as a running edge agent leaves it, with fixed times, for the terminal's tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox
from models.scores import news2, news2_acuity_floor, qsofa, shock_index
from protocol import Consciousness, EmergencyType, ModelInfo, Scores, TriageResult, VitalsFrame
from tui.settings import TerminalSettings

DEVICE = "amb-01"
INCIDENT = "inc-0314-0957"
START = datetime(2026, 3, 14, 9, 58, tzinfo=UTC)
NOW = datetime(2026, 3, 14, 10, 0, 30, tzinfo=UTC)
FRAME_INTERVAL = timedelta(seconds=20)
MODEL = ModelInfo(version="1.1.0", sha256="ab" * 32)

# A patient becoming septic on the way: one frame every 20 s, each followed by a result.
VITALS = [
    # hr, rr, spo2, sbp, dbp, temp, consciousness, on oxygen
    (96, 18, 96, 118, 76, 38.1, "A", False),
    (102, 20, 95, 112, 72, 38.2, "A", False),
    (108, 21, 94, 106, 68, 38.3, "A", False),
    (114, 23, 93, 100, 64, 38.4, "A", False),
    (119, 24, 92, 95, 60, 38.5, "A", True),
    (124, 26, 91, 90, 56, 38.6, "C", True),
    (128, 27, 90, 88, 54, 38.6, "C", True),
]


@dataclass
class FakeClock:
    """The terminal's clock in tests: fixed until a test moves it."""

    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


def _frame(index: int) -> VitalsFrame:
    hr, rr, spo2, sbp, dbp, temp, level, oxygen = VITALS[index]
    return VitalsFrame(
        device_id=DEVICE,
        incident_id=INCIDENT,
        timestamp=START + index * FRAME_INTERVAL,
        hr_bpm=hr,
        rr_per_min=rr,
        spo2_pct=spo2,
        sbp_mmhg=sbp,
        dbp_mmhg=dbp,
        temp_c=temp,
        consciousness=Consciousness(level),
        supplemental_oxygen=oxygen,
    )


def build_result(index: int, *, crew_note: str | None = None):
    """The result the agent would store after frame `index`, scored with the real clinical scores."""
    window = [_frame(i) for i in range(index + 1)]
    newest = window[-1]
    score = news2(newest)
    acuity = min(3, news2_acuity_floor(score))
    types = {kind: 0.04 for kind in EmergencyType}
    types[EmergencyType.SEPSIS] = 0.8

    def make(sequence: int) -> TriageResult:
        return TriageResult(
            device_id=DEVICE,
            incident_id=INCIDENT,
            sequence=sequence,
            created_at=newest.timestamp + timedelta(seconds=1),
            window=window,
            scores=Scores(
                acuity_probabilities=[0.05, 0.25, 0.5, 0.15, 0.05],
                urgent_probability=0.3,
                model_acuity=3,
                emergency_type_probabilities=types,
                model=MODEL,
            ),
            acuity=acuity,
            acuity_floor_applied=acuity < 3,
            emergency_type=EmergencyType.SEPSIS,
            news2=score,
            qsofa=qsofa(newest),
            shock_index=shock_index(newest),
            inference_ms=1.2,
            destination_hospital_id="st-marys",
            crew_prealert=crew_note is not None,
            crew_note=crew_note,
        )

    return make


def _at(seconds: float) -> str:
    return (START + timedelta(seconds=seconds)).isoformat()


def make_outbox(path: Path, *, online: bool) -> Path:
    """Seven results of one incident; online: the last three on their way, offline: waiting."""
    outbox = Outbox(path, max_rows=1000)
    for key, value in {
        "device_id": DEVICE,
        "destination_hospital_id": "st-marys",
        "scorer_mode": "model 1.1.0",
        "model_version": "1.1.0",
        "max_rows": 1000,
    }.items():
        outbox.set_state(key, value)
    outbox.record_link("online", at=START - timedelta(seconds=20))
    for index in range(len(VITALS)):
        note = "suspected sepsis, on O2" if index == len(VITALS) - 1 else None
        outbox.add(build_result(index, crew_note=note))
    rows = {row.sequence: row.id for row in outbox.pending(100)}

    delivered = [0, 1, 2, 3] if not online else [0, 1, 2, 3, 4]
    sent = delivered + ([5] if online else [])
    outbox.mark_sent([rows[sequence] for sequence in sent])
    outbox.mark_delivered([rows[sequence] for sequence in delivered])
    for sequence in sent:
        outbox.db.execute(
            "UPDATE results SET first_sent_at = ? WHERE sequence = ?", [_at(20 * sequence + 1.2), sequence]
        )
    for sequence in delivered:
        outbox.db.execute(
            "UPDATE results SET delivered_at = ? WHERE sequence = ?", [_at(20 * sequence + 1.3), sequence]
        )

    # Result 3 raised a pre-alert: City General never acknowledged it, St Mary's did after escalation.
    alert = f"{DEVICE}-3"
    escalation = f"{alert}-esc-st-marys"
    for alert_id, hospital, state, seconds, detail in [
        (alert, "city-general", "queued", 62, "KTAS 2 sepsis, crew's choice"),
        (alert, "city-general", "delivered", 62.5, None),
        (alert, "city-general", "resent", 70.5, "attempt 2"),
        (alert, "city-general", "escalated", 78.5, "no acknowledgement; escalated to st-marys"),
        (escalation, "st-marys", "delivered", 79, None),
        (escalation, "st-marys", "acknowledged", 82, "by board"),
    ]:
        at = START + timedelta(seconds=seconds)
        outbox.record_feedback(alert_id, INCIDENT, hospital, state, at, detail)

    if not online:
        outbox.record_link(
            "offline", "connection lost: network unreachable", at=START + timedelta(seconds=95)
        )
        outbox.add_warning("outbox_near_capacity", "outbox at 800 of 1000 rows; restore coverage")
        outbox.db.execute("UPDATE warnings SET at = ?", [_at(100)])
    else:
        command_id = outbox.add_command("set_destination", {"hospital_id": "st-marys"})
        outbox.finish_command(command_id, True, "destination set to st-marys")
        outbox.db.execute("UPDATE commands SET created_at = ?, handled_at = ?", [_at(140), _at(140.2)])
    outbox.close()
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def online_outbox(tmp_path: Path) -> Path:
    return make_outbox(tmp_path / "online.sqlite", online=True)


@pytest.fixture
def offline_outbox(tmp_path: Path) -> Path:
    return make_outbox(tmp_path / "offline.sqlite", online=False)


def settings_for(path: Path, **overrides: object) -> TerminalSettings:
    values: dict[str, object] = {"outbox_path": path, "poll_interval_s": 0.05, "command_timeout_s": 5.0}
    values.update(overrides)
    return TerminalSettings.model_validate(values)
