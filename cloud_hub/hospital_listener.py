"""`hospital-listener`: print one line per pre-alert that reaches one hospital.

    hospital-listener --hospital general-hospital --amqp-port 5672 [--record alerts.jsonl]

The hospital's queue is durable, so alerts sent while the listener is down wait for it. Each alert
is acknowledged after it is printed (and recorded), and an alert id seen before is reported as a
duplicate instead of printed again.
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
from protocol import ContractError, HospitalAlert, parse_message
from protocol.topics import check_id

log = logging.getLogger("hospital_listener")


def format_alert(alert: HospitalAlert, latency_ms: float) -> str:
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
    def __init__(self, hospital_id: str, parameters: pika.ConnectionParameters, record: TextIO | None):
        self.hospital_id = hospital_id
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
            alert = parse_message(HospitalAlert, body)
        except ContractError as exc:
            log.error("unreadable alert rejected: %s", exc)
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        latency_ms = (arrived - alert.frame_timestamp).total_seconds() * 1000
        duplicate = alert.alert_id in self.seen
        self.seen.add(alert.alert_id)
        self.received += 1
        if duplicate:
            self.duplicates += 1
            log.warning("duplicate alert %s ignored", alert.alert_id)
        else:
            print(format_alert(alert, latency_ms), flush=True)
        if self.record is not None:
            entry = {
                "alert_id": alert.alert_id,
                "device_id": alert.device_id,
                "sequence": alert.sequence,
                "acuity": alert.acuity,
                "emergency_type": alert.emergency_type.value,
                "frame_timestamp": alert.frame_timestamp.isoformat(),
                "received_at": arrived.isoformat(),
                "latency_ms": round(latency_ms, 3),
                "duplicate": duplicate,
            }
            self.record.write(json.dumps(entry) + "\n")
            self.record.flush()
        channel.basic_ack(method.delivery_tag)


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
    parser.add_argument("--record", type=Path, help="append each alert as a JSON line to this file")
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
        HospitalListener(args.hospital, parameters, record).run(stop)
    finally:
        if record is not None:
            record.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
