"""The hub's store, through SQLAlchemy Core: SQLite by default, PostgreSQL with the same code.

Tables:
- `triage_results`: every result once, unique on (device id, sequence number), which absorbs MQTT
  QoS 1 and AMQP redelivery duplicates;
- `alerts`: one row per pre-alert with its state (pending, delivered, acknowledged, escalated,
  cancelled), attempts and the latest payload;
- `alert_events`: the audit trail of each alert (sent, re-sent, updated, suppressed, acknowledged ...);
- `outbox`: every message the hub must publish (alerts, updates, cancellations, feedback), written in
  the same transaction as the state change behind it and marked sent once the broker confirms it, so
  a hub that crashes in between publishes it after its restart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

log = logging.getLogger(__name__)

metadata = MetaData()

triage_results = Table(
    "triage_results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("incident_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("frame_timestamp", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("edge_acuity", Integer, nullable=False),
    Column("hub_acuity", Integer),
    Column("final_acuity", Integer, nullable=False),
    Column("emergency_type", String(32), nullable=False),
    Column("urgent", Boolean, nullable=False),
    Column("hospital_id", String(64)),
    Column("alert_action", String(16), nullable=False, default="none"),
    Column("edge_model_version", String(64)),
    Column("hub_model_version", String(64)),
    Column("payload", Text, nullable=False),
    Column("hub_scores", Text),
    UniqueConstraint("device_id", "sequence", name="uq_triage_results_device_sequence"),
)

ALERT_PENDING = "pending"  # stored, not yet confirmed by the broker
ALERT_DELIVERED = "delivered"  # confirmed by the broker, waiting for the hospital
ALERT_ACKNOWLEDGED = "acknowledged"
ALERT_ESCALATED = "escalated"  # not acknowledged; the backup hospital was alerted
ALERT_CANCELLED = "cancelled"
OPEN_STATES = (ALERT_PENDING, ALERT_DELIVERED)

alerts = Table(
    "alerts",
    metadata,
    Column("alert_id", String(160), primary_key=True),
    Column("device_id", String(64), nullable=False),
    Column("incident_id", String(64), nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("hospital_id", String(64), nullable=False),
    Column("emergency_type", String(32), nullable=False),
    Column("acuity", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_sent_at", DateTime(timezone=True)),
    Column("acknowledged_at", DateTime(timezone=True)),
    Column("acknowledged_by", String(80)),
    Column("escalated_to", String(160)),
    Column("escalation_of", String(160)),
    Column("eta_minutes", Float),
    Column("payload", Text, nullable=False),
    Index("ix_alerts_incident", "device_id", "incident_id"),
    Index("ix_alerts_hospital_created", "hospital_id", "created_at"),
    Index("ix_alerts_state", "state"),
)

alert_events = Table(
    "alert_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("alert_id", String(160), nullable=False, index=True),
    Column("kind", String(24), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("detail", Text),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("exchange", String(120), nullable=False),
    Column("routing_key", String(255), nullable=False),
    Column("kind", String(24), nullable=False),
    Column("body", Text, nullable=False),
    Column("alert_id", String(160)),
    Column("device_id", String(64)),
    Column("sequence", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    Index("ix_outbox_unsent", "sent_at", "id"),
    Index("ix_outbox_result", "device_id", "sequence"),
)


def utc(value: datetime | None) -> datetime | None:
    """Return `value` as an aware UTC datetime; SQLite hands back naive ones."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    exchange: str
    routing_key: str
    kind: str
    body: str
    alert_id: str | None


@dataclass(frozen=True)
class AlertRow:
    alert_id: str
    device_id: str
    incident_id: str
    sequence: int
    hospital_id: str
    emergency_type: str
    acuity: int
    state: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    last_sent_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    escalated_to: str | None
    escalation_of: str | None
    eta_minutes: float | None
    payload: str

    @classmethod
    def from_row(cls, row: Any) -> AlertRow:
        values = dict(row._mapping)
        for name in ("created_at", "updated_at", "last_sent_at", "acknowledged_at"):
            values[name] = utc(values[name])
        return cls(**values)


def create_store_engine(url: str) -> Engine:
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:  # noqa: ANN001
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    return engine


class Transaction:
    """Writes that must commit together: a batch of results and the alerts and messages they cause."""

    def __init__(self, connection: Connection, now: datetime):
        self.connection = connection
        self.now = now

    def existing_results(self, keys: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        """Return which (device id, sequence) keys are stored already."""
        found: set[tuple[str, int]] = set()
        by_device: dict[str, list[int]] = {}
        for device, sequence in keys:
            by_device.setdefault(device, []).append(sequence)
        for device, sequences in by_device.items():
            rows = self.connection.execute(
                select(triage_results.c.sequence).where(
                    triage_results.c.device_id == device, triage_results.c.sequence.in_(sequences)
                )
            )
            found.update((device, sequence) for (sequence,) in rows)
        return found

    def insert_results(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.connection.execute(
                triage_results.insert(), [{"received_at": self.now, **row} for row in rows]
            )

    def open_alerts(self, incidents: Sequence[tuple[str, str]]) -> list[AlertRow]:
        """Alerts of these (device, incident) pairs that are not cancelled, newest first."""
        if not incidents:
            return []
        condition = or_(
            *(
                and_(alerts.c.device_id == device, alerts.c.incident_id == incident)
                for device, incident in set(incidents)
            )
        )
        rows = self.connection.execute(
            select(alerts)
            .where(condition, alerts.c.state != ALERT_CANCELLED)
            .order_by(alerts.c.created_at.desc())
        )
        return [AlertRow.from_row(row) for row in rows]

    def create_alert(self, values: dict[str, Any]) -> None:
        self.connection.execute(
            alerts.insert().values(
                state=ALERT_PENDING, attempts=0, created_at=self.now, updated_at=self.now, **values
            )
        )

    def update_alert(self, alert_id: str, **values: Any) -> None:
        self.connection.execute(
            update(alerts).where(alerts.c.alert_id == alert_id).values(updated_at=self.now, **values)
        )

    def add_events(self, events: list[tuple[str, str, str | None]]) -> None:
        """Record (alert id, kind, detail) events at this transaction's time."""
        if events:
            self.connection.execute(
                alert_events.insert(),
                [{"alert_id": a, "kind": k, "at": self.now, "detail": d} for a, k, d in events],
            )

    def enqueue(self, messages: list[dict[str, Any]]) -> list[int]:
        """Add messages to publish; return their outbox ids in order."""
        ids = []
        for message in messages:
            result = self.connection.execute(outbox.insert().values(created_at=self.now, **message))
            ids.append(int(result.inserted_primary_key[0]))
        return ids

    def unsent_for_results(
        self, keys: Sequence[tuple[str, int]]
    ) -> list[tuple[OutboxMessage, tuple[str, int]]]:
        """Unsent messages caused by these results, with their cause, for a redelivery to wait on."""
        if not keys:
            return []
        condition = or_(*(and_(outbox.c.device_id == d, outbox.c.sequence == s) for d, s in set(keys)))
        rows = self.connection.execute(select(outbox).where(condition, outbox.c.sent_at.is_(None)))
        return [(_outbox_message(row), (row.device_id, row.sequence)) for row in rows]


def _outbox_message(row: Any) -> OutboxMessage:
    return OutboxMessage(row.id, row.exchange, row.routing_key, row.kind, row.body, row.alert_id)


class HubStore:
    def __init__(self, url: str):
        self.engine = create_store_engine(url)
        metadata.create_all(self.engine)
        log.info("hub store ready: %s", self.engine.url.render_as_string(hide_password=True))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self, now: datetime | None = None) -> Iterator[Transaction]:
        with self.engine.begin() as connection:
            yield Transaction(connection, now or datetime.now(UTC))

    # --- outbox ---------------------------------------------------------------------------------

    def unsent(
        self, limit: int = 1000, exclude: set[int] | frozenset[int] = frozenset()
    ) -> list[OutboxMessage]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(outbox)
                .where(outbox.c.sent_at.is_(None))
                .order_by(outbox.c.id)
                .limit(limit + len(exclude))
            )
            return [message for message in map(_outbox_message, rows) if message.id not in exclude][:limit]

    def mark_sent(self, outbox_ids: Sequence[int], now: datetime | None = None) -> list[str]:
        """Mark messages confirmed by the broker; pending alerts among them become delivered.

        Returns the ids of alerts that became delivered by this call.
        """
        if not outbox_ids:
            return []
        now = now or datetime.now(UTC)
        with self.engine.begin() as connection:
            connection.execute(update(outbox).where(outbox.c.id.in_(outbox_ids)).values(sent_at=now))
            alert_ids = [
                alert_id
                for (alert_id,) in connection.execute(
                    select(outbox.c.alert_id).where(
                        outbox.c.id.in_(outbox_ids),
                        outbox.c.kind == "hospital_alert",
                        outbox.c.alert_id.is_not(None),
                    )
                )
            ]
            if not alert_ids:
                return []
            delivered = [
                alert_id
                for (alert_id,) in connection.execute(
                    select(alerts.c.alert_id).where(
                        alerts.c.alert_id.in_(alert_ids), alerts.c.state == ALERT_PENDING
                    )
                )
            ]
            connection.execute(
                update(alerts)
                .where(alerts.c.alert_id.in_(alert_ids), alerts.c.state.in_(OPEN_STATES))
                .values(
                    state=ALERT_DELIVERED, last_sent_at=now, attempts=alerts.c.attempts + 1, updated_at=now
                )
            )
            if delivered:
                connection.execute(
                    alert_events.insert(),
                    [{"alert_id": a, "kind": "delivered", "at": now, "detail": None} for a in delivered],
                )
        return delivered

    # --- alerts ---------------------------------------------------------------------------------

    def alert(self, alert_id: str) -> AlertRow | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(alerts).where(alerts.c.alert_id == alert_id)).first()
        return None if row is None else AlertRow.from_row(row)

    def overdue(self, now: datetime, ack_timeout_s: float) -> list[AlertRow]:
        """Delivered alerts whose last delivery is older than the acknowledgement timeout."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(alerts).where(alerts.c.state == ALERT_DELIVERED, alerts.c.last_sent_at.is_not(None))
            )
            found = [AlertRow.from_row(row) for row in rows]
        return [row for row in found if (now - row.last_sent_at).total_seconds() >= ack_timeout_s]  # type: ignore[operator]

    def hospital_alerts(self, hospital_id: str, limit: int = 50) -> list[AlertRow]:
        """The hospital's most recent alerts, newest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(alerts)
                .where(alerts.c.hospital_id == hospital_id)
                .order_by(alerts.c.created_at.desc())
                .limit(limit)
            )
            return [AlertRow.from_row(row) for row in rows]

    def events(self, alert_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(alert_events).where(alert_events.c.alert_id == alert_id).order_by(alert_events.c.id)
            )
            return [{"kind": row.kind, "at": utc(row.at), "detail": row.detail} for row in rows]

    # --- reporting ------------------------------------------------------------------------------

    def result_keys(self) -> set[tuple[str, int]]:
        """Return every stored (device id, sequence number)."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(triage_results.c.device_id, triage_results.c.sequence))
            return {(device, sequence) for device, sequence in rows}

    def result_order_violations(self) -> int:
        """Count results stored before a lower sequence number of the same device."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(triage_results.c.device_id, triage_results.c.sequence).order_by(triage_results.c.id)
            )
            highest: dict[str, int] = {}
            violations = 0
            for device, sequence in rows:
                if sequence < highest.get(device, -1):
                    violations += 1
                highest[device] = max(highest.get(device, -1), sequence)
            return violations

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            results = connection.execute(select(func.count()).select_from(triage_results)).scalar_one()
            states = dict(
                connection.execute(select(alerts.c.state, func.count()).group_by(alerts.c.state)).all()
            )
            unsent = connection.execute(
                select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
            ).scalar_one()
        return {
            "results": results,
            "outbox_unsent": unsent,
            **{f"alerts_{state}": n for state, n in states.items()},
        }

    def ping(self) -> bool:
        """Whether the database answers a trivial query."""
        try:
            with self.engine.connect() as connection:
                connection.execute(select(1))
            return True
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    def close(self) -> None:
        self.engine.dispose()


def payload_dict(row: AlertRow) -> dict[str, Any]:
    return json.loads(row.payload)


__all__ = [
    "ALERT_ACKNOWLEDGED",
    "ALERT_CANCELLED",
    "ALERT_DELIVERED",
    "ALERT_ESCALATED",
    "ALERT_PENDING",
    "AlertRow",
    "HubStore",
    "IntegrityError",
    "OutboxMessage",
    "Transaction",
    "utc",
]
