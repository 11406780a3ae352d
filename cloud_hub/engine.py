"""The hub's processing, apart from the broker: batches of deliveries in, stored state and messages out.

`HubEngine` parses, re-scores, applies the alert policy and writes everything a batch causes in one
transaction, including the messages to publish (the outbox). The AMQP layer publishes them, and acks
each input only once the messages it caused are confirmed. Keeping the engine free of broker code
lets tests drive it directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cloud_hub.config import HubConfig
from cloud_hub.hospitals import HospitalRegistry
from cloud_hub.metrics import HubMetrics
from cloud_hub.policy import Assessment, assess, build_alert, plan
from cloud_hub.scoring import HubScorer
from cloud_hub.store import (
    ALERT_ACKNOWLEDGED,
    ALERT_CANCELLED,
    ALERT_ESCALATED,
    ALERT_PENDING,
    AlertRow,
    HubStore,
    OutboxMessage,
    Transaction,
    alert_values,
)
from models.ecg_strips import decode_strip_png
from models.features import WindowSummary, summarize_window
from protocol import (
    AlertCancellation,
    AlertFeedback,
    AlertUpdate,
    ContractError,
    HospitalAck,
    HospitalAlert,
    IncidentCancel,
    Scores,
    TriageResult,
    parse_message,
)
from protocol.messages import AmbulanceMessage
from protocol.topics import (
    HOSPITAL_EXCHANGE,
    MQTT_EXCHANGE,
    device_id_from_routing_key,
    feedback_routing_key,
    hospital_routing_key,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Delivery:
    tag: int
    routing_key: str
    body: bytes


@dataclass
class BatchOutcome:
    dead_letters: list[tuple[Delivery, str]] = field(default_factory=list)
    requeue: list[Delivery] = field(default_factory=list)
    ack_now: list[Delivery] = field(default_factory=list)
    waiting: dict[int, set[int]] = field(default_factory=dict)  # delivery tag -> outbox ids to confirm
    publish: list[OutboxMessage] = field(default_factory=list)
    confirmed: list[int] = field(default_factory=list)  # broker confirmations recorded with the batch
    stored: int = 0
    duplicates: int = 0


@dataclass
class _Scored:
    delivery: Delivery
    result: TriageResult
    summary: WindowSummary
    scores: Scores | None
    assessment: Assessment


EPHEMERAL_ID = -1  # outbox id of a message published without being stored


class _Writer:
    """Collects the state changes and outgoing messages that one input causes.

    `cause` is the (device id, sequence) of the triage result behind them, if any. Messages to
    hospitals are stored in the outbox, gate the input's acknowledgement and carry the cause, so a
    redelivered result can find the ones the broker never confirmed. Feedback to ambulances is
    published without being stored: a lost one costs the crew one status update, and storing every
    one would double the hub's writes.
    """

    def __init__(self, tx: Transaction, cause: tuple[str, int] | None = None):
        self.tx = tx
        self.cause = cause
        self.events: list[tuple[str, str, str | None]] = []
        self.messages: list[dict] = []
        self.gating: list[int] = []  # indexes into messages that gate the input's acknowledgement
        self.ephemeral: list[OutboxMessage] = []

    def send(
        self, kind: str, exchange: str, routing_key: str, body: str, *, alert_id: str, gates: bool
    ) -> None:
        if kind == "alert_feedback":
            self.ephemeral.append(OutboxMessage(EPHEMERAL_ID, exchange, routing_key, kind, body, alert_id))
            return
        device_id, sequence = self.cause if (gates and self.cause) else (None, None)
        if gates:
            self.gating.append(len(self.messages))
        self.messages.append(
            {
                "kind": kind,
                "exchange": exchange,
                "routing_key": routing_key,
                "body": body,
                "alert_id": alert_id,
                "device_id": device_id,
                "sequence": sequence,
            }  # fmt: skip
        )

    def flush(self) -> tuple[list[int], list[int]]:
        """Write events and messages; return (all outbox ids, ids of the gating messages)."""
        self.tx.add_events(self.events)
        ids = self.tx.enqueue(self.messages)
        return ids, [ids[i] for i in self.gating]


class HubEngine:
    def __init__(
        self,
        config: HubConfig,
        store: HubStore,
        scorer: HubScorer,
        metrics: HubMetrics | None = None,
        clock: Clock = utc_now,
    ):
        self.config = config
        self.store = store
        self.scorer = scorer
        self.metrics = metrics or HubMetrics()
        self.clock = clock
        self.registry = HospitalRegistry(config.hospitals, config.default_hospital_id, config.road_speed_kmh)  # type: ignore[arg-type]

    # --- triage results and incident cancellations ---------------------------------------------

    def process_batch(self, deliveries: Sequence[Delivery], confirmed: Sequence[int] = ()) -> BatchOutcome:
        """Parse, re-score and store a batch of deliveries, with the alerts and messages they cause.

        `confirmed` are outbox ids the broker has confirmed since the last request. They are recorded
        in the batch's transaction, which saves a commit of their own.
        """
        started = time.perf_counter()
        outcome = BatchOutcome()
        results: list[tuple[Delivery, TriageResult, np.ndarray | None]] = []
        cancels: list[tuple[Delivery, IncidentCancel]] = []
        for delivery in deliveries:
            try:
                message = parse_message(AmbulanceMessage, delivery.body)
                topic_device = device_id_from_routing_key(delivery.routing_key)
                if topic_device != message.device_id:
                    raise ContractError(
                        f"device_id {message.device_id!r} in the payload differs from {topic_device!r} in "
                        f"routing key {delivery.routing_key!r}"
                    )
                if isinstance(message, IncidentCancel):
                    cancels.append((delivery, message))
                    self.metrics.messages_in.labels("incident_cancel").inc()
                    continue
                image = None if message.ecg_strip_png is None else decode_strip_png(message.ecg_strip_png)
                results.append((delivery, message, image))
                self.metrics.messages_in.labels("triage_result").inc()
            except (ContractError, ValueError) as exc:
                outcome.dead_letters.append((delivery, str(exc)))
                self.metrics.messages_in.labels("invalid").inc()

        scored = self._score(results)
        try:
            self._store(scored, cancels, outcome, confirmed)
        except IntegrityError as exc:
            # Another hub replica stored one of these results between our check and our insert.
            log.warning("batch of %d raced another writer, requeued: %s", len(deliveries), exc.orig)
            outcome.requeue += [item.delivery for item in scored] + [delivery for delivery, _ in cancels]
            outcome.ack_now, outcome.waiting, outcome.publish = [], {}, []
        except SQLAlchemyError as exc:
            log.error("store failed, %d deliveries requeued: %s", len(scored) + len(cancels), exc)
            outcome.requeue += [item.delivery for item in scored] + [delivery for delivery, _ in cancels]
            outcome.ack_now, outcome.waiting, outcome.publish = [], {}, []
        if deliveries:
            self.metrics.batch_size.observe(len(scored))
            self.metrics.rescore_seconds.observe(time.perf_counter() - started)
        return outcome

    def _score(self, results: list[tuple[Delivery, TriageResult, np.ndarray | None]]) -> list[_Scored]:
        if not results:
            return []
        summaries = [summarize_window(result.window) for _, result, _ in results]
        hub_scores = self.scorer.score(
            summaries, [result.series for _, result, _ in results], [image for _, _, image in results]
        )
        operating_point = self.scorer.operating_point
        return [
            _Scored(delivery, result, summary, scores, assess(result, summary, scores, operating_point))
            for (delivery, result, _), summary, scores in zip(results, summaries, hub_scores, strict=True)
        ]

    def _store(
        self,
        scored: list[_Scored],
        cancels: list[tuple[Delivery, IncidentCancel]],
        outcome: BatchOutcome,
        confirmed: Sequence[int] = (),
    ) -> None:
        now = self.clock()
        with self.store.transaction(now) as tx:
            outcome.publish += self._record_confirmations(tx, confirmed)
            keys = [(item.result.device_id, item.result.sequence) for item in scored]
            existing = tx.existing_results(keys)
            fresh: list[_Scored] = []
            duplicates: list[_Scored] = []
            seen: set[tuple[str, int]] = set()
            for item, key in zip(scored, keys, strict=True):
                if key in existing or key in seen:
                    duplicates.append(item)
                else:
                    fresh.append(item)
                    seen.add(key)

            incidents = [
                (item.result.device_id, item.result.incident_id) for item in fresh if item.assessment.urgent
            ]
            incidents += [(cancel.device_id, cancel.incident_id) for _, cancel in cancels]
            open_by_incident: dict[tuple[str, str], list[AlertRow]] = {}
            for row in tx.open_alerts(incidents):
                open_by_incident.setdefault((row.device_id, row.incident_id), []).append(row)

            rows = []
            per_delivery: list[tuple[Delivery, _Writer]] = []
            for item in fresh:
                writer = _Writer(tx, (item.result.device_id, item.result.sequence))
                rows.append(self._result_row(item, writer, open_by_incident, now))
                per_delivery.append((item.delivery, writer))
            tx.insert_results(rows)
            for delivery, cancel in cancels:
                writer = _Writer(tx)
                self._cancel_incident(
                    cancel, open_by_incident.get((cancel.device_id, cancel.incident_id), []), writer, now
                )
                per_delivery.append((delivery, writer))

            # One statement per table for the whole batch: per-row statements cost more than the model.
            tx.add_events([event for _, writer in per_delivery for event in writer.events])
            ids = tx.enqueue([message for _, writer in per_delivery for message in writer.messages])
            position = 0
            for delivery, writer in per_delivery:
                own = ids[position : position + len(writer.messages)]
                position += len(writer.messages)
                gating = {own[i] for i in writer.gating}
                if gating:
                    outcome.waiting[delivery.tag] = gating
                else:
                    outcome.ack_now.append(delivery)
                outcome.publish += [
                    OutboxMessage(i, m["exchange"], m["routing_key"], m["kind"], m["body"], m["alert_id"])
                    for i, m in zip(own, writer.messages, strict=True)
                ]
                outcome.publish += writer.ephemeral

            # A redelivered result waits for any message it caused that the broker never confirmed.
            unsent = tx.unsent_for_results(
                [(item.result.device_id, item.result.sequence) for item in duplicates]
            )
        outcome.confirmed = list(confirmed)
        self.metrics.results_stored.inc(len(fresh))
        self.metrics.duplicates.inc(len(duplicates))
        outcome.stored, outcome.duplicates = len(fresh), len(duplicates)
        unsent_by_result: dict[tuple[str, int], set[int]] = {}
        for message, cause in unsent:
            outcome.publish.append(message)
            unsent_by_result.setdefault(cause, set()).add(message.id)
        for item in duplicates:
            waiting = unsent_by_result.get((item.result.device_id, item.result.sequence))
            if waiting:
                outcome.waiting[item.delivery.tag] = waiting
            else:
                outcome.ack_now.append(item.delivery)

    def _result_row(
        self,
        item: _Scored,
        writer: _Writer,
        open_by_incident: dict[tuple[str, str], list[AlertRow]],
        now: datetime,
    ) -> dict:
        result, assessment = item.result, item.assessment
        hospital_id = None
        action = "none"
        if assessment.urgent:
            destination = self.registry.choose(
                result.destination_hospital_id, assessment.emergency_type, result.position
            )
            hospital_id = destination.hospital.id
            if result.destination_hospital_id and result.destination_hospital_id not in self.registry:
                log.warning(
                    "result %s/%d names unknown hospital %r; routing to %s (%s)",
                    result.device_id, result.sequence, result.destination_hospital_id, hospital_id, destination.how,
                )  # fmt: skip
            open_alerts = open_by_incident.setdefault((result.device_id, result.incident_id), [])
            decision = plan(
                assessment, result, hospital_id, open_alerts, self.config.suppression_window_s, now
            )
            eta = self.registry.eta_minutes(destination.distance_km)
            for row in decision.cancel:
                self._cancel_alert(row, "the crew chose another destination", writer, now)
                open_alerts.remove(row)
            alert = build_alert(
                result, item.summary, assessment, item.scores, hospital_id, eta_minutes=eta, now=now
            )
            if decision.action == "new":
                action = "alerted"
                self._new_alert(alert, destination.how, writer)
                open_alerts.insert(0, _row_from_alert(alert, now))
            elif decision.action == "update" and decision.alert is not None:
                action = "updated"
                self._update_alert(decision.alert, alert, writer)
                # Later results of the same batch must see the new level.
                open_alerts[open_alerts.index(decision.alert)] = replace(decision.alert, acuity=alert.acuity)
            else:
                action = "suppressed"
                self.metrics.suppressed.inc()
        return {
            "device_id": result.device_id,
            "sequence": result.sequence,
            "incident_id": result.incident_id,
            "created_at": result.created_at,
            "frame_timestamp": result.frame_timestamp,
            "edge_acuity": result.acuity,
            "hub_acuity": assessment.hub_acuity,
            "final_acuity": assessment.acuity,
            "emergency_type": assessment.emergency_type.value,
            "urgent": assessment.urgent,
            "hospital_id": hospital_id,
            "alert_action": action,
            "edge_model_version": result.scores.model.version if result.scores.model else None,
            "hub_model_version": item.scores.model.version if item.scores and item.scores.model else None,
            "payload": item.delivery.body.decode(),
            "hub_scores": None if item.scores is None else item.scores.model_dump_json(),
        }

    def _new_alert(self, alert: HospitalAlert, how: str, writer: _Writer) -> None:
        body = alert.model_dump_json()
        writer.tx.create_alert(alert_values(alert, payload=body))
        writer.events.append((alert.alert_id, "queued", f"to {alert.hospital_id} ({how})"))
        self._send_alert(alert, writer, gates=True, body=body)
        self._feedback(alert.device_id, alert.incident_id, alert.alert_id, alert.hospital_id, "queued", writer,
                       detail=f"KTAS {alert.acuity} {alert.emergency_type.value}, {how}")  # fmt: skip
        self.metrics.alerts.labels("hospital_alert", alert.emergency_type.value).inc()

    def _send_alert(
        self, alert: HospitalAlert, writer: _Writer, gates: bool, body: str | None = None
    ) -> None:
        writer.send("hospital_alert", HOSPITAL_EXCHANGE, hospital_routing_key(alert.hospital_id),
                    body or alert.model_dump_json(), alert_id=alert.alert_id, gates=gates)  # fmt: skip

    def _update_alert(self, row: AlertRow, latest: HospitalAlert, writer: _Writer) -> None:
        current = latest.model_copy(update={"alert_id": row.alert_id, "hospital_id": row.hospital_id})
        update = AlertUpdate(
            **current.model_dump(exclude={"kind", "attempt", "escalated_from"}), previous_acuity=row.acuity
        )
        writer.tx.update_alert(
            row.alert_id,
            acuity=latest.acuity,
            eta_minutes=latest.eta_minutes,
            payload=current.model_dump_json(),
        )
        writer.events.append((row.alert_id, "updated", f"KTAS {row.acuity} -> {latest.acuity}"))
        writer.send("alert_update", HOSPITAL_EXCHANGE, hospital_routing_key(row.hospital_id), update.model_dump_json(),
                    alert_id=row.alert_id, gates=True)  # fmt: skip
        self._feedback(latest.device_id, latest.incident_id, row.alert_id, row.hospital_id, "updated", writer,
                       detail=f"KTAS {row.acuity} -> {latest.acuity}")  # fmt: skip
        self.metrics.alerts.labels("alert_update", latest.emergency_type.value).inc()

    def _cancel_alert(self, row: AlertRow, reason: str, writer: _Writer, now: datetime) -> None:
        writer.tx.update_alert(row.alert_id, state=ALERT_CANCELLED)
        writer.events.append((row.alert_id, "cancelled", reason))
        cancellation = AlertCancellation(
            alert_id=row.alert_id, hospital_id=row.hospital_id, device_id=row.device_id,
            incident_id=row.incident_id, created_at=now, reason=reason,
        )  # fmt: skip
        writer.send("alert_cancellation", HOSPITAL_EXCHANGE, hospital_routing_key(row.hospital_id),
                    cancellation.model_dump_json(), alert_id=row.alert_id, gates=True)  # fmt: skip
        self._feedback(
            row.device_id, row.incident_id, row.alert_id, row.hospital_id, "cancelled", writer, detail=reason
        )
        self.metrics.alerts.labels("alert_cancellation", row.emergency_type).inc()

    def _cancel_incident(
        self, cancel: IncidentCancel, open_alerts: list[AlertRow], writer: _Writer, now: datetime
    ) -> None:
        live = [row for row in open_alerts if row.state not in (ALERT_CANCELLED,)]
        if not live:
            log.info(
                "incident %s/%s cancelled by the crew; it had no open alert",
                cancel.device_id,
                cancel.incident_id,
            )
        for row in live:
            self._cancel_alert(row, f"cancelled by the crew: {cancel.reason}", writer, now)

    def _feedback(self, device_id: str, incident_id: str, alert_id: str, hospital_id: str, state: str,
                  writer: _Writer, detail: str | None = None) -> None:  # fmt: skip
        feedback = AlertFeedback(device_id=device_id, incident_id=incident_id, alert_id=alert_id,
                                 hospital_id=hospital_id, state=state, at=writer.tx.now, detail=detail)  # type: ignore[arg-type]  # fmt: skip
        writer.send(
            "alert_feedback",
            MQTT_EXCHANGE,
            feedback_routing_key(device_id),
            feedback.model_dump_json(),
            alert_id=alert_id,
            gates=False,
        )

    # --- confirmations, acknowledgements and escalation ------------------------------------------

    def on_confirmed(self, outbox_ids: Sequence[int]) -> list[OutboxMessage]:
        """Record broker confirmations on their own; return the 'delivered' feedback to publish."""
        with self.store.transaction(self.clock()) as tx:
            return self._record_confirmations(tx, outbox_ids)

    def _record_confirmations(self, tx: Transaction, outbox_ids: Sequence[int]) -> list[OutboxMessage]:
        """Mark confirmed messages sent; alerts they delivered tell their ambulance (feedback is not stored)."""
        if not outbox_ids:
            return []
        writer = _Writer(tx)
        for row in tx.mark_sent(outbox_ids):
            self._feedback(row.device_id, row.incident_id, row.alert_id, row.hospital_id, "delivered", writer,
                           detail=None if row.attempts <= 1 else f"attempt {row.attempts}")  # fmt: skip
        return list(writer.ephemeral)

    def handle_ack(self, ack: HospitalAck) -> list[OutboxMessage]:
        """Record a hospital's acknowledgement (from AMQP or the board); return feedback to publish."""
        row = self.store.alert(ack.alert_id)
        if row is None:
            log.warning("acknowledgement from %s for unknown alert %s ignored", ack.hospital_id, ack.alert_id)
            return []
        if row.hospital_id != ack.hospital_id:
            log.warning(
                "acknowledgement of alert %s from %s ignored: the alert went to %s",
                ack.alert_id, ack.hospital_id, row.hospital_id,
            )  # fmt: skip
            return []
        if row.state in (ALERT_ACKNOWLEDGED, ALERT_CANCELLED):
            log.info(
                "alert %s already %s; acknowledgement by %s recorded only",
                ack.alert_id,
                row.state,
                ack.acknowledged_by,
            )
            return []
        now = self.clock()
        with self.store.transaction(now) as tx:
            writer = _Writer(tx)
            tx.update_alert(row.alert_id, state=ALERT_ACKNOWLEDGED, acknowledged_at=ack.acknowledged_at,
                            acknowledged_by=ack.acknowledged_by)  # fmt: skip
            writer.events.append((row.alert_id, "acknowledged", f"by {ack.acknowledged_by}"))
            self._feedback(row.device_id, row.incident_id, row.alert_id, row.hospital_id, "acknowledged", writer,
                           detail=f"by {ack.acknowledged_by}")  # fmt: skip
            ids, _ = writer.flush()
        self.metrics.ack_seconds.observe(max(0.0, (ack.acknowledged_at - row.created_at).total_seconds()))
        log.info("alert %s acknowledged by %s at %s", row.alert_id, ack.acknowledged_by, row.hospital_id)
        return _messages(ids, writer)

    def check_overdue(self) -> list[OutboxMessage]:
        """Re-send alerts nobody acknowledged in time, then escalate them to the backup hospital."""
        now = self.clock()
        overdue = self.store.overdue(now, self.config.ack_timeout_s)
        if not overdue:
            return []
        published: list[OutboxMessage] = []
        for row in overdue:
            with self.store.transaction(now) as tx:
                writer = _Writer(tx)
                backup = self.registry.backup_for(row.hospital_id)
                if row.attempts <= self.config.max_resends or backup is None:
                    self._resend(
                        row, writer, backup_missing=backup is None and row.attempts > self.config.max_resends
                    )
                else:
                    self._escalate(row, backup.id, writer, now)
                ids, _ = writer.flush()
            published += _messages(ids, writer)
        return published

    def _resend(self, row: AlertRow, writer: _Writer, backup_missing: bool) -> None:
        alert = HospitalAlert.model_validate_json(row.payload)
        again = alert.model_copy(update={"attempt": row.attempts + 1, "created_at": writer.tx.now})
        writer.tx.update_alert(row.alert_id, state=ALERT_PENDING, payload=again.model_dump_json())
        detail = f"attempt {row.attempts + 1}, no acknowledgement after {self.config.ack_timeout_s:.0f} s"
        if backup_missing:
            detail += "; no backup hospital configured"
            log.warning(
                "alert %s at %s unacknowledged and no backup hospital; sending again",
                row.alert_id,
                row.hospital_id,
            )
        writer.events.append((row.alert_id, "resent", detail))
        self._send_alert(again, writer, gates=False)
        self._feedback(
            row.device_id, row.incident_id, row.alert_id, row.hospital_id, "resent", writer, detail=detail
        )
        self.metrics.resends.inc()
        log.warning("alert %s to %s not acknowledged; %s", row.alert_id, row.hospital_id, detail)

    def _escalate(self, row: AlertRow, backup_id: str, writer: _Writer, now: datetime) -> None:
        alert = HospitalAlert.model_validate_json(row.payload)
        escalation_id = f"{row.alert_id}-esc-{backup_id}"
        escalated = alert.model_copy(
            update={
                "alert_id": escalation_id,
                "hospital_id": backup_id,
                "escalated_from": row.hospital_id,
                "attempt": 1,
                "created_at": now,
                "eta_minutes": None,
            }  # fmt: skip
        )
        writer.tx.update_alert(row.alert_id, state=ALERT_ESCALATED, escalated_to=escalation_id)
        writer.tx.create_alert(
            {
                "alert_id": escalation_id,
                "device_id": row.device_id,
                "incident_id": row.incident_id,
                "sequence": row.sequence,
                "hospital_id": backup_id,
                "emergency_type": row.emergency_type,
                "acuity": row.acuity,
                "eta_minutes": None,
                "escalation_of": row.alert_id,
                "payload": escalated.model_dump_json(),
            }  # fmt: skip
        )
        detail = f"no acknowledgement from {row.hospital_id} after {row.attempts} attempts; escalated to {backup_id}"
        writer.events += [
            (row.alert_id, "escalated", detail),
            (escalation_id, "queued", f"escalation of {row.alert_id}"),
        ]
        self._send_alert(escalated, writer, gates=False)
        self._feedback(
            row.device_id, row.incident_id, row.alert_id, backup_id, "escalated", writer, detail=detail
        )
        self.metrics.escalations.inc()
        self.metrics.alerts.labels("hospital_alert", row.emergency_type).inc()
        log.warning("alert %s: %s", row.alert_id, detail)


def _messages(ids: list[int], writer: _Writer) -> list[OutboxMessage]:
    stored = [
        OutboxMessage(i, m["exchange"], m["routing_key"], m["kind"], m["body"], m["alert_id"])
        for i, m in zip(ids, writer.messages, strict=True)
    ]
    return stored + writer.ephemeral


def _row_from_alert(alert: HospitalAlert, now: datetime) -> AlertRow:
    return AlertRow(
        alert_id=alert.alert_id, device_id=alert.device_id, incident_id=alert.incident_id, sequence=alert.sequence,
        hospital_id=alert.hospital_id, emergency_type=alert.emergency_type.value, acuity=alert.acuity,
        state=ALERT_PENDING, attempts=0, created_at=now, updated_at=now, last_sent_at=None, acknowledged_at=None,
        acknowledged_by=None, escalated_to=None, escalation_of=None, eta_minutes=alert.eta_minutes,
        payload="",  # only the batch's own bookkeeping reads this row, never its payload
    )  # fmt: skip
