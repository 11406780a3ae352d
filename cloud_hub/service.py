"""The hub's AMQP side: consume in micro-batches, publish with confirms, acknowledge after both.

One pika `SelectConnection` per connection attempt, driven by its I/O loop on the hub's main thread:
- deliveries of the triage queue gather into a batch until it is full or `batch_wait_ms` passes, then
  `HubEngine.process_batch` parses, re-scores, stores and returns the messages to publish;
- messages go out on a confirm-mode channel; an input is acknowledged only when every hospital message
  it caused has been confirmed (a malformed input, once its dead-letter copy is confirmed);
- hospital acknowledgements arrive on their own queue; a timer re-sends, escalates and sweeps the
  outbox for anything unsent.
Other threads (the board's HTTP server) hand work to the loop with `call_in_loop`.
"""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pika
import pika.exceptions
from pika.adapters.select_connection import SelectConnection
from pika.adapters.utils.io_services_utils import _AsyncTransportBase
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from cloud_hub.broker import FATAL_ERRORS, RETRYABLE_ERRORS, describe_error
from cloud_hub.config import HubConfig
from cloud_hub.engine import Delivery, HubEngine
from cloud_hub.metrics import HubMetrics
from cloud_hub.scoring import HubScorer
from cloud_hub.store import HubStore, OutboxMessage
from cloud_hub.topology import declare_hospital_queue, declare_hub_topology
from cloud_hub.worker import EngineProcess, InlineEngine
from protocol import ContractError, HospitalAck, parse_message
from protocol.topics import (
    DEAD_LETTER_EXCHANGE,
    HUB_ACK_QUEUE,
    HUB_TRIAGE_QUEUE,
    HUB_URGENT_QUEUE,
    MQTT_EXCHANGE,
    ORIGINAL_ROUTING_KEY_HEADER,
    REJECTION_REASON_HEADER,
)

log = logging.getLogger(__name__)

SHUTDOWN_DRAIN_S = 10.0  # how long a stopping hub waits for confirms of what it already published
MAX_BATCHES_IN_ENGINE = 1  # a batch waits in this process, growing, until the engine is free
ENGINE_STALL_S = 120.0  # an engine request older than this means the engine hangs
CONFIRM_FLUSH_S = 0.005  # confirmations gathered before they are recorded together
SWEEP_AGE_S = 30.0  # an unsent message younger than this may still be on its way

# pika 1.3 reads at most 100 KB per readable event before it runs timers, so under a backlog the
# batch timer fired with about 30 results of 3 KB each, and every batch paid a disk flush for its
# commit. Reading up to 4 MB per event lets a batch fill to `batch_size` from the socket buffer.
_AsyncTransportBase._MAX_CONSUME_BYTES = 4 * 1024 * 1024


def tune_garbage_collector() -> None:
    """Keep Python's cyclic garbage collector off the hot path.

    TensorFlow and Keras leave hundreds of thousands of long-lived objects, which every full
    collection would scan again. Freezing them and collecting the young generation every 50,000
    allocations instead of 700 raised the engine's throughput by about a third in a profile of
    512-result batches on this project's 2-core machine.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


@dataclass
class HubCounters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    hospital_messages_confirmed: int = 0

    @property
    def alerts_published(self) -> int:
        return self.hospital_messages_confirmed


@dataclass
class _Pending:
    """What a publish sequence number stands for until the broker confirms it."""

    outbox_id: int | None = None
    dead_letter_tag: int | None = None
    kind: str = ""


class HubService:
    def __init__(
        self,
        config: HubConfig,
        store: HubStore,
        scorer: HubScorer | None = None,
        metrics: HubMetrics | None = None,
    ):
        """`scorer` serves the inline engine; with `config.engine_process` the worker loads its own."""
        self.config = config
        self.store = store
        self.metrics = metrics or HubMetrics()
        if config.engine_process:
            self.engine: InlineEngine | EngineProcess = EngineProcess(config, self.metrics)
        else:
            if scorer is None:
                scorer = HubScorer(config.bundle_dir)
            self.engine = InlineEngine(HubEngine(config, store, scorer, self.metrics))
        self.counters = HubCounters()
        self.ready = threading.Event()  # set while consuming
        self._stop: threading.Event | None = None
        self._connection: SelectConnection | None = None
        self._batches_in_engine = 0
        self._reset_connection_state()

    def _reset_connection_state(self) -> None:
        self._consume_channel: Channel | None = None
        self._publish_channel: Channel | None = None
        self._publish_sequence = 0
        self._unconfirmed: dict[int, _Pending] = {}  # publish sequence -> what it carries
        self._inflight_outbox: set[int] = set()
        self._returned: set[str] = set()  # message ids the broker could not route
        self._batch: list[Delivery] = []
        self._batch_timer: object | None = None
        self._waiting: dict[int, set[int]] = {}  # delivery tag -> outbox ids still unconfirmed
        self._confirmed_buffer: list[int] = []  # confirmed outbox ids not yet recorded
        self._recording: set[int] = set()  # confirmed outbox ids not yet recorded in the store
        self._confirm_timer: object | None = None
        self._dependents: dict[int, set[int]] = {}  # outbox id -> delivery tags waiting on it
        self._consumer_tags: list[str] = []
        self._stopping = False
        self._stop_started = 0.0
        self.ready.clear()
        self.metrics.connected.set(0)

    # --- connection lifecycle ------------------------------------------------------------------

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
        """Serve until `stop` is set, reconnecting with capped exponential backoff and jitter."""
        tune_garbage_collector()
        self._stop = stop
        self.engine.start()
        try:
            self._serve(stop)
        finally:
            self.engine.stop()

    def _serve(self, stop: threading.Event) -> None:
        delay_s = self.config.reconnect_min_s
        amqp = self.config.amqp
        while not stop.is_set():
            connected = False
            try:
                self._declare_topology()
                connected = self._run_connection()
            except FATAL_ERRORS as exc:
                log.error(
                    "broker %s:%d rejected the hub's credentials, not retrying: %r", amqp.host, amqp.port, exc
                )
                raise
            except RETRYABLE_ERRORS as exc:
                log.warning("AMQP broker %s:%d unreachable (%s)", amqp.host, amqp.port, describe_error(exc))
            if stop.is_set():
                break
            if connected:
                delay_s = self.config.reconnect_min_s
            jittered = random.uniform(delay_s / 2, delay_s)
            log.warning("reconnecting to AMQP broker %s:%d in %.1f s", amqp.host, amqp.port, jittered)
            stop.wait(jittered)
            delay_s = min(delay_s * 2, self.config.reconnect_max_s)
        log.info("hub stopped: %s", self._summary())

    def _declare_topology(self) -> None:
        """Declare queues and exchanges on a short blocking connection before consuming."""
        connection = pika.BlockingConnection(self._parameters())
        try:
            channel = connection.channel()
            declare_hub_topology(channel)
            for hospital in self.config.hospitals:
                declare_hospital_queue(channel, hospital.id)
        finally:
            if connection.is_open:
                connection.close()

    def _run_connection(self) -> bool:
        """Run one connection's I/O loop until it closes; return whether it got as far as consuming."""
        self._reset_connection_state()
        self._open_failure: BaseException | None = None
        self._consumed = False
        self._connection = SelectConnection(
            self._parameters(),
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
        )
        self.engine.attach(self._connection.ioloop)
        try:
            self._connection.ioloop.start()
        finally:
            self.engine.detach(self._connection.ioloop)
            self._batches_in_engine = 0
        self._connection = None
        self._reset_connection_state()
        if self._open_failure is not None:
            raise self._open_failure
        return self._consumed

    def _on_connection_open(self, connection: SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_publish_channel_open)

    def _on_connection_open_error(self, connection: SelectConnection, error: BaseException) -> None:
        self._open_failure = (
            error if isinstance(error, BaseException) else pika.exceptions.AMQPConnectionError(error)
        )
        connection.ioloop.stop()

    def _on_connection_closed(self, connection: SelectConnection, reason: BaseException) -> None:
        if self._stopping or (self._stop is not None and self._stop.is_set()):
            log.info("connection to the broker closed")
        else:
            log.warning(
                "connection to the broker lost (%s); %d deliveries were unacknowledged and return to the queue",
                describe_error(reason), len(self._waiting) + len(self._batch),
            )  # fmt: skip
        connection.ioloop.stop()

    def _on_publish_channel_open(self, channel: Channel) -> None:
        self._publish_channel = channel
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._open_consume_channel())

    def _open_consume_channel(self) -> None:
        assert self._connection is not None
        self._connection.channel(on_open_callback=self._on_consume_channel_open)

    def _on_consume_channel_open(self, channel: Channel) -> None:
        self._consume_channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        assert self._publish_channel is not None
        self._publish_channel.add_on_close_callback(self._on_channel_closed)
        channel.basic_qos(
            prefetch_count=self.config.amqp.prefetch, callback=lambda _frame: self._start_consuming()
        )

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if not self._stopping and self._connection is not None and self._connection.is_open:
            log.error(
                "AMQP channel %d closed (%s); reconnecting", channel.channel_number, describe_error(reason)
            )
            self._connection.close()

    def _start_consuming(self) -> None:
        assert self._consume_channel is not None and self._connection is not None
        self._consumer_tags = [
            self._consume_channel.basic_consume(HUB_URGENT_QUEUE, self._on_triage_delivery),
            self._consume_channel.basic_consume(HUB_TRIAGE_QUEUE, self._on_triage_delivery),
            self._consume_channel.basic_consume(HUB_ACK_QUEUE, self._on_ack_delivery),
        ]
        self._consumed = True
        self.ready.set()
        self.metrics.connected.set(1)
        amqp = self.config.amqp
        log.info(
            "hub consuming %s, %s and %s on %s:%d (prefetch %d, batches of up to %d in %.1f ms), hospitals %s",
            HUB_URGENT_QUEUE, HUB_TRIAGE_QUEUE, HUB_ACK_QUEUE, amqp.host, amqp.port, amqp.prefetch, self.config.batch_size,
            self.config.batch_wait_ms, ", ".join(h.id for h in self.config.hospitals),
        )  # fmt: skip
        self._sweep_outbox(everything=True)
        self._connection.ioloop.call_later(self.config.escalation_check_s, self._on_timer)
        self._connection.ioloop.call_later(self.config.report_every_s, self._on_report)
        self._connection.ioloop.call_later(0.2, self._watch_stop)

    # --- other threads ------------------------------------------------------------------------

    def call_in_loop(self, work: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        """Run `work` on the hub's I/O loop thread and return its result; raise if not connected."""
        connection = self._connection
        if connection is None or not self.ready.is_set():
            raise RuntimeError("the hub is not connected to the broker")
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(work())
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

        connection.ioloop.add_callback_threadsafe(run)
        return future.result(timeout=timeout_s)

    def acknowledge(self, ack: HospitalAck, timeout_s: float = 10.0) -> None:
        """Record an acknowledgement from the board and publish its feedback (any thread)."""
        done: concurrent.futures.Future = concurrent.futures.Future()

        def finished(ok: bool, result: Any) -> None:
            if ok:
                self._publish(result)
                done.set_result(None)
            else:
                done.set_exception(
                    RuntimeError(f"recording the acknowledgement failed: {result.splitlines()[0]}")
                )

        self.call_in_loop(lambda: self.engine.request("handle_ack", [ack], finished), timeout_s)
        done.result(timeout=timeout_s)

    # --- triage deliveries ----------------------------------------------------------------------

    def _on_triage_delivery(
        self, channel: Channel, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        self.counters.received += 1
        self._batch.append(Delivery(method.delivery_tag, method.routing_key, body))
        if len(self._batch) >= self.config.batch_size:
            self._flush_batch()
        elif self._batch_timer is None:
            assert self._connection is not None
            self._batch_timer = self._connection.ioloop.call_later(
                self.config.batch_wait_ms / 1000, self._flush_batch
            )

    def _flush_batch(self) -> None:
        if self._batch_timer is not None and self._connection is not None:
            self._connection.ioloop.remove_timeout(self._batch_timer)
        self._batch_timer = None
        if not self._batch or self._consume_channel is None:
            return
        if self._batches_in_engine >= MAX_BATCHES_IN_ENGINE:
            return  # the batch keeps growing; it goes when the engine finishes one
        # What arrived while the engine was busy goes in batches of at most batch_size.
        size = self.config.batch_size
        batch, self._batch = self._batch[:size], self._batch[size:]
        # Confirmations waiting to be recorded ride along: one commit instead of two.
        confirmed = self._take_confirmations()
        self._batches_in_engine += 1
        channel = self._consume_channel
        self.engine.request(
            "process_batch",
            [batch, confirmed],
            lambda ok, result: self._on_batch_done(channel, batch, confirmed, ok, result),
        )

    def _on_batch_done(
        self, channel: Channel, batch: list[Delivery], confirmed: list[int], ok: bool, outcome: Any
    ) -> None:
        self._batches_in_engine -= 1
        if confirmed:
            self._confirmations_recorded(confirmed, ok and bool(outcome.confirmed), outcome)
        if channel is not self._consume_channel or not channel.is_open:
            return  # the connection was lost meanwhile; the broker returns these deliveries to the queue
        if not ok:
            # A bug must not take the hub down; the queue's delivery limit ends a loop on one message.
            log.error("processing a batch of %d failed; deliveries requeued: %s", len(batch), outcome)
            for delivery in batch:
                channel.basic_nack(delivery.tag, requeue=True)
            self.counters.requeued += len(batch)
        else:
            self._apply_outcome(channel, outcome)
        if self._batch:
            self._flush_batch()  # also while stopping: what was taken from the queue is finished

    def _apply_outcome(self, channel: Channel, outcome: Any) -> None:
        for delivery, reason in outcome.dead_letters:
            self._dead_letter(delivery, reason)
        for delivery in outcome.requeue:
            channel.basic_nack(delivery.tag, requeue=True)
        self.counters.requeued += len(outcome.requeue)
        for delivery in outcome.ack_now:
            channel.basic_ack(delivery.tag)
        for tag, outbox_ids in outcome.waiting.items():
            self._waiting[tag] = set(outbox_ids)
            for outbox_id in outbox_ids:
                self._dependents.setdefault(outbox_id, set()).add(tag)
        self.counters.stored += outcome.stored
        self.counters.duplicates += outcome.duplicates
        self.metrics.in_progress.set(len(self._batch) + len(self._waiting))
        self._publish(outcome.publish)

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Publish a copy to the dead-letter exchange with the reason; ack the original once confirmed."""
        log.error("dead-lettered message from %s: %s", delivery.routing_key, reason)
        self.metrics.dead_letters.labels(reason.split(":")[0][:60]).inc()
        self.counters.dead_lettered += 1
        assert self._publish_channel is not None
        self._publish_sequence += 1
        message_id = f"dead-letter-{delivery.tag}-{self._publish_sequence}"
        self._unconfirmed[self._publish_sequence] = _Pending(dead_letter_tag=delivery.tag, kind="dead_letter")
        self._publish_channel.basic_publish(
            exchange=DEAD_LETTER_EXCHANGE,
            routing_key=delivery.routing_key,
            body=delivery.body,
            properties=BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=message_id,
                headers={
                    REJECTION_REASON_HEADER: reason[:4000],
                    ORIGINAL_ROUTING_KEY_HEADER: delivery.routing_key,
                    "x-rejected-at": datetime.now(UTC).isoformat(),
                },
            ),
            mandatory=True,
        )

    # --- publishing and confirms ----------------------------------------------------------------

    def _publish(self, messages: list[OutboxMessage]) -> None:
        channel = self._publish_channel
        if channel is None or not channel.is_open:
            return  # they stay unsent in the outbox; the next connection's sweep sends them
        for message in messages:
            # In flight, or confirmed and not yet recorded: publishing it again would send a duplicate.
            if message.id >= 0 and (message.id in self._inflight_outbox or message.id in self._recording):
                continue
            self._publish_sequence += 1
            if message.id >= 0:
                self._unconfirmed[self._publish_sequence] = _Pending(outbox_id=message.id, kind=message.kind)
                self._inflight_outbox.add(message.id)
            else:
                # Not stored, so nothing to record when the broker confirms it.
                self._unconfirmed[self._publish_sequence] = _Pending(kind=message.kind)
            # Feedback goes to amq.topic for MQTT subscribers; an ambulance that never subscribed
            # makes it unroutable, which is no error, so only hospital messages are mandatory.
            channel.basic_publish(
                exchange=message.exchange,
                routing_key=message.routing_key,
                body=message.body.encode(),
                properties=BasicProperties(
                    content_type="application/json",
                    delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=f"outbox-{message.id}",
                    type=message.kind,
                ),
                mandatory=message.exchange != MQTT_EXCHANGE,
            )
        self.metrics.unconfirmed.set(len(self._unconfirmed))

    def _on_return(
        self, channel: Channel, method: Basic.Return, properties: BasicProperties, body: bytes
    ) -> None:
        log.error(
            "broker returned %s sent to %s with key %s: %s", properties.message_id, method.exchange,
            method.routing_key, method.reply_text,
        )  # fmt: skip
        if properties.message_id:
            self._returned.add(properties.message_id)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, Basic.Ack)
        sequences: list[int] = []
        if method.multiple:
            for sequence in self._unconfirmed:  # insertion order is publish order
                if sequence > method.delivery_tag:
                    break
                sequences.append(sequence)
        elif method.delivery_tag in self._unconfirmed:
            sequences.append(method.delivery_tag)
        confirmed: list[int] = []
        for sequence in sequences:
            pending = self._unconfirmed.pop(sequence)
            message_id = (
                f"outbox-{pending.outbox_id}" if pending.outbox_id is not None
                else f"dead-letter-{pending.dead_letter_tag}-{sequence}"
            )  # fmt: skip
            delivered = acked and message_id not in self._returned
            self._returned.discard(message_id)
            if pending.dead_letter_tag is not None:
                self._finish_dead_letter(pending.dead_letter_tag, delivered)
            elif pending.outbox_id is not None:
                self._inflight_outbox.discard(pending.outbox_id)
                if delivered:
                    confirmed.append(pending.outbox_id)
                    if pending.kind != "alert_feedback":
                        self.counters.hospital_messages_confirmed += 1
                else:
                    log.warning(
                        "outbox message %d (%s) not confirmed; it stays unsent and is retried",
                        pending.outbox_id,
                        pending.kind,
                    )
        self.metrics.unconfirmed.set(len(self._unconfirmed))
        self.metrics.in_progress.set(len(self._batch) + len(self._waiting))
        if confirmed:
            # The broker confirms message by message; recording them a few milliseconds later in
            # one transaction costs one disk flush instead of one per message.
            self._confirmed_buffer += confirmed
            self._recording.update(confirmed)
            if self._confirm_timer is None and self._connection is not None:
                self._confirm_timer = self._connection.ioloop.call_later(
                    CONFIRM_FLUSH_S, self._flush_confirmations
                )

    def _take_confirmations(self) -> list[int]:
        if self._confirm_timer is not None and self._connection is not None:
            self._connection.ioloop.remove_timeout(self._confirm_timer)
        self._confirm_timer = None
        confirmed, self._confirmed_buffer = self._confirmed_buffer, []
        self._recording.update(confirmed)
        return confirmed

    def _flush_confirmations(self) -> None:
        """Record buffered confirmations: with the next batch if one can go now, else on their own."""
        self._confirm_timer = None
        if not self._confirmed_buffer:
            return
        if self._batch and self._batches_in_engine < MAX_BATCHES_IN_ENGINE and self._consume_channel:
            self._flush_batch()
            return
        confirmed = self._take_confirmations()

        def recorded(ok: bool, result: Any) -> None:
            self._confirmations_recorded(confirmed, ok, result)
            if ok:
                self._publish(result)

        self.engine.request("on_confirmed", [confirmed], recorded)

    def _confirmations_recorded(self, confirmed: list[int], ok: bool, result: Any) -> None:
        self._recording.difference_update(confirmed)
        if not ok:
            # The messages reached the broker; only the bookkeeping failed, and the sweep resends.
            log.error("recording %d broker confirmations failed: %s", len(confirmed), result)
        self._release(confirmed)

    def _finish_dead_letter(self, tag: int, delivered: bool) -> None:
        if self._consume_channel is None or not self._consume_channel.is_open:
            return
        if delivered:
            self._consume_channel.basic_ack(tag)
        else:
            # The queue's own dead-letter exchange still takes it, without the reason header.
            log.error(
                "dead-letter copy not confirmed; rejecting delivery %d to the queue's dead-letter exchange",
                tag,
            )
            self._consume_channel.basic_reject(tag, requeue=False)

    def _release(self, outbox_ids: list[int]) -> None:
        """Acknowledge the inputs whose messages are now all confirmed."""
        channel = self._consume_channel
        for outbox_id in outbox_ids:
            for tag in self._dependents.pop(outbox_id, set()):
                waiting = self._waiting.get(tag)
                if waiting is None:
                    continue
                waiting.discard(outbox_id)
                if not waiting:
                    del self._waiting[tag]
                    if channel is not None and channel.is_open:
                        channel.basic_ack(tag)
        self.metrics.in_progress.set(len(self._batch) + len(self._waiting))

    def _sweep_outbox(self, everything: bool = False) -> None:
        """Publish stored messages that were never confirmed (a crash, a nack, a lost connection).

        On a new connection everything unsent goes. Later sweeps leave out messages younger than
        SWEEP_AGE_S, which may belong to a batch whose outcome or confirmations are still on their
        way between the engine and this loop; sending those again would only duplicate them.
        """
        created_before = None if everything else datetime.now(UTC) - timedelta(seconds=SWEEP_AGE_S)
        try:
            unsent = self.store.unsent(
                limit=1000, exclude=self._inflight_outbox | self._recording, created_before=created_before
            )
        except Exception as exc:  # noqa: BLE001 - the store may be down; the next sweep retries
            log.error("outbox sweep failed: %s", exc)
            return
        if unsent:
            log.warning("publishing %d stored messages that were never confirmed", len(unsent))
            self._publish(unsent)

    # --- hospital acknowledgements --------------------------------------------------------------

    def _on_ack_delivery(
        self, channel: Channel, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        try:
            ack = parse_message(HospitalAck, body)
        except ContractError as exc:
            log.error("invalid hospital acknowledgement from %s rejected: %s", method.routing_key, exc)
            channel.basic_reject(method.delivery_tag, requeue=False)
            return

        def recorded(ok: bool, result: Any) -> None:
            if not channel.is_open:
                return
            if not ok:
                # Keep serving; the acknowledgement comes back.
                log.error("recording the acknowledgement of %s failed; requeued: %s", ack.alert_id, result)
                channel.basic_nack(method.delivery_tag, requeue=True)
                return
            channel.basic_ack(method.delivery_tag)
            self._publish(result)

        self.engine.request("handle_ack", [ack], recorded)

    # --- timers -----------------------------------------------------------------------------------

    def _on_timer(self) -> None:
        if self._connection is None or self._stopping:
            return
        if not self.engine.alive:
            log.error("the hub's engine process died; closing the connection and restarting it")
            self._restart_engine()
            return
        stalled_s = self.engine.oldest_request_age_s()
        if stalled_s > ENGINE_STALL_S:
            log.error("the hub's engine has not answered for %.0f s; restarting it", stalled_s)
            self._restart_engine()
            return

        def checked(ok: bool, result: Any) -> None:
            if ok:
                self._publish(result)
            else:
                log.error("checking for unacknowledged alerts failed: %s", result)

        self.engine.request("check_overdue", [], checked)
        self._sweep_outbox()
        if self._consume_channel is not None and self._consume_channel.is_open:
            for queue_name in (HUB_URGENT_QUEUE, HUB_TRIAGE_QUEUE):
                self._consume_channel.queue_declare(
                    queue_name,
                    passive=True,
                    callback=lambda frame, lane=queue_name: self.metrics.consumer_lag.labels(lane).set(
                        frame.method.message_count
                    ),
                )
        self._connection.ioloop.call_later(self.config.escalation_check_s, self._on_timer)

    def _restart_engine(self) -> None:
        """Drop the connection (its deliveries return to the queue) and start a fresh engine."""
        connection = self._connection
        if connection is not None:
            self.engine.detach(connection.ioloop)
        self.engine.stop()
        self.engine.start()
        if connection is not None:
            self.engine.attach(connection.ioloop)
            if connection.is_open:
                connection.close()

    def _on_report(self) -> None:
        if self._connection is None or self._stopping:
            return
        log.info("hub status: %s", self._summary())
        self._connection.ioloop.call_later(self.config.report_every_s, self._on_report)

    def _summary(self) -> str:
        c = self.counters
        return (
            f"received {c.received}, stored {c.stored}, duplicates {c.duplicates}, hospital messages "
            f"{c.hospital_messages_confirmed}, dead-lettered {c.dead_lettered}, requeued {c.requeued}, "
            f"waiting for confirms {len(self._waiting)}"
        )

    def _watch_stop(self) -> None:
        connection = self._connection
        if connection is None:
            return
        if self._stop is not None and self._stop.is_set() and not self._stopping:
            self._begin_shutdown()
        if self._stopping:
            self._flush_confirmations()
            drained = not self._waiting and not self._unconfirmed
            if drained or time.monotonic() - self._stop_started > SHUTDOWN_DRAIN_S:
                if not drained:
                    log.warning(
                        "stopping with %d deliveries unacknowledged; the broker returns them to the queue",
                        len(self._waiting),
                    )
                if connection.is_open:
                    connection.close()
                return
        connection.ioloop.call_later(0.1, self._watch_stop)

    def _begin_shutdown(self) -> None:
        """Stop taking deliveries, finish the current batch and wait for its confirms."""
        self._stopping = True
        self._stop_started = time.monotonic()
        self.ready.clear()
        log.info("stopping: no new deliveries; finishing %d in the current batch", len(self._batch))
        if self._consume_channel is not None and self._consume_channel.is_open:
            for tag in self._consumer_tags:
                self._consume_channel.basic_cancel(tag)
        self._flush_batch()
