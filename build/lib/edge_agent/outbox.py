"""SQLite outbox: every triage result is stored before it is sent, and stays until the broker confirms it.

The database runs in WAL mode with `synchronous=FULL`, so a committed result survives power loss. The
per-device sequence number is allocated in the same transaction as the row that uses it and is kept in
a counter row, so it keeps increasing across restarts even after delivered rows are pruned.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from protocol import TriageResult

log = logging.getLogger(__name__)

PENDING = "pending"
DELIVERED = "delivered"


@dataclass(frozen=True)
class OutboxRow:
    id: int
    sequence: int
    urgent: bool
    payload: str


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    delivered: int
    frames_seen: int
    frames_rejected: int
    next_sequence: int


class Outbox:
    """The agent's store-and-forward queue. Use from one thread only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db = sqlite_utils.Database(connection)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self._create_tables()

    def _create_tables(self) -> None:
        if "results" not in self.db.table_names():
            self.db["results"].create(
                {
                    "id": int,
                    "sequence": int,
                    "incident_id": str,
                    "created_at": str,
                    "acuity": int,
                    "urgent": int,
                    "payload": str,
                    "state": str,
                    "delivered_at": str,
                },
                pk="id",
                not_null={"sequence", "incident_id", "created_at", "acuity", "urgent", "payload", "state"},
                defaults={"state": PENDING},
            )
            self.db["results"].create_index(["sequence"], unique=True)
            self.db["results"].create_index(["state", "sequence"])
        if "counters" not in self.db.table_names():
            self.db["counters"].create({"name": str, "value": int}, pk="name")
        if "rejected_frames" not in self.db.table_names():
            self.db["rejected_frames"].create(
                {"id": int, "received_at": str, "reason": str, "payload": str}, pk="id"
            )

    def _counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = ?", [name]).fetchone()
        return 0 if row is None else int(row[0])

    def _set_counter(self, name: str, value: int) -> None:
        self.db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            [name, value],
        )

    def add(self, build: Callable[[int], TriageResult]) -> TriageResult:
        """Allocate the next sequence number, build the result with it and store both atomically."""
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            sequence = self._counter("next_sequence")
            result = build(sequence)
            self.db.execute(
                "INSERT INTO results(sequence, incident_id, created_at, acuity, urgent, payload, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    sequence,
                    result.incident_id,
                    result.created_at.isoformat(),
                    result.acuity,
                    int(result.is_urgent),
                    result.model_dump_json(),
                    PENDING,
                ],
            )
            self._set_counter("next_sequence", sequence + 1)
            self._set_counter("frames_seen", self._counter("frames_seen") + 1)
        return result

    def record_rejected_frame(self, reason: str, payload: object) -> None:
        """Keep a frame that failed validation, with the reason, for later inspection."""
        with self.db.conn:
            self.db.execute(
                "INSERT INTO rejected_frames(received_at, reason, payload) VALUES (?, ?, ?)",
                [datetime.now(UTC).isoformat(), reason, json.dumps(payload, default=str)],
            )

    def pending(self, limit: int, exclude_ids: set[int] | frozenset[int] = frozenset()) -> list[OutboxRow]:
        """Return up to `limit` undelivered rows in sequence order, skipping `exclude_ids`."""
        rows = []
        cursor = self.db.execute(
            "SELECT id, sequence, urgent, payload FROM results WHERE state = ? ORDER BY sequence",
            [PENDING],
        )
        for row_id, sequence, urgent, payload in cursor:
            if row_id in exclude_ids:
                continue
            rows.append(OutboxRow(row_id, sequence, bool(urgent), payload))
            if len(rows) >= limit:
                break
        return rows

    def mark_delivered(self, row_ids: list[int]) -> None:
        if not row_ids:
            return
        now = datetime.now(UTC).isoformat()
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.conn.executemany(
                "UPDATE results SET state = ?, delivered_at = ? WHERE id = ? AND state = ?",
                [(DELIVERED, now, row_id, PENDING) for row_id in row_ids],
            )

    def stats(self) -> OutboxStats:
        counts = dict(self.db.execute("SELECT state, count(*) FROM results GROUP BY state").fetchall())
        rejected = self.db.execute("SELECT count(*) FROM rejected_frames").fetchone()[0]
        return OutboxStats(
            pending=counts.get(PENDING, 0),
            delivered=counts.get(DELIVERED, 0),
            frames_seen=self._counter("frames_seen") + rejected,
            frames_rejected=rejected,
            next_sequence=self._counter("next_sequence"),
        )

    def close(self) -> None:
        self.db.conn.close()
