"""The terminal's reading of the outbox, the journey of a result and its settings, without a screen."""

from __future__ import annotations

import sqlite3
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox
from protocol.settings import ConfigError
from tests.tui.conftest import DEVICE, INCIDENT, NOW, FakeClock
from tui.journey import FeedbackEvent, ResultRow, build_journey
from tui.reader import CommandStatus, OutboxReader, acknowledge_warning, queue_command
from tui.settings import DEFAULT_HOSPITALS, hospitals_from_hub_config, make_settings, parse_hospitals
from tui.widgets import describe_command

PROJECT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


def _row(**changes: object) -> ResultRow:
    values: dict[str, object] = {
        "sequence": 7,
        "incident_id": "inc-1",
        "created_at": T0,
        "acuity": 2,
        "urgent": True,
        "crew_prealert": False,
        "sent_at": None,
        "confirmed_at": None,
    }
    values.update(changes)
    return ResultRow(**values)  # type: ignore[arg-type]


def _event(
    alert_id: str, hospital: str, state: str, seconds: int, detail: str | None = None
) -> FeedbackEvent:
    return FeedbackEvent(alert_id, hospital, state, T0 + timedelta(seconds=seconds), detail)


def test_journey_before_the_hub_hears_of_it() -> None:
    assert build_journey(_row(), []).status(offline=True) == "waiting for coverage"
    assert build_journey(_row(), []).status(offline=False) == "queued on the ambulance"
    sent = _row(sent_at=T0)
    assert build_journey(sent, []).stage == "sent"
    confirmed = _row(sent_at=T0, confirmed_at=T0)
    assert build_journey(confirmed, []).status(offline=False) == "broker has it; waiting for the hub"
    routine = _row(acuity=4, urgent=False, sent_at=T0, confirmed_at=T0)
    assert build_journey(routine, []).status(offline=False) == "broker has it"


def test_journey_follows_an_escalation_to_the_acknowledging_hospital() -> None:
    own = "amb-01-7"
    events = [
        _event(own, "city-general", "queued", 1),
        _event(own, "city-general", "delivered", 2),
        _event(own, "city-general", "escalated", 20, "no acknowledgement; escalated to st-marys"),
        _event(f"{own}-esc-st-marys", "st-marys", "delivered", 21),
    ]
    journey = build_journey(_row(sent_at=T0, confirmed_at=T0), events)
    assert journey.stage == "hospital"
    assert journey.hospital_id == "st-marys"
    assert journey.hospital_at == T0 + timedelta(seconds=21)
    assert journey.status(offline=False) == "delivered to st-marys; waiting for acknowledgement"

    acknowledged = build_journey(
        journey.row, [*events, _event(f"{own}-esc-st-marys", "st-marys", "acknowledged", 25)]
    )
    assert acknowledged.stage == "acknowledged"
    assert acknowledged.status(offline=False) == "acknowledged by st-marys"


def test_reader_shows_the_newest_result_depth_and_journeys(online_outbox: Path) -> None:
    view = OutboxReader(online_outbox, clock=FakeClock()).read()
    assert view.problem is None
    assert view.device_id == DEVICE
    assert not view.offline
    assert view.incident_id == INCIDENT
    assert view.result is not None
    assert view.result.sequence == 6
    assert view.result.crew_note == "suspected sepsis, on O2"
    assert view.depth.pending == 2
    assert view.depth.pending_urgent == 2
    assert view.depth.rows == 7
    assert view.depth.max_rows == 1000
    stages = {journey.row.sequence: journey.stage for journey in view.journeys}
    assert stages == {
        6: "queued",
        5: "sent",
        4: "confirmed",
        3: "acknowledged",
        2: "confirmed",
        1: "confirmed",
        0: "confirmed",
    }
    assert view.journeys[0].row.crew_prealert
    assert view.command is not None
    assert view.command.state == "done"


def test_reader_offline_with_waiting_results_and_a_warning(offline_outbox: Path) -> None:
    view = OutboxReader(offline_outbox, clock=FakeClock()).read()
    assert view.offline
    assert view.link_detail == "connection lost: network unreachable"
    assert view.depth.pending == 3
    assert view.depth.pending_urgent == 3
    assert [warning.code for warning in view.warnings] == ["outbox_near_capacity"]


def test_reader_follows_the_incident_the_crew_started(online_outbox: Path) -> None:
    outbox = Outbox(online_outbox, max_rows=1000)
    outbox.set_state("current_incident_id", "inc-new")
    outbox.close()
    view = OutboxReader(online_outbox, clock=FakeClock()).read()
    assert view.incident_id == "inc-new"
    assert view.result is None


def test_missing_outbox_is_reported_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.sqlite"
    view = OutboxReader(path, clock=FakeClock()).read()
    assert view.problem is not None
    assert "waiting for the edge agent's outbox" in view.problem
    assert not path.exists()
    with pytest.raises(sqlite3.OperationalError):
        queue_command(path, "new_incident", {}, NOW)
    assert not path.exists()


def test_queue_command_read_by_agent(online_outbox: Path) -> None:
    command_id = queue_command(
        online_outbox, "manual_prealert", {"note": "GCS falling", "incident_id": INCIDENT}, NOW
    )
    outbox = Outbox(online_outbox, max_rows=1000)
    taken = outbox.take_commands()
    outbox.close()
    assert [(command.id, command.kind, command.payload) for command in taken] == [
        (command_id, "manual_prealert", {"note": "GCS falling", "incident_id": INCIDENT})
    ]


def test_acknowledging_a_warning_once(offline_outbox: Path) -> None:
    assert acknowledge_warning(offline_outbox, 1, NOW)
    assert not acknowledge_warning(offline_outbox, 1, NOW)
    assert OutboxReader(offline_outbox, clock=FakeClock()).read().warnings == ()


def test_describe_command_after_timeout() -> None:
    command = CommandStatus(1, "new_incident", {}, "new", NOW, None, None)
    assert "waiting for it" in describe_command(command, NOW + timedelta(seconds=2), timeout_s=5)
    late = describe_command(command, NOW + timedelta(seconds=6), timeout_s=5)
    assert "no edge agent took it in 6 s" in late
    failed = CommandStatus(1, "manual_prealert", {}, "failed", NOW, NOW, "no incident yet")
    assert "Pre-alert failed" in describe_command(failed, NOW, timeout_s=5)


def test_default_hospitals_match_hub_example() -> None:
    example = PROJECT / "examples" / "hub.toml"
    entries = tomllib.loads(example.read_text(encoding="utf-8"))["hospitals"]
    assert [(hospital.id, hospital.name) for hospital in DEFAULT_HOSPITALS] == [
        (entry["id"], entry["name"]) for entry in entries
    ]
    assert hospitals_from_hub_config(example) == DEFAULT_HOSPITALS


def test_hospital_options_are_checked() -> None:
    assert [hospital.id for hospital in parse_hospitals("st-marys, royal=Royal Infirmary")] == [
        "st-marys",
        "royal",
    ]
    assert parse_hospitals("royal=Royal Infirmary")[0].name == "Royal Infirmary"
    with pytest.raises(ConfigError, match="hospital id"):
        parse_hospitals("st marys")
    with pytest.raises(ConfigError, match="no hospital"):
        parse_hospitals(" , ")


def test_settings_reject_out_of_range_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="poll_interval_s"):
        make_settings(outbox_path=tmp_path / "x.sqlite", poll_interval_s=0)
    with pytest.raises(ConfigError, match="unknown_key|Extra inputs"):
        make_settings(outbox_path=tmp_path / "x.sqlite", unknown_key=1)
