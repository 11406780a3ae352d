"""The SQLite outbox: atomic sequence allocation, restart survival, delivery state."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

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


def test_pending_in_sequence_order_skipping_inflight(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    for acuity in (4, 2, 3):
        outbox.add(build(acuity))
    rows = outbox.pending(10)
    assert [row.sequence for row in rows] == [0, 1, 2]
    assert [row.urgent for row in rows] == [False, True, False]
    assert [row.sequence for row in outbox.pending(10, exclude_ids={rows[0].id})] == [1, 2]
    assert len(outbox.pending(1)) == 1


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
