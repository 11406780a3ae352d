"""`hospital-listener`: print one line per pre-alert, update or cancellation that reaches one hospital.

    hospital-listener --hospital general-hospital --amqp-port 5672 [--record alerts.jsonl]
                      [--acknowledge-after 20]

The hospital's queue is durable, so messages sent while the listener is down wait for it. Each is
taken off the queue after it is printed (and recorded); a message seen before is reported as a
duplicate instead of printed again. With --acknowledge-after the listener also answers each new alert
with an acknowledgement, as a charge nurse would, so the hub stops re-sending it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import pika
import pika.exceptions

from cloud_hub.broker import describe_error
from cloud_hub.topology import declare_hospital_queue
from protocol import (
    AlertCancellation,
    AlertUpdate,
    ContractError,
    HospitalAck,
    HospitalAlert,
    HospitalMessage,
    parse_message,
)
from protocol.topics import HOSPITAL_ACK_EXCHANGE, check_id, hospital_ack_routing_key

log = logging.getLogger("hospital_listener")


def format_message(message: HospitalAlert | AlertUpdate | AlertCancellation, latency_ms: float | None) -> str:
    """Render a hospital message as one line a charge nurse can read at a glance."""
    when = f"{message.created_at.astimezone(UTC):%H:%M:%S}"
    if isinstance(message, AlertCancellation):
        return f"{when} CANCEL {message.alert_id} from {message.device_id} ({message.incident_id}): {message.reason}"
    line = format_alert(message, latency_ms or 0.0)
    if isinstance(message, AlertUpdate):
        return line.replace(" ALERT ", f" UPDATE (was KTAS {message.previous_acuity}) ", 1)
    if message.escalated_from:
        return line.replace(" ALERT ", f" ESCALATED from {message.escalated_from} ", 1)
    if message.attempt > 1:
        return line.replace(" ALERT ", f" RESENT (attempt {message.attempt}) ", 1)
    return line


def format_alert(alert: HospitalAlert | AlertUpdate, latency_ms: float) -> str:
    """Render an alert as one line a charge nurse can read at a glance."""
    vitals = alert.vitals
    parts = []
    for label, value, unit in (
        ("HR", vitals.hr_bpm, ""),
        ("RR", vitals.rr_per_min, ""),
        ("SpO2", vitals.spo2_pct, "%"),
        ("BP", None if vitals.sbp_mmhg is None else f"{vitals.sbp_mmhg:.0f}/{vitals.dbp_mmhg or 0:.0f}", ""),
        ("T", vitals.temp_c, "C"),
    ):
        if value is not None:
            parts.append(f"{label} {value if isinstance(value, str) else f'{value:g}'}{unit}")
    age = vitals.context.age_years if vitals.context else None
    age_text = f"{age}y " if age is not None else ""
    flag = " EDGE/HUB DISAGREE;" if alert.disagreement else ""
    risk = (alert.hub or alert.edge).deterioration_risk
    if risk is not None:
        parts.append(f"death risk {risk:.0%}")
    return (
        f"{alert.created_at.astimezone(UTC):%H:%M:%S} ALERT KTAS {alert.acuity} {alert.emergency_type.value:<12} "
        f"{age_text}from {alert.device_id} ({alert.incident_id}): {' '.join(parts)} |{flag} "
        f"{alert.reason} [{latency_ms:.0f} ms]"
    )


class HospitalListener:
    def __init__(
        self,
        hospital_id: str,
        parameters: pika.ConnectionParameters,
        record: TextIO | None,
        acknowledge_after_s: float | None = None,
    ):
        self.hospital_id = hospital_id
        self.acknowledge_after_s = acknowledge_after_s
        self.parameters = parameters
        self.record = record
        self.seen: set[str] = set()
        self.received = 0
        self.duplicates = 0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                connection = pika.BlockingConnection(self.parameters)
            except pika.exceptions.AMQPConnectionError as exc:
                log.warning(
                    "AMQP broker %s:%d unreachable (%s); retrying in 2 s",
                    self.parameters.host, self.parameters.port, describe_error(exc),
                )  # fmt: skip
                stop.wait(2)
                continue
            try:
                channel = connection.channel()
                queue = declare_hospital_queue(channel, self.hospital_id)
                channel.basic_qos(prefetch_count=50)
                channel.basic_consume(queue, self._on_message)
                log.info("listening for alerts to %s on queue %s", self.hospital_id, queue)
                while not stop.is_set():
                    connection.process_data_events(time_limit=0.2)
                connection.close()
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError) as exc:
                log.warning("lost the AMQP broker (%s); reconnecting", describe_error(exc))
        log.info("stopped: %d alerts received, %d duplicates", self.received, self.duplicates)

    def _on_message(self, channel, method, properties, body: bytes) -> None:  # noqa: ANN001
        arrived = datetime.now(UTC)
        try:
            message = parse_message(HospitalMessage, body)
        except ContractError as exc:
            log.error("unreadable hospital message rejected: %s", exc)
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        attempt = getattr(message, "attempt", 1)
        key = f"{message.kind}:{message.alert_id}:{attempt}:{getattr(message, 'sequence', '')}"
        duplicate = key in self.seen
        self.seen.add(key)
        self.received += 1
        latency_ms = None
        if isinstance(message, HospitalAlert | AlertUpdate):
            latency_ms = (arrived - message.frame_timestamp).total_seconds() * 1000
        if duplicate:
            self.duplicates += 1
            log.warning("duplicate %s for alert %s ignored", message.kind, message.alert_id)
        else:
            print(format_message(message, latency_ms), flush=True)
            if isinstance(message, HospitalAlert) and self.acknowledge_after_s is not None:
                channel.connection.call_later(
                    self.acknowledge_after_s, lambda: self._acknowledge(channel, message.alert_id)
                )
        if self.record is not None:
            entry = {
                "kind": message.kind,
                "alert_id": message.alert_id,
                "device_id": message.device_id,
                "sequence": getattr(message, "sequence", None),
                "attempt": attempt,
                "escalated_from": getattr(message, "escalated_from", None),
                "acuity": getattr(message, "acuity", None),
                "emergency_type": getattr(getattr(message, "emergency_type", None), "value", None),
                "received_at": arrived.isoformat(),
                "latency_ms": None if latency_ms is None else round(latency_ms, 3),
                "duplicate": duplicate,
            }
            self.record.write(json.dumps(entry) + "\n")
            self.record.flush()
        channel.basic_ack(method.delivery_tag)

    def _acknowledge(self, channel, alert_id: str) -> None:  # noqa: ANN001
        ack = HospitalAck(
            alert_id=alert_id,
            hospital_id=self.hospital_id,
            acknowledged_at=datetime.now(UTC),
            acknowledged_by=f"{self.hospital_id}-listener",
        )
        channel.basic_publish(
            HOSPITAL_ACK_EXCHANGE,
            hospital_ack_routing_key(self.hospital_id),
            ack.model_dump_json().encode(),
            pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent),
        )
        print(f"{ack.acknowledged_at:%H:%M:%S} ACK    {alert_id} by {ack.acknowledged_by}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hospital-listener", description=__doc__.splitlines()[0].replace("`", "")
    )
    parser.add_argument("--hospital", required=True, help="hospital id whose alerts to receive")
    parser.add_argument("--amqp-host", default="127.0.0.1", help="AMQP broker host")
    parser.add_argument("--amqp-port", type=int, default=5672, help="AMQP broker port")
    parser.add_argument(
        "--amqp-username", default="guest", help="AMQP user; password from $HOSPITAL_AMQP_PASSWORD"
    )
    parser.add_argument("--record", type=Path, help="append each message as a JSON line to this file")
    parser.add_argument(
        "--acknowledge-after",
        type=float,
        metavar="SECONDS",
        help="acknowledge each new alert this many seconds after it arrives, as staff would (default: never)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pika logs every failed connection attempt at ERROR with a traceback; the services log one line.
    logging.getLogger("pika").setLevel(logging.CRITICAL)

    try:
        check_id(args.hospital, "hospital id")
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    parameters = pika.ConnectionParameters(
        host=args.amqp_host,
        port=args.amqp_port,
        credentials=pika.PlainCredentials(
            args.amqp_username, os.environ.get("HOSPITAL_AMQP_PASSWORD", "guest")
        ),
        heartbeat=30,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    record = args.record.open("a", encoding="utf-8") if args.record else None
    try:
        HospitalListener(args.hospital, parameters, record, args.acknowledge_after).run(stop)
    finally:
        if record is not None:
            record.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
