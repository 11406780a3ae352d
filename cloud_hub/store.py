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
from datetime import UTC, datetime, timedelta
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
    bindparam,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from protocol import HospitalAlert

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
    Index("ix_alerts_incident", "incident_id", "device_id"),
    Index("ix_alerts_hospital_created", "hospital_id", "created_at"),
    Index("ix_alerts_state", "state", "last_sent_at"),
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


# The statements of the per-batch path, built once. SQLAlchemy caches the compiled form of a statement
# object, so reusing one skips building it and computing its cache key on every batch. Lists go in
# through expanding parameters.
_EXISTING_RESULTS = select(triage_results.c.device_id, triage_results.c.sequence).where(
    triage_results.c.device_id.in_(bindparam("devices", expanding=True)),
    triage_results.c.sequence.in_(bindparam("sequences", expanding=True)),
)
_OPEN_ALERTS = (
    select(alerts)
    .where(
        alerts.c.incident_id.in_(bindparam("incidents", expanding=True)), alerts.c.state != ALERT_CANCELLED
    )
    .order_by(alerts.c.created_at.desc())
)
_NEWEST_OUTBOX_IDS = select(outbox.c.id).order_by(outbox.c.id.desc()).limit(bindparam("count"))
_MARK_OUTBOX_SENT = (
    update(outbox).where(outbox.c.id.in_(bindparam("ids", expanding=True))).values(sent_at=bindparam("now"))
)
_SENT_ALERT_IDS = select(outbox.c.alert_id).where(
    outbox.c.id.in_(bindparam("ids", expanding=True)),
    outbox.c.kind == "hospital_alert",
    outbox.c.alert_id.is_not(None),
)
_PENDING_ALERT_IDS = select(alerts.c.alert_id).where(
    alerts.c.alert_id.in_(bindparam("alert_ids", expanding=True)), alerts.c.state == ALERT_PENDING
)
_MARK_ALERTS_DELIVERED = (
    update(alerts)
    .where(alerts.c.alert_id.in_(bindparam("alert_ids", expanding=True)), alerts.c.state.in_(OPEN_STATES))
    .values(
        state=ALERT_DELIVERED,
        last_sent_at=bindparam("now"),
        attempts=alerts.c.attempts + 1,
        updated_at=bindparam("now"),
    )
)
_ALERTS_BY_ID = select(alerts).where(alerts.c.alert_id.in_(bindparam("alert_ids", expanding=True)))


class Transaction:
    """Writes that must commit together: a batch of results and the alerts and messages they cause."""

    def __init__(self, connection: Connection, now: datetime):
        self.connection = connection
        self.now = now
        self._new_alerts: list[dict[str, Any]] = []  # written in one statement, before anything reads them

    def existing_results(self, keys: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        """Return which (device id, sequence) keys are stored already."""
        wanted = set(keys)
        if not wanted:
            return set()
        # One statement for the batch uses the unique index, and Python keeps the exact pairs.
        rows = self.connection.execute(
            _EXISTING_RESULTS,
            {
                "devices": sorted({device for device, _ in wanted}),
                "sequences": sorted({sequence for _, sequence in wanted}),
            },
        )
        return {(device, sequence) for device, sequence in rows if (device, sequence) in wanted}

    def insert_results(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.connection.execute(
                triage_results.insert(), [{"received_at": self.now, **row} for row in rows]
            )

    def open_alerts(self, incidents: Sequence[tuple[str, str]]) -> list[AlertRow]:
        """Alerts of these (device, incident) pairs that are not cancelled, newest first."""
        self.flush_alerts()
        wanted = set(incidents)
        if not wanted:
            return []
        # One expanding IN on the indexed incident id, then the exact pairs in Python: a long OR of
        # pairs costs more to compile than to run.
        rows = self.connection.execute(
            _OPEN_ALERTS, {"incidents": sorted({incident for _, incident in wanted})}
        )
        return [AlertRow.from_row(row) for row in rows if (row.device_id, row.incident_id) in wanted]

    def create_alert(self, values: dict[str, Any]) -> None:
        """Queue a new alert row (see `alert_values`); it is written with the batch's other rows."""
        self._new_alerts.append(
            {"state": ALERT_PENDING, "attempts": 0, "created_at": self.now, "updated_at": self.now, **values}
        )

    def flush_alerts(self) -> None:
        if self._new_alerts:
            self.connection.execute(alerts.insert(), self._new_alerts)
            self._new_alerts = []

    def update_alert(self, alert_id: str, **values: Any) -> None:
        self.flush_alerts()
        self.connection.execute(
            update(alerts).where(alerts.c.alert_id == alert_id).values(updated_at=self.now, **values)
        )

    def add_events(self, events: list[tuple[str, str, str | None]]) -> None:
        """Record (alert id, kind, detail) events at this transaction's time."""
        self.flush_alerts()
        if events:
            self.connection.execute(
                alert_events.insert(),
                [{"alert_id": a, "kind": k, "at": self.now, "detail": d} for a, k, d in events],
            )

    def enqueue(self, messages: list[dict[str, Any]]) -> list[int]:
        """Add messages to publish in one statement; return their outbox ids in order."""
        self.flush_alerts()
        if not messages:
            return []
        rows = [{"created_at": self.now, **message} for message in messages]
        if self.connection.dialect.name != "sqlite":
            statement = outbox.insert().returning(outbox.c.id, sort_by_parameter_order=True)
            return [int(row.id) for row in self.connection.execute(statement, rows)]
        # SQLAlchemy runs RETURNING row by row on SQLite. One executemany is far faster, and the ids
        # it assigns are the newest ones: this transaction holds SQLite's only write lock until commit.
        self.connection.execute(outbox.insert(), rows)
        newest = self.connection.execute(_NEWEST_OUTBOX_IDS, {"count": len(rows)})
        return sorted(int(row.id) for row in newest)

    def mark_sent(self, outbox_ids: Sequence[int]) -> list[AlertRow]:
        """Mark messages confirmed by the broker; pending alerts among them become delivered.

        Returns the alerts that became delivered by this call, as they are now.
        """
        if not outbox_ids:
            return []
        now = self.now
        ids = list(outbox_ids)
        self.flush_alerts()
        self.connection.execute(_MARK_OUTBOX_SENT, {"ids": ids, "now": now})
        alert_ids = [alert_id for (alert_id,) in self.connection.execute(_SENT_ALERT_IDS, {"ids": ids})]
        if not alert_ids:
            return []
        delivered = [
            alert_id for (alert_id,) in self.connection.execute(_PENDING_ALERT_IDS, {"alert_ids": alert_ids})
        ]
        self.connection.execute(_MARK_ALERTS_DELIVERED, {"alert_ids": alert_ids, "now": now})
        if not delivered:
            return []
        self.add_events([(alert_id, "delivered", None) for alert_id in delivered])
        rows = self.connection.execute(_ALERTS_BY_ID, {"alert_ids": delivered})
        return [AlertRow.from_row(row) for row in rows]

    def unsent_for_results(
        self, keys: Sequence[tuple[str, int]]
    ) -> list[tuple[OutboxMessage, tuple[str, int]]]:
        """Unsent messages caused by these results, with their cause, for a redelivery to wait on."""
        wanted = set(keys)
        if not wanted:
            return []
        rows = self.connection.execute(
            select(outbox).where(
                outbox.c.device_id.in_(sorted({device for device, _ in wanted})),
                outbox.c.sequence.in_(sorted({sequence for _, sequence in wanted})),
                outbox.c.sent_at.is_(None),
            )
        )
        return [
            (_outbox_message(row), (row.device_id, row.sequence))
            for row in rows
            if (row.device_id, row.sequence) in wanted
        ]


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
        """Run writes in one transaction, committed on success; buffered alert rows are written first."""
        with self.engine.begin() as connection:
            tx = Transaction(connection, now or datetime.now(UTC))
            yield tx
            tx.flush_alerts()

    # --- outbox ---------------------------------------------------------------------------------

    def unsent(
        self,
        limit: int = 1000,
        exclude: set[int] | frozenset[int] = frozenset(),
        created_before: datetime | None = None,
    ) -> list[OutboxMessage]:
        """Messages never confirmed, oldest first, leaving out `exclude` and anything newer than `created_before`."""
        condition = [outbox.c.sent_at.is_(None)]
        if created_before is not None:
            condition.append(outbox.c.created_at < created_before)
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(outbox).where(*condition).order_by(outbox.c.id).limit(limit + len(exclude))
            )
            return [message for message in map(_outbox_message, rows) if message.id not in exclude][:limit]

    def mark_sent(self, outbox_ids: Sequence[int], now: datetime | None = None) -> list[str]:
        """Mark messages confirmed by the broker in their own transaction; see Transaction.mark_sent."""
        with self.transaction(now) as tx:
            return [row.alert_id for row in tx.mark_sent(outbox_ids)]

    # --- alerts ---------------------------------------------------------------------------------

    def alert(self, alert_id: str) -> AlertRow | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(alerts).where(alerts.c.alert_id == alert_id)).first()
        return None if row is None else AlertRow.from_row(row)

    def alerts(self, alert_ids: Sequence[str]) -> list[AlertRow]:
        if not alert_ids:
            return []
        with self.engine.connect() as connection:
            rows = connection.execute(select(alerts).where(alerts.c.alert_id.in_(list(alert_ids))))
            return [AlertRow.from_row(row) for row in rows]

    def overdue(self, now: datetime, ack_timeout_s: float) -> list[AlertRow]:
        """Delivered alerts whose last delivery is older than the acknowledgement timeout."""
        cutoff = now - timedelta(seconds=ack_timeout_s)
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(alerts).where(alerts.c.state == ALERT_DELIVERED, alerts.c.last_sent_at <= cutoff)
            )
            return [AlertRow.from_row(row) for row in rows]

    def hospital_alerts(self, hospital_id: str, limit: int = 50) -> list[AlertRow]:
        """Return the hospital's most recent alerts, newest first."""
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
        """Return whether the database responds to a trivial query."""
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


def alert_values(
    alert: HospitalAlert, escalation_of: str | None = None, payload: str | None = None
) -> dict[str, Any]:
    """Return the `alerts` columns of a new alert, for `create_alert`.

    `payload` is the alert's JSON when the caller already serialised it.
    """
    return {
        "alert_id": alert.alert_id,
        "device_id": alert.device_id,
        "incident_id": alert.incident_id,
        "sequence": alert.sequence,
        "hospital_id": alert.hospital_id,
        "emergency_type": alert.emergency_type.value,
        "acuity": alert.acuity,
        "eta_minutes": alert.eta_minutes,
        "escalation_of": escalation_of,
        "payload": payload if payload is not None else alert.model_dump_json(),
    }
