"""SQLite outbox: every triage result is stored before it is sent, and stays until the broker confirms it.

Durability. The database runs in WAL mode. A result that can raise an alert (urgent after the NEWS2
floor) commits with `synchronous=FULL`, so it survives power loss once `add` returns. Routine
telemetry commits with `synchronous=NORMAL` by default: it survives a crash of the agent, but a power
cut can take the last routine rows that were not yet synced. The database stays consistent either
way. `routine_synchronous="full"` makes every row durable at the cost of one disk flush per result.
Before a routine row is sent, `sync` flushes it, so a sequence number the hub has seen is never
handed out again after a power cut.

Order and priority. The per-device sequence number is allocated in the same transaction as the row
that uses it and is kept in a counter row, so it keeps increasing across restarts even after rows
are evicted. `pending` returns urgent rows first, then the rest, each in sequence order.

Capacity. The outbox keeps `max_rows` results. Past that it evicts delivered rows first, oldest
first, then undelivered routine rows, oldest first, and records each evicted routine row in
`evicted`. It never evicts an undelivered urgent row, so with only those left it grows past the
bound and logs an error (once a minute, like the eviction warning). A warning is logged, and kept in `warnings`, when the outbox reaches
`warn_ratio` of its capacity.

The agent's other state for the crew terminal lives here too: connectivity changes (`link_events`),
what the hub reported about each pre-alert (`feedback`), warnings, commands from the terminal and a
small key-value `state` table.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

from protocol import TriageResult

log = logging.getLogger(__name__)

PENDING = "pending"
DELIVERED = "delivered"

COMMAND_NEW = "new"
COMMAND_DONE = "done"
COMMAND_FAILED = "failed"

Synchronous = Literal["full", "normal"]

DEFAULT_MAX_ROWS = 100_000
DEFAULT_WARN_RATIO = 0.8
# Evicting a little more than needed keeps eviction off the path of every following result.
EVICTION_HEADROOM = 0.02
LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class OutboxRow:
    id: int
    sequence: int
    urgent: bool
    payload: str


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    pending_urgent: int
    delivered: int
    frames_seen: int
    frames_rejected: int
    next_sequence: int
    rows: int
    max_rows: int
    evicted: int


@dataclass(frozen=True)
class Command:
    id: int
    kind: str
    payload: dict[str, Any]
    created_at: datetime


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Outbox:
    """The agent's store-and-forward queue. Use from one thread only; readers may open the file too."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        warn_ratio: float = DEFAULT_WARN_RATIO,
        routine_synchronous: Synchronous = "normal",
    ):
        if max_rows < 10:
            raise ValueError(f"invalid outbox max_rows {max_rows}: use 10 or more")
        if not 0 < warn_ratio <= 1:
            raise ValueError(f"invalid outbox warn_ratio {warn_ratio}: use a fraction above 0 and at most 1")
        if routine_synchronous not in ("full", "normal"):
            raise ValueError(f"invalid routine_synchronous {routine_synchronous!r}: use 'full' or 'normal'")
        self.path = Path(path)
        self.max_rows = max_rows
        self.warn_ratio = warn_ratio
        self.routine_synchronous = routine_synchronous
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One thread at a time uses it, but not always the thread that opened it (a worker, a test).
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        self.db = sqlite_utils.Database(connection)
        self.db.execute("PRAGMA journal_mode=WAL")
        self._synchronous = ""
        self._set_synchronous("full")
        self._create_tables()
        self._rows = self.db.execute("SELECT count(*) FROM results").fetchone()[0]
        self._unsynced = False  # a routine row committed with synchronous=NORMAL and not flushed since
        self._near_capacity = self._rows >= self.max_rows * self.warn_ratio
        self._logged_at: dict[str, float] = {}

    # --- schema ----------------------------------------------------------------------------------

    def _create_tables(self) -> None:
        tables = set(self.db.table_names())
        if "results" not in tables:
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
                    "first_sent_at": str,
                },
                pk="id",
                not_null={"sequence", "incident_id", "created_at", "acuity", "urgent", "payload", "state"},
                defaults={"state": PENDING},
            )
            self.db["results"].create_index(["sequence"], unique=True)
        elif "first_sent_at" not in self.db["results"].columns_dict:
            self.db["results"].add_column("first_sent_at", str)
        self.db.execute(
            "CREATE INDEX IF NOT EXISTS idx_results_drain ON results(state, urgent DESC, sequence)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS idx_results_incident ON results(incident_id, sequence)")
        schemas = {
            "counters": ({"name": str, "value": int}, "name"),
            "rejected_frames": ({"id": int, "received_at": str, "reason": str, "payload": str}, "id"),
            "evicted": (
                {"sequence": int, "incident_id": str, "acuity": int, "created_at": str, "evicted_at": str},
                "sequence",
            ),
            "link_events": ({"id": int, "at": str, "state": str, "detail": str}, "id"),
            "feedback": (
                {
                    "id": int,
                    "alert_id": str,
                    "incident_id": str,
                    "hospital_id": str,
                    "state": str,
                    "at": str,
                    "received_at": str,
                    "detail": str,
                },
                "id",
            ),
            "warnings": (
                {"id": int, "at": str, "code": str, "text": str, "acknowledged_at": str},
                "id",
            ),
            "commands": (
                {
                    "id": int,
                    "created_at": str,
                    "kind": str,
                    "payload": str,
                    "state": str,
                    "handled_at": str,
                    "detail": str,
                },
                "id",
            ),
            "state": ({"key": str, "value": str, "updated_at": str}, "key"),
        }
        for name, (columns, pk) in schemas.items():
            if name not in tables:
                self.db[name].create(columns, pk=pk)
        self.db.execute("CREATE INDEX IF NOT EXISTS idx_feedback_alert ON feedback(alert_id, id)")
        self.db.execute("CREATE INDEX IF NOT EXISTS idx_commands_state ON commands(state, id)")

    def _set_synchronous(self, level: Synchronous) -> None:
        if level != self._synchronous:
            self.db.execute(f"PRAGMA synchronous={level.upper()}")
            self._synchronous = level

    # --- counters ---------------------------------------------------------------------------------

    def _counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = ?", [name]).fetchone()
        return 0 if row is None else int(row[0])

    def _set_counter(self, name: str, value: int) -> None:
        self.db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            [name, value],
        )

    # --- results ----------------------------------------------------------------------------------

    def add(self, build: Callable[[int], TriageResult], *, urgent: bool | None = None) -> TriageResult:
        """Allocate the next sequence number, build the result with it and store both in one transaction.

        `urgent` marks a result that can raise an alert, and decides how the commit is flushed.
        None flushes it like an urgent one and takes the urgency from the result.
        """
        durable = urgent is not False or self.routine_synchronous == "full"
        self._set_synchronous("full" if durable else "normal")
        try:
            result = self._insert(build, urgent)
        finally:
            self._set_synchronous("full")
        # A durable commit also flushes every earlier commit in the write-ahead log.
        self._unsynced = not durable
        self._check_capacity()
        return result

    def _insert(self, build: Callable[[int], TriageResult], urgent: bool | None) -> TriageResult:
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
                    int(result.is_urgent or bool(urgent)),
                    result.model_dump_json(),
                    PENDING,
                ],
            )
            self._set_counter("next_sequence", sequence + 1)
            self._set_counter("frames_seen", self._counter("frames_seen") + 1)
            self._rows += 1
            if self._rows > self.max_rows:
                self._evict()
        return result

    def sync(self) -> None:
        """Flush routine rows committed with synchronous=NORMAL to disk; call before sending them."""
        if not self._unsynced:
            return
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            self._set_counter("synced_at_sequence", self._counter("next_sequence"))
        self._unsynced = False

    def _evict(self) -> None:
        """Bring the row count back under the bound; run inside `add`'s transaction."""
        target = int(self.max_rows * (1 - EVICTION_HEADROOM))
        excess = self._rows - target
        deleted = self.db.execute(
            "DELETE FROM results WHERE id IN "
            "(SELECT id FROM results WHERE state = ? ORDER BY sequence LIMIT ?)",
            [DELIVERED, excess],
        ).rowcount
        self._rows -= deleted
        excess -= deleted
        if excess > 0:
            victims = self.db.execute(
                "SELECT id, sequence, incident_id, acuity, created_at FROM results "
                "WHERE state = ? AND urgent = 0 ORDER BY sequence LIMIT ?",
                [PENDING, excess],
            ).fetchall()
            if victims:
                now = _now()
                self.db.conn.executemany(
                    "INSERT OR REPLACE INTO evicted(sequence, incident_id, acuity, created_at, evicted_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (sequence, incident, acuity, created, now)
                        for _, sequence, incident, acuity, created in victims
                    ],
                )
                self.db.conn.executemany("DELETE FROM results WHERE id = ?", [(row[0],) for row in victims])
                self._rows -= len(victims)
                excess -= len(victims)
                self._set_counter("evicted", self._counter("evicted") + len(victims))
                if self._log_due("evicted"):
                    log.warning(
                        "outbox full (%d rows): evicted %d undelivered routine results, sequences %d to %d; "
                        "they are listed in the outbox's evicted table. Restore coverage or raise outbox "
                        "max_rows",
                        self.max_rows, len(victims), victims[0][1], victims[-1][1],
                    )  # fmt: skip
        if excess > 0 and self._log_due("over_bound"):
            log.error(
                "outbox contains %d rows, over its bound of %d, and every remaining row is an undelivered "
                "urgent result, which is never evicted; restore coverage or raise outbox max_rows",
                self._rows, self.max_rows,
            )  # fmt: skip

    def _log_due(self, what: str) -> bool:
        """Return True at most once a minute per kind of line, so a full outbox does not flood the log."""
        now = time.monotonic()
        if now - self._logged_at.get(what, -LOG_EVERY_S) < LOG_EVERY_S:
            return False
        self._logged_at[what] = now
        return True

    def _check_capacity(self) -> None:
        threshold = self.max_rows * self.warn_ratio
        if self._rows >= threshold and not self._near_capacity:
            self._near_capacity = True
            text = (
                f"outbox at {self._rows} of {self.max_rows} rows; routine results will be evicted at "
                f"{self.max_rows}. Restore coverage or raise outbox max_rows"
            )
            log.warning("%s", text)
            self.add_warning("outbox_near_capacity", text)
        elif self._rows < threshold * 0.9:
            self._near_capacity = False

    def record_rejected_frame(self, reason: str, payload: object) -> None:
        """Keep a frame that failed validation, with the reason, for later inspection."""
        with self.db.conn:
            self.db.execute(
                "INSERT INTO rejected_frames(received_at, reason, payload) VALUES (?, ?, ?)",
                [_now(), reason, json.dumps(payload, default=str)],
            )

    def pending(self, limit: int, exclude_ids: set[int] | frozenset[int] = frozenset()) -> list[OutboxRow]:
        """Return up to `limit` undelivered rows, urgent first, each class in sequence order.

        Rows in `exclude_ids` (already handed to the MQTT client) are skipped.
        """
        rows = []
        cursor = self.db.execute(
            "SELECT id, sequence, urgent, payload FROM results WHERE state = ? ORDER BY urgent DESC, sequence",
            [PENDING],
        )
        for row_id, sequence, urgent, payload in cursor:
            if row_id in exclude_ids:
                continue
            rows.append(OutboxRow(row_id, sequence, bool(urgent), payload))
            if len(rows) >= limit:
                break
        cursor.close()
        return rows

    def mark_sent(self, row_ids: Iterable[int]) -> None:
        """Record when rows were first handed to the broker connection (for the crew terminal)."""
        ids = list(row_ids)
        if not ids:
            return
        now = _now()
        self._set_synchronous("normal")  # only a display time: no flush needed
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.conn.executemany(
                "UPDATE results SET first_sent_at = ? WHERE id = ? AND first_sent_at IS NULL",
                [(now, row_id) for row_id in ids],
            )
        self._set_synchronous("full")

    def mark_delivered(self, row_ids: list[int]) -> None:
        if not row_ids:
            return
        now = _now()
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.conn.executemany(
                "UPDATE results SET state = ?, delivered_at = ? WHERE id = ? AND state = ?",
                [(DELIVERED, now, row_id, PENDING) for row_id in row_ids],
            )
        self._unsynced = False

    def stats(self) -> OutboxStats:
        counts = {
            (state, bool(urgent)): count
            for state, urgent, count in self.db.execute(
                "SELECT state, urgent, count(*) FROM results GROUP BY state, urgent"
            ).fetchall()
        }
        rejected = self.db.execute("SELECT count(*) FROM rejected_frames").fetchone()[0]
        return OutboxStats(
            pending=counts.get((PENDING, True), 0) + counts.get((PENDING, False), 0),
            pending_urgent=counts.get((PENDING, True), 0),
            delivered=counts.get((DELIVERED, True), 0) + counts.get((DELIVERED, False), 0),
            frames_seen=self._counter("frames_seen") + rejected,
            frames_rejected=rejected,
            next_sequence=self._counter("next_sequence"),
            rows=self._rows,
            max_rows=self.max_rows,
            evicted=self._counter("evicted"),
        )

    # --- what the crew terminal reads -------------------------------------------------------------

    def record_link(self, state: str, detail: str = "", at: datetime | None = None) -> None:
        """Record a connectivity change: `online` or `offline`, at `at` (now when None)."""
        when = (at or datetime.now(UTC)).isoformat()
        with self.db.conn:
            self.db.execute(
                "INSERT INTO link_events(at, state, detail) VALUES (?, ?, ?)", [when, state, detail]
            )
        self.set_state("link", state)

    def record_feedback(
        self, alert_id: str, incident_id: str, hospital_id: str, state: str, at: datetime, detail: str | None
    ) -> None:
        """Keep what the hub reported about a pre-alert (queued, delivered, acknowledged, ...)."""
        with self.db.conn:
            self.db.execute(
                "INSERT INTO feedback(alert_id, incident_id, hospital_id, state, at, received_at, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [alert_id, incident_id, hospital_id, state, at.isoformat(), _now(), detail],
            )

    def add_warning(self, code: str, text: str) -> None:
        """Keep a warning for the crew until someone acknowledges it."""
        with self.db.conn:
            self.db.execute("INSERT INTO warnings(at, code, text) VALUES (?, ?, ?)", [_now(), code, text])

    def set_state(self, key: str, value: object) -> None:
        """Publish one value of the agent's state (JSON) for readers of the outbox file."""
        with self.db.conn:
            self.db.execute(
                "INSERT INTO state(key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                [key, json.dumps(value, default=str), _now()],
            )

    def get_state(self, key: str) -> Any:
        """Return one value of the agent's state, or None if it was never set."""
        row = self.db.execute("SELECT value FROM state WHERE key = ?", [key]).fetchone()
        return None if row is None else json.loads(row[0])

    def add_command(self, kind: str, payload: dict[str, Any] | None = None) -> int:
        """Queue a command for the agent (the crew terminal's side); return its id."""
        with self.db.conn:
            cursor = self.db.execute(
                "INSERT INTO commands(created_at, kind, payload, state) VALUES (?, ?, ?, ?)",
                [_now(), kind, json.dumps(payload or {}), COMMAND_NEW],
            )
        return int(cursor.lastrowid or 0)

    def take_commands(self) -> list[Command]:
        """Return the commands not yet handled, oldest first."""
        rows = self.db.execute(
            "SELECT id, kind, payload, created_at FROM commands WHERE state = ? ORDER BY id", [COMMAND_NEW]
        ).fetchall()
        commands = []
        for command_id, kind, payload, created_at in rows:
            try:
                parsed = json.loads(payload or "{}")
            except json.JSONDecodeError:
                parsed = {"unreadable": payload}
            try:
                created = datetime.fromisoformat(created_at)
            except (TypeError, ValueError):
                created = datetime.now(UTC)
            if created.tzinfo is None:
                created = created.replace(tzinfo=UTC)
            commands.append(Command(command_id, kind, parsed if isinstance(parsed, dict) else {}, created))
        return commands

    def finish_command(self, command_id: int, ok: bool, detail: str = "") -> None:
        with self.db.conn:
            self.db.execute(
                "UPDATE commands SET state = ?, handled_at = ?, detail = ? WHERE id = ?",
                [COMMAND_DONE if ok else COMMAND_FAILED, _now(), detail, command_id],
            )

    def close(self) -> None:
        self.db.conn.close()
