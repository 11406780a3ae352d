"""The hub's store: triage results and hospital alerts, through SQLAlchemy Core.

SQLite is the default; PostgreSQL takes the same code with a `postgresql+psycopg://` URL. A result
is unique on (device id, sequence number), which absorbs MQTT QoS 1 and AMQP redelivery duplicates.
An alert is stored in the same transaction as its result, as `pending`, and marked `published` once
the broker has confirmed it, so a hub that crashes in between publishes it on redelivery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from protocol import HospitalAlert, Scores, TriageResult

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
    Column("edge_model_version", String(64)),
    Column("hub_model_version", String(64)),
    Column("payload", Text, nullable=False),
    Column("hub_scores", Text),
    UniqueConstraint("device_id", "sequence", name="uq_triage_results_device_sequence"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("alert_id", String(160), primary_key=True),
    Column("device_id", String(64), nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("incident_id", String(64), nullable=False),
    Column("hospital_id", String(64), nullable=False),
    Column("acuity", Integer, nullable=False),
    Column("emergency_type", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),
    Column("published_at", DateTime(timezone=True)),
    Column("payload", Text, nullable=False),
)

ALERT_PENDING = "pending"
ALERT_PUBLISHED = "published"


@dataclass(frozen=True)
class StoreOutcome:
    duplicate: bool  # the result was stored before (a redelivery)
    alert_to_publish: HospitalAlert | None  # stored but not yet confirmed by the broker


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


class HubStore:
    def __init__(self, url: str):
        self.engine = create_store_engine(url)
        metadata.create_all(self.engine)
        log.info("hub store ready: %s", self.engine.url.render_as_string(hide_password=True))

    def store_result(
        self,
        result: TriageResult,
        hub_scores: Scores | None,
        final_acuity: int,
        alert: HospitalAlert | None,
    ) -> StoreOutcome:
        """Store a result and its alert atomically; on a duplicate return any unconfirmed alert."""
        now = datetime.now(UTC)
        row = {
            "device_id": result.device_id,
            "sequence": result.sequence,
            "incident_id": result.incident_id,
            "created_at": result.created_at,
            "frame_timestamp": result.frame_timestamp,
            "received_at": now,
            "edge_acuity": result.acuity,
            "hub_acuity": None if hub_scores is None else hub_scores.model_acuity,
            "final_acuity": final_acuity,
            "emergency_type": (alert.emergency_type if alert else result.emergency_type).value,
            "urgent": alert is not None,
            "edge_model_version": result.scores.model.version if result.scores.model else None,
            "hub_model_version": hub_scores.model.version if hub_scores and hub_scores.model else None,
            "payload": result.model_dump_json(),
            "hub_scores": None if hub_scores is None else hub_scores.model_dump_json(),
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(triage_results.insert().values(**row))
                if alert is not None:
                    connection.execute(
                        alerts.insert().values(
                            alert_id=alert.alert_id,
                            device_id=alert.device_id,
                            sequence=alert.sequence,
                            incident_id=alert.incident_id,
                            hospital_id=alert.hospital_id,
                            acuity=alert.acuity,
                            emergency_type=alert.emergency_type.value,
                            created_at=alert.created_at,
                            state=ALERT_PENDING,
                            payload=alert.model_dump_json(),
                        )
                    )
        except IntegrityError:
            return StoreOutcome(duplicate=True, alert_to_publish=self._pending_alert(result))
        return StoreOutcome(duplicate=False, alert_to_publish=alert)

    def _pending_alert(self, result: TriageResult) -> HospitalAlert | None:
        with self.engine.connect() as connection:
            payload = connection.execute(
                select(alerts.c.payload).where(
                    alerts.c.device_id == result.device_id,
                    alerts.c.sequence == result.sequence,
                    alerts.c.state == ALERT_PENDING,
                )
            ).scalar_one_or_none()
        return None if payload is None else HospitalAlert.model_validate_json(payload)

    def mark_alert_published(self, alert_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(alerts)
                .where(alerts.c.alert_id == alert_id)
                .values(state=ALERT_PUBLISHED, published_at=datetime.now(UTC))
            )

    def result_keys(self) -> set[tuple[str, int]]:
        """Return every stored (device id, sequence number)."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(triage_results.c.device_id, triage_results.c.sequence))
            return {(device, sequence) for device, sequence in rows}

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            results = connection.execute(select(func.count()).select_from(triage_results)).scalar_one()
            alert_rows = dict(
                connection.execute(select(alerts.c.state, func.count()).group_by(alerts.c.state)).all()
            )
        return {
            "results": results,
            "alerts_pending": alert_rows.get(ALERT_PENDING, 0),
            "alerts_published": alert_rows.get(ALERT_PUBLISHED, 0),
        }

    def close(self) -> None:
        self.engine.dispose()
