"""Reconcile what the ambulances sent with what the hub stored and the hospitals received.

Shared by the fault tests and `make soak`. Order is checked per device within each priority class.
After a reconnect an agent sends its urgent backlog first, on purpose, so an urgent result may
overtake older routine ones. Within a class the hub must store results in sequence order.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protocol import URGENT_ACUITY_MAX


@dataclass(frozen=True)
class HubRow:
    id: int
    device_id: str
    sequence: int
    urgent: bool  # the edge's priority class: the final edge level is urgent
    received_at: datetime


@dataclass(frozen=True)
class EdgeRow:
    device_id: str
    sequence: int
    urgent: bool
    delivered: bool
    created_at: datetime


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _time(text: str) -> datetime:
    """Parse a stored time; SQLite keeps the hub's times without a zone, and they are UTC."""
    parsed = datetime.fromisoformat(text.replace(" ", "T"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def hub_rows(store_path: Path) -> list[HubRow]:
    """Return the hub's stored results in the order it stored them."""
    with _read_only(store_path) as db:
        rows = db.execute(
            "SELECT id, device_id, sequence, edge_acuity, received_at FROM triage_results ORDER BY id"
        ).fetchall()
    return [
        HubRow(row_id, device, sequence, acuity <= URGENT_ACUITY_MAX, _time(received))
        for row_id, device, sequence, acuity, received in rows
    ]


def edge_rows(outbox_path: Path, device_id: str) -> list[EdgeRow]:
    with _read_only(outbox_path) as db:
        rows = db.execute(
            "SELECT sequence, urgent, state, created_at FROM results ORDER BY sequence"
        ).fetchall()
    return [
        EdgeRow(device_id, sequence, bool(urgent), state == "delivered", _time(created))
        for sequence, urgent, state, created in rows
    ]


def link_events(outbox_path: Path) -> list[tuple[datetime, str]]:
    with _read_only(outbox_path) as db:
        rows = db.execute("SELECT at, state FROM link_events ORDER BY id").fetchall()
    return [(_time(at), state) for at, state in rows]


def out_of_order(rows: Iterable[HubRow]) -> int:
    """Count stored results whose sequence is below one stored earlier from the same device and class."""
    highest: dict[tuple[str, bool], int] = {}
    count = 0
    for row in rows:
        key = (row.device_id, row.urgent)
        if row.sequence < highest.get(key, -1):
            count += 1
        highest[key] = max(highest.get(key, -1), row.sequence)
    return count


def _key(message: dict) -> tuple[str, str, int]:
    return (message["kind"], message["alert_id"], message.get("attempt", 1))


def alert_copies(messages: Iterable[dict]) -> int:
    """Count messages a hospital received again: the same kind, alert id and attempt.

    The hub publishes at least once: after a broker restart or a hub crash it re-publishes what
    the broker never confirmed, so a copy can arrive. A re-send after a missing acknowledgement is
    a new attempt and is no copy.
    """
    seen = Counter(_key(message) for message in messages)
    return sum(count - 1 for count in seen.values() if count > 1)


def duplicate_alerts(messages: Iterable[dict]) -> int:
    """Count alerts a hospital showed twice: copies the hospital listener failed to recognise by id."""
    shown = Counter(_key(message) for message in messages if not message.get("duplicate"))
    return sum(count - 1 for count in shown.values() if count > 1)


def read_alert_records(path: Path) -> list[dict]:
    """Read a hospital listener's JSON-lines record."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def describe_out_of_order(rows: Iterable[HubRow], limit: int = 5) -> str:
    """Name the first stored results that came after a higher sequence of their device and class."""
    highest: dict[tuple[str, bool], int] = {}
    found = []
    for row in rows:
        key = (row.device_id, row.urgent)
        if row.sequence < highest.get(key, -1):
            kind = "urgent" if row.urgent else "routine"
            found.append(f"{row.device_id} {kind} {row.sequence} stored after {highest[key]} (row {row.id})")
        highest[key] = max(highest.get(key, -1), row.sequence)
    return "; ".join(found[:limit]) or "none"
