"""The SQLite outbox: atomic sequence allocation, restart survival, delivery state."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox
from protocol import EmergencyType, News2Score, Scores, TriageResult, VitalsFrame

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def build(acuity: int = 3):
    def make(sequence: int) -> TriageResult:
        frame = VitalsFrame(device_id="amb-1", incident_id="inc-1", timestamp=NOW, hr_bpm=80)
        return TriageResult(
            device_id="amb-1",
            incident_id="inc-1",
            sequence=sequence,
            created_at=NOW,
            window=[frame],
            scores=Scores(
                acuity_probabilities=[0.2] * 5,
                urgent_probability=0.4,
                model_acuity=acuity,
                emergency_type_probabilities={t: 1 / 6 for t in EmergencyType},
                model=None,
            ),
            acuity=acuity,
            acuity_floor_applied=False,
            emergency_type=EmergencyType.OTHER,
            news2=News2Score(total=0, subscores={}, red_parameters=[], missing=[]),
            inference_ms=0.1,
        )

    return make


def test_sequence_increases_and_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    assert [outbox.add(build()).sequence for _ in range(3)] == [0, 1, 2]
    outbox.mark_delivered([row.id for row in outbox.pending(10)])
    outbox.close()

    reopened = Outbox(path)
    assert reopened.add(build()).sequence == 3
    stats = reopened.stats()
    assert stats.delivered == 3
    assert stats.pending == 1
    assert stats.next_sequence == 4


def test_pending_urgent_first_skipping_inflight(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    for acuity in (4, 2, 3, 1, 5):
        outbox.add(build(acuity))
    rows = outbox.pending(10)
    assert [row.sequence for row in rows] == [1, 3, 0, 2, 4]
    assert [row.urgent for row in rows] == [True, True, False, False, False]
    assert [row.sequence for row in outbox.pending(10, exclude_ids={rows[0].id})] == [3, 0, 2, 4]
    assert len(outbox.pending(1)) == 1
    assert outbox.stats().pending_urgent == 2


def test_mark_delivered_is_idempotent(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.add(build())
    row_id = outbox.pending(1)[0].id
    outbox.mark_delivered([row_id])
    outbox.mark_delivered([row_id])
    assert outbox.stats().delivered == 1
    assert outbox.pending(10) == []


def test_failed_build_leaves_no_row_and_no_gap(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")

    def broken(sequence: int) -> TriageResult:
        raise ValueError("scoring failed")

    try:
        outbox.add(broken)
    except ValueError:
        pass
    assert outbox.add(build()).sequence == 0
    assert outbox.stats().pending == 1


def test_rejected_frames_kept_for_inspection(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.record_rejected_frame("hr_bpm: too high (got 420)", {"hr_bpm": 420})
    row = outbox.db.execute("SELECT reason, payload FROM rejected_frames").fetchone()
    assert row[0] == "hr_bpm: too high (got 420)"
    assert '"hr_bpm": 420' in row[1]
    assert outbox.stats().frames_rejected == 1


def test_wal_and_full_sync(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    assert outbox.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert outbox.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_routine_rows_commit_without_full_sync(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    synchronous: list[int] = []

    def watching(acuity: int):
        make = build(acuity)

        def inner(sequence: int) -> TriageResult:
            synchronous.append(outbox.db.execute("PRAGMA synchronous").fetchone()[0])
            return make(sequence)

        return inner

    outbox.add(watching(4), urgent=False)
    assert outbox._unsynced
    outbox.sync()
    assert not outbox._unsynced
    outbox.add(watching(2), urgent=True)
    assert synchronous == [1, 2]  # NORMAL for routine telemetry, FULL for an alert-worthy result
    assert outbox.db.execute("PRAGMA synchronous").fetchone()[0] == 2

    strict = Outbox(tmp_path / "strict.sqlite", routine_synchronous="full")
    strict.add(build(4), urgent=False)
    assert not strict._unsynced


def test_eviction_spares_undelivered_urgent_rows(tmp_path: Path, caplog) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", max_rows=10)
    for acuity in (4, 2, 4, 4, 1, 4, 4, 4):
        outbox.add(build(acuity))
    delivered = [row.id for row in outbox.pending(10) if row.sequence in (0, 2)]
    outbox.mark_delivered(delivered)
    with caplog.at_level(logging.WARNING, logger="edge_agent.outbox"):
        for _ in range(6):
            outbox.add(build(4))
    stats = outbox.stats()
    assert stats.rows <= 10
    kept = {row[0] for row in outbox.db.execute("SELECT sequence FROM results")}
    assert {1, 4} <= kept  # undelivered urgent rows stay
    assert not {0, 2} & kept  # delivered rows go first
    evicted = [row[0] for row in outbox.db.execute("SELECT sequence FROM evicted ORDER BY sequence")]
    assert evicted == [3, 5]  # then the oldest undelivered routine rows
    assert stats.evicted == 2
    assert "evicted 2 undelivered routine results, sequences 3 to 5" in caplog.text
    assert (
        outbox.db.execute("SELECT count(*) FROM warnings WHERE code = 'outbox_near_capacity'").fetchone()[0]
        == 1
    )


def test_only_urgent_rows_grow_past_bound(tmp_path: Path, caplog) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", max_rows=10)
    with caplog.at_level(logging.ERROR, logger="edge_agent.outbox"):
        for _ in range(12):
            outbox.add(build(2))
    assert outbox.stats().pending == 12
    assert outbox.stats().evicted == 0
    assert "never evicted" in caplog.text


def test_commands_feedback_and_link_kept(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    first = outbox.add_command("set_destination", {"hospital_id": "st-marys"})
    outbox.add_command("manual_prealert", {"note": "query STEMI"})
    commands = outbox.take_commands()
    assert [command.kind for command in commands] == ["set_destination", "manual_prealert"]
    assert commands[0].payload == {"hospital_id": "st-marys"}
    outbox.finish_command(first, True, "done")
    assert [command.kind for command in outbox.take_commands()] == ["manual_prealert"]

    outbox.record_feedback("amb-1-4", "inc-1", "st-marys", "acknowledged", NOW, None)
    row = outbox.db.execute("SELECT alert_id, state FROM feedback").fetchone()
    assert row == ("amb-1-4", "acknowledged")
    outbox.record_link("online")
    assert outbox.db.execute("SELECT state FROM link_events").fetchone()[0] == "online"
    assert outbox.db.execute("SELECT value FROM state WHERE key = 'link'").fetchone()[0] == '"online"'


def test_invalid_capacity_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_rows 5"):
        Outbox(tmp_path / "outbox.sqlite", max_rows=5)
    with pytest.raises(ValueError, match="routine_synchronous 'off'"):
        Outbox(tmp_path / "outbox.sqlite", routine_synchronous="off")  # type: ignore[arg-type]


def test_agent_runs_fresh_commands_and_expires_stale(tmp_path: Path) -> None:
    import queue

    from edge_agent.agent import EdgeAgent
    from edge_agent.inference import EdgeScorer
    from edge_agent.uplink import MqttSettings, MqttUplink

    outbox = Outbox(tmp_path / "outbox.sqlite")
    events: queue.Queue = queue.Queue()
    uplink = MqttUplink(MqttSettings(host="127.0.0.1", port=1, client_id="amb-1"), events)  # never started
    agent = EdgeAgent("amb-1", EdgeScorer(), outbox, uplink, events)
    stale = outbox.add_command("set_destination", {"hospital_id": "city-general"})
    outbox.db.execute("UPDATE commands SET created_at = '2020-01-01T00:00:00+00:00' WHERE id = ?", [stale])
    fresh = outbox.add_command("set_destination", {"hospital_id": "st-marys"})
    bad = outbox.add_command("set_destination", {"hospital_id": "no/slashes"})
    agent.handle_commands()
    states = dict(outbox.db.execute("SELECT id, state FROM commands").fetchall())
    assert states == {stale: "failed", fresh: "done", bad: "failed"}
    assert agent.destination_hospital_id == "st-marys"
    detail = outbox.db.execute("SELECT detail FROM commands WHERE id = ?", [stale]).fetchone()[0]
    assert detail.startswith("expired")


def test_crew_destination_survives_agent_restart(tmp_path: Path) -> None:
    import queue

    from edge_agent.agent import EdgeAgent
    from edge_agent.inference import EdgeScorer
    from edge_agent.uplink import MqttSettings, MqttUplink

    def agent_on(outbox: Outbox) -> EdgeAgent:
        events: queue.Queue = queue.Queue()
        uplink = MqttUplink(MqttSettings(host="127.0.0.1", port=1, client_id="amb-1"), events)
        return EdgeAgent("amb-1", EdgeScorer(), outbox, uplink, events, destination_hospital_id="st-marys")

    path = tmp_path / "outbox.sqlite"
    first = agent_on(Outbox(path))
    first.outbox.add_command("set_destination", {"hospital_id": "city-general"})
    first.handle_commands()
    first.outbox.close()

    restarted = agent_on(Outbox(path))
    restarted.publish_state()
    assert restarted.destination_hospital_id == "city-general"
    restarted.outbox.add_command("new_incident", {})
    restarted.handle_commands()
    assert restarted.destination_hospital_id == "st-marys"  # a new patient starts from the default
