"""The hub's consumer: triage results in, re-scored and stored, hospital alerts out.

For each delivery, in this order: parse (a malformed message is dead-lettered with its reason),
re-score with the Keras model, store the result and any alert in one transaction, publish the alert
with publisher confirms, and only then acknowledge the delivery. A crash at any step leaves the
delivery unacknowledged, so RabbitMQ redelivers it, and the store's (device id, sequence) key turns
the redelivery into a no-op apart from publishing an alert the broker never confirmed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties
from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.broker import FATAL_ERRORS, RETRYABLE_ERRORS, describe_error
from cloud_hub.config import HubConfig
from cloud_hub.policy import decide
from cloud_hub.scoring import HubScorer
from cloud_hub.store import HubStore
from cloud_hub.topology import declare_hospital_queue, declare_hub_topology
from models.ecg_strips import decode_strip_png
from models.features import summarize_window
from protocol import ContractError, HospitalAlert, TriageResult, parse_message
from protocol.topics import (
    DEAD_LETTER_EXCHANGE,
    HOSPITAL_EXCHANGE,
    HUB_TRIAGE_QUEUE,
    ORIGINAL_ROUTING_KEY_HEADER,
    REJECTION_REASON_HEADER,
    device_id_from_routing_key,
    hospital_routing_key,
)

log = logging.getLogger(__name__)


@dataclass
class HubCounters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    alerts_published: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    started_at: float = field(default_factory=time.monotonic)


class HubService:
    def __init__(self, config: HubConfig, store: HubStore, scorer: HubScorer):
        self.config = config
        self.store = store
        self.scorer = scorer
        self.counters = HubCounters()
        self.hospitals = set(config.hospitals)
        self._connection: pika.BlockingConnection | None = None
        self._publish_channel: BlockingChannel | None = None
        self._connected = False  # whether the current attempt got as far as consuming

    # --- connection management ---------------------------------------------------------------

    def _parameters(self) -> pika.ConnectionParameters:
        amqp = self.config.amqp
        return pika.ConnectionParameters(
            host=amqp.host,
            port=amqp.port,
            virtual_host=amqp.virtual_host,
            credentials=pika.PlainCredentials(amqp.username, amqp.password()),
            heartbeat=amqp.heartbeat_s,
            blocked_connection_timeout=60,
            connection_attempts=1,
        )

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, reconnecting with capped exponential backoff and jitter."""
        delay_s = self.config.reconnect_min_s
        amqp = self.config.amqp
        while not stop.is_set():
            try:
                self._consume(stop)
                delay_s = self.config.reconnect_min_s
            except FATAL_ERRORS as exc:
                log.error(
                    "broker %s:%d rejected the hub's credentials, not retrying: %r", amqp.host, amqp.port, exc
                )
                raise
            except RETRYABLE_ERRORS as exc:
                jittered = random.uniform(delay_s / 2, delay_s)
                what = "connection lost" if self._connected else "unreachable"
                log.warning(
                    "AMQP broker %s:%d %s (%s); retrying in %.1f s",
                    amqp.host, amqp.port, what, describe_error(exc), jittered,
                )  # fmt: skip
                stop.wait(jittered)
                delay_s = min(delay_s * 2, self.config.reconnect_max_s)
            finally:
                self._close()
        log.info("hub stopped: %s", self._summary())

    def _consume(self, stop: threading.Event) -> None:
        amqp = self.config.amqp
        log.info("connecting to AMQP broker %s:%d", amqp.host, amqp.port)
        self._connected = False
        self._connection = pika.BlockingConnection(self._parameters())
        consume_channel = self._connection.channel()
        declare_hub_topology(consume_channel)
        for hospital_id in self.config.hospitals:
            declare_hospital_queue(consume_channel, hospital_id)
        self._publish_channel = self._connection.channel()
        self._publish_channel.confirm_delivery()
        consume_channel.basic_qos(prefetch_count=amqp.prefetch)
        consume_channel.basic_consume(HUB_TRIAGE_QUEUE, self._on_message, auto_ack=False)
        self._connected = True
        log.info(
            "hub consuming %s (prefetch %d), serving hospitals %s",
            HUB_TRIAGE_QUEUE, amqp.prefetch, ", ".join(self.config.hospitals),
        )  # fmt: skip
        next_report = time.monotonic() + self.config.report_every_s
        while not stop.is_set():
            self._connection.process_data_events(time_limit=0.2)
            if time.monotonic() >= next_report:
                log.info("hub status: %s", self._summary())
                next_report = time.monotonic() + self.config.report_every_s
        # Unacknowledged deliveries return to the queue when the channel closes.
        consume_channel.stop_consuming()

    def _close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except RETRYABLE_ERRORS:
                pass
        self._connection = None
        self._publish_channel = None

    def _summary(self) -> str:
        c = self.counters
        return (
            f"received {c.received}, stored {c.stored}, duplicates {c.duplicates}, alerts "
            f"{c.alerts_published}, dead-lettered {c.dead_lettered}, requeued {c.requeued}"
        )

    # --- one delivery ------------------------------------------------------------------------

    def _on_message(
        self, channel: BlockingChannel, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        self.counters.received += 1
        try:
            result = parse_message(TriageResult, body)
            topic_device = device_id_from_routing_key(method.routing_key)
            if topic_device != result.device_id:
                raise ContractError(
                    f"device_id {result.device_id!r} in the payload differs from {topic_device!r} in "
                    f"routing key {method.routing_key!r}"
                )
            ecg_image = None if result.ecg_strip_png is None else decode_strip_png(result.ecg_strip_png)
        except (ContractError, ValueError) as exc:
            self._dead_letter(channel, method, body, str(exc))
            return

        try:
            self._process(result, ecg_image)
        except SQLAlchemyError as exc:
            # The store is down or locked: put the delivery back and slow down instead of spinning.
            log.error("store failed for %s/%d, delivery requeued: %s", result.device_id, result.sequence, exc)
            self.counters.requeued += 1
            channel.basic_nack(method.delivery_tag, requeue=True)
            time.sleep(1.0)
            return
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            log.error(
                "alert for %s/%d not confirmed by the broker, delivery requeued: %s",
                result.device_id, result.sequence, exc,
            )  # fmt: skip
            self.counters.requeued += 1
            channel.basic_nack(method.delivery_tag, requeue=True)
            return
        channel.basic_ack(method.delivery_tag)

    def _process(self, result: TriageResult, ecg_image: np.ndarray | None) -> None:
        summary = summarize_window(result.window)
        hub_scores = self.scorer.score([summary], [result.series], [ecg_image])[0]
        hospital_id = self._hospital_for(result)
        decision = decide(result, summary, hub_scores, hospital_id, self.scorer.operating_point)
        outcome = self.store.store_result(result, hub_scores, decision.acuity, decision.alert)
        if outcome.duplicate:
            self.counters.duplicates += 1
        else:
            self.counters.stored += 1
        if outcome.alert_to_publish is not None:
            self._publish_alert(outcome.alert_to_publish)
            self.store.mark_alert_published(outcome.alert_to_publish.alert_id)
            self.counters.alerts_published += 1

    def _hospital_for(self, result: TriageResult) -> str:
        wanted = result.destination_hospital_id
        if wanted is None:
            return self.config.default_hospital_id  # type: ignore[return-value]
        if wanted not in self.hospitals:
            log.warning(
                "result %s/%d names unknown hospital %r; alerting default hospital %s",
                result.device_id, result.sequence, wanted, self.config.default_hospital_id,
            )  # fmt: skip
            return self.config.default_hospital_id  # type: ignore[return-value]
        return wanted

    def _publish_alert(self, alert: HospitalAlert) -> None:
        assert self._publish_channel is not None
        self._publish_channel.basic_publish(
            exchange=HOSPITAL_EXCHANGE,
            routing_key=hospital_routing_key(alert.hospital_id),
            body=alert.model_dump_json().encode(),
            properties=BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=alert.alert_id,
                timestamp=int(alert.created_at.timestamp()),
            ),
            mandatory=True,
        )
        log.info(
            "alert %s for incident %s to %s: KTAS %d %s (%s)",
            alert.alert_id, alert.incident_id, alert.hospital_id, alert.acuity, alert.emergency_type.value,
            alert.reason,
        )  # fmt: skip

    def _dead_letter(self, channel: BlockingChannel, method: Basic.Deliver, body: bytes, reason: str) -> None:
        """Move a message the hub cannot use to the dead-letter queue, with the reason in a header."""
        log.error("dead-lettered message from %s: %s", method.routing_key, reason)
        assert self._publish_channel is not None
        try:
            self._publish_channel.basic_publish(
                exchange=DEAD_LETTER_EXCHANGE,
                routing_key=method.routing_key,
                body=body,
                properties=BasicProperties(
                    delivery_mode=pika.DeliveryMode.Persistent,
                    headers={
                        REJECTION_REASON_HEADER: reason[:4000],
                        ORIGINAL_ROUTING_KEY_HEADER: method.routing_key,
                        "x-rejected-at": datetime.now(UTC).isoformat(),
                    },
                ),
                mandatory=True,
            )
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            # The queue's own dead-letter exchange still takes it, without the reason header.
            log.error("dead-letter publish not confirmed (%s); rejecting to the queue's DLX", exc)
            channel.basic_reject(method.delivery_tag, requeue=False)
        else:
            channel.basic_ack(method.delivery_tag)
        self.counters.dead_lettered += 1
