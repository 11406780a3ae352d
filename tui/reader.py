"""Read the edge agent's outbox file for the terminal, and write the crew's commands and acknowledgements.

The terminal shares the file with a running agent (WAL mode), so it never keeps a write transaction
open: each poll reads inside one short read transaction, which gives a consistent view of every
table, and each write is one autocommit statement. The file is opened, never created: a wrong path
must not leave an empty database behind for the agent to find.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from protocol import TriageResult
from protocol.messages import describe_validation_error
from tui.journey import FeedbackEvent, Journey, ResultRow, alert_id_of, belongs_to, build_journey

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

LINK_ONLINE = "online"
LINK_OFFLINE = "offline"
COMMAND_NEW = "new"
COMMAND_DONE = "done"
COMMAND_FAILED = "failed"
# SQLite waits this long for the agent's write lock before giving up.
BUSY_TIMEOUT_S = 5.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class OutboxDepth:
    pending: int = 0
    pending_urgent: int = 0
    rows: int = 0
    max_rows: int | None = None
    evicted: int = 0


@dataclass(frozen=True)
class WarningNote:
    id: int
    at: datetime | None
    code: str
    text: str


@dataclass(frozen=True)
class CommandStatus:
    id: int
    kind: str
    payload: dict[str, Any]
    state: str
    created_at: datetime | None
    handled_at: datetime | None
    detail: str | None


@dataclass(frozen=True)
class AgentView:
    """Everything the terminal shows, read from the outbox in one transaction."""

    outbox_path: Path
    read_at: datetime = field(compare=False)  # views that differ only in when they were read are equal
    problem: str | None = None  # why the outbox could not be read; the rest is then empty
    device_id: str | None = None
    destination_hospital_id: str | None = None
    scorer_mode: str | None = None
    model_version: str | None = None
    current_incident_id: str | None = None
    link: str | None = None  # online, offline, or None before the agent's first connection attempt
    link_since: datetime | None = None
    link_detail: str | None = None
    depth: OutboxDepth = field(default_factory=OutboxDepth)
    incident_id: str | None = None  # the incident on screen
    result: TriageResult | None = None  # its newest result
    result_problem: str | None = None
    last_result_at: datetime | None = None  # newest result of any incident
    journeys: tuple[Journey, ...] = ()
    warnings: tuple[WarningNote, ...] = ()
    command: CommandStatus | None = None  # the newest command

    @property
    def offline(self) -> bool:
        return self.link != LINK_ONLINE


def connect(path: Path) -> sqlite3.Connection:
    """Open an existing outbox file; raise sqlite3.OperationalError if there is none."""
    uri = f"{path.resolve().as_uri()}?mode=rw"
    connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    return connection


class OutboxReader:
    """Reads `AgentView`s from one outbox file; use from one thread (the terminal's poll worker)."""

    def __init__(self, path: str | Path, *, clock: Clock = utc_now, journey_rows: int = 8):
        self.path = Path(path)
        self.clock = clock
        self.journey_rows = journey_rows
        self._db: sqlite3.Connection | None = None
        self._parsed: tuple[int, TriageResult | None, str | None] | None = None  # row id, result, problem
        self._last_problem: str | None = None

    def read(self) -> AgentView:
        """Read the agent's state now; a missing or unreadable file gives a view with `problem` set."""
        now = self.clock()
        if not self.path.is_file():
            return self._problem(now, f"waiting for the edge agent's outbox at {self.path}")
        try:
            if self._db is None:
                self._db = connect(self.path)
                # Reads only: the terminal's writes go through their own short-lived connections.
                self._db.execute("PRAGMA query_only = ON")
            return self._read(self._db, now)
        except sqlite3.Error as exc:
            self.close()
            return self._problem(now, f"cannot read the outbox {self.path}: {exc}")

    def _problem(self, now: datetime, problem: str) -> AgentView:
        if problem != self._last_problem:
            log.warning("%s", problem)
            self._last_problem = problem
        return AgentView(outbox_path=self.path, read_at=now, problem=problem)

    def _read(self, db: sqlite3.Connection, now: datetime) -> AgentView:
        db.execute("BEGIN")
        try:
            state = self._state(db)
            link = db.execute("SELECT at, state, detail FROM link_events ORDER BY id DESC LIMIT 1").fetchone()
            depth = self._depth(db, state)
            newest = db.execute(
                "SELECT incident_id, created_at FROM results ORDER BY sequence DESC LIMIT 1"
            ).fetchone()
            incident_id = state.get("current_incident_id") or (newest[0] if newest else None)
            result, result_problem = self._result(db, incident_id)
            device_id = state.get("device_id") or (result.device_id if result else None)
            journeys = self._journeys(db, device_id)
            warnings = tuple(
                WarningNote(row[0], _time(row[1]), row[2] or "", row[3] or "")
                for row in db.execute(
                    "SELECT id, at, code, text FROM warnings WHERE acknowledged_at IS NULL ORDER BY id"
                )
            )
            command = self._newest_command(db)
        finally:
            db.execute("COMMIT")
        self._last_problem = None
        return AgentView(
            outbox_path=self.path,
            read_at=now,
            device_id=device_id,
            destination_hospital_id=state.get("destination_hospital_id"),
            scorer_mode=state.get("scorer_mode"),
            model_version=state.get("model_version"),
            current_incident_id=state.get("current_incident_id"),
            link=link[1] if link else None,
            link_since=_time(link[0]) if link else None,
            link_detail=(link[2] or None) if link else None,
            depth=depth,
            incident_id=incident_id,
            result=result,
            result_problem=result_problem,
            last_result_at=_time(newest[1]) if newest else None,
            journeys=journeys,
            warnings=warnings,
            command=command,
        )

    def _state(self, db: sqlite3.Connection) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for key, value in db.execute("SELECT key, value FROM state"):
            try:
                state[key] = json.loads(value) if value is not None else None
            except json.JSONDecodeError:
                state[key] = value
        return state

    def _depth(self, db: sqlite3.Connection, state: dict[str, Any]) -> OutboxDepth:
        pending, urgent = db.execute(
            "SELECT count(*), coalesce(sum(urgent), 0) FROM results WHERE state = 'pending'"
        ).fetchone()
        rows = db.execute("SELECT count(*) FROM results").fetchone()[0]
        evicted = db.execute("SELECT value FROM counters WHERE name = 'evicted'").fetchone()
        max_rows = state.get("max_rows")
        return OutboxDepth(
            pending=int(pending),
            pending_urgent=int(urgent),
            rows=int(rows),
            max_rows=int(max_rows) if isinstance(max_rows, int) else None,
            evicted=int(evicted[0]) if evicted else 0,
        )

    def _result(
        self, db: sqlite3.Connection, incident_id: str | None
    ) -> tuple[TriageResult | None, str | None]:
        if incident_id is None:
            return None, None
        row = db.execute(
            "SELECT id, sequence, payload FROM results WHERE incident_id = ? ORDER BY sequence DESC LIMIT 1",
            [incident_id],
        ).fetchone()
        if row is None:
            return None, None
        row_id, sequence, payload = row
        # A result is parsed once; the poll reads the same newest row many times.
        if self._parsed is None or self._parsed[0] != row_id:
            try:
                self._parsed = (row_id, TriageResult.model_validate_json(payload), None)
            except ValidationError as exc:
                problem = f"result {sequence} is unreadable: {describe_validation_error('TriageResult', exc)}"
                log.error("%s", problem)
                self._parsed = (row_id, None, problem)
        return self._parsed[1], self._parsed[2]

    def _journeys(self, db: sqlite3.Connection, device_id: str | None) -> tuple[Journey, ...]:
        rows = db.execute(
            "SELECT sequence, incident_id, created_at, acuity, urgent, "
            "coalesce(json_extract(payload, '$.crew_prealert'), 0), first_sent_at, "
            "CASE WHEN state = 'delivered' THEN coalesce(delivered_at, created_at) END "
            "FROM results ORDER BY sequence DESC LIMIT ?",
            [self.journey_rows],
        ).fetchall()
        journeys = []
        for sequence, incident, created, acuity, urgent, prealert, sent, confirmed in rows:
            row = ResultRow(
                sequence=sequence,
                incident_id=incident,
                created_at=_time(created) or self.clock(),
                acuity=int(acuity),
                urgent=bool(urgent),
                crew_prealert=bool(prealert),
                sent_at=_time(sent),
                confirmed_at=_time(confirmed),
            )
            feedback = self._feedback(db, device_id, sequence) if device_id else []
            journeys.append(build_journey(row, feedback))
        return tuple(journeys)

    def _feedback(self, db: sqlite3.Connection, device_id: str, sequence: int) -> list[FeedbackEvent]:
        own = alert_id_of(device_id, sequence)
        escalation = f"{own}-esc-"
        # A range on alert_id uses the index on it; belongs_to() then checks each row exactly.
        rows = db.execute(
            "SELECT alert_id, hospital_id, state, at, detail FROM feedback "
            "WHERE alert_id = ? OR (alert_id >= ? AND alert_id < ?) ORDER BY id",
            [own, escalation, escalation + "\U0010ffff"],
        ).fetchall()
        events = []
        for alert_id, hospital_id, state, at, detail in rows:
            when = _time(at)
            if when is None or not belongs_to(alert_id, own):
                continue
            events.append(FeedbackEvent(alert_id, hospital_id or "?", state or "?", when, detail or None))
        return events

    def _newest_command(self, db: sqlite3.Connection) -> CommandStatus | None:
        row = db.execute(
            "SELECT id, kind, payload, state, created_at, handled_at, detail FROM commands ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        try:
            payload = json.loads(row[2] or "{}")
        except json.JSONDecodeError:
            payload = {}
        return CommandStatus(
            id=row[0],
            kind=row[1] or "",
            payload=payload if isinstance(payload, dict) else {},
            state=row[3] or "",
            created_at=_time(row[4]),
            handled_at=_time(row[5]),
            detail=row[6] or None,
        )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


# --- the crew's writes: one statement each, on a connection of their own --------------------------


def queue_command(path: Path, kind: str, payload: dict[str, Any], at: datetime) -> int:
    """Queue a command for the agent, as `Outbox.add_command` does; return its id."""
    db = connect(path)
    try:
        cursor = db.execute(
            "INSERT INTO commands(created_at, kind, payload, state) VALUES (?, ?, ?, ?)",
            [at.isoformat(), kind, json.dumps(payload), COMMAND_NEW],
        )
        return int(cursor.lastrowid or 0)
    finally:
        db.close()


def acknowledge_warning(path: Path, warning_id: int, at: datetime) -> bool:
    """Mark a warning acknowledged; False if it was already acknowledged or is gone."""
    db = connect(path)
    try:
        cursor = db.execute(
            "UPDATE warnings SET acknowledged_at = ? WHERE id = ? AND acknowledged_at IS NULL",
            [at.isoformat(), warning_id],
        )
        return cursor.rowcount == 1
    finally:
        db.close()
