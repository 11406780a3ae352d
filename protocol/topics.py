"""MQTT topics, AMQP exchanges, queues and routing keys shared by every component.

RabbitMQ's MQTT plugin publishes MQTT messages to the `amq.topic` exchange and turns the topic's
`/` separators into `.`, so `ambulance/amb-01/triage` arrives with routing key `ambulance.amb-01.triage`.
"""

from __future__ import annotations

import re

# Device and hospital ids become one level of an MQTT topic and one word of an AMQP routing key, so
# they must not contain `/`, `.`, `+`, `#` or spaces.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_ID_RE = re.compile(ID_PATTERN)

MQTT_EXCHANGE = "amq.topic"

TRIAGE_BINDING_KEY = "ambulance.*.triage"
CONTROL_BINDING_KEY = "ambulance.*.control"
HUB_TRIAGE_QUEUE = "hub.triage"
# Urgent results travel in a lane of their own, so after a fleet-wide reconnect they do not wait in
# the hub's queue behind every ambulance's routine backlog. Order is kept within each lane.
URGENT_BINDING_KEY = "ambulance.*.urgent"
HUB_URGENT_QUEUE = "hub.triage.urgent"

DEAD_LETTER_EXCHANGE = "hub.dead-letter"
DEAD_LETTER_QUEUE = "hub.triage.dead-letter"
# Headers the hub sets on a message it dead-letters itself.
REJECTION_REASON_HEADER = "x-rejection-reason"
ORIGINAL_ROUTING_KEY_HEADER = "x-original-routing-key"

HOSPITAL_EXCHANGE = "hospital.alerts"
HOSPITAL_ACK_EXCHANGE = "hospital.acks"
HOSPITAL_ACK_BINDING_KEY = "hospital.*.ack"
HUB_ACK_QUEUE = "hub.hospital-acks"


def check_id(value: str, what: str) -> str:
    """Return `value` if it is usable as a topic level and routing-key word, else raise ValueError."""
    if not _ID_RE.match(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1 to 64 letters, digits, '-' or '_', starting with a "
            "letter or digit"
        )
    return value


def triage_topic(device_id: str) -> str:
    return f"ambulance/{check_id(device_id, 'device id')}/triage"


def urgent_topic(device_id: str) -> str:
    """Return the topic of a device's urgent results (alert-worthy), consumed ahead of routine ones."""
    return f"ambulance/{check_id(device_id, 'device id')}/urgent"


def status_topic(device_id: str) -> str:
    return f"ambulance/{check_id(device_id, 'device id')}/status"


def control_topic(device_id: str) -> str:
    return f"ambulance/{check_id(device_id, 'device id')}/control"


def feedback_topic(device_id: str) -> str:
    return f"ambulance/{check_id(device_id, 'device id')}/feedback"


def feedback_routing_key(device_id: str) -> str:
    """Return the amq.topic routing key that reaches MQTT subscribers of the feedback topic."""
    return mqtt_topic_to_routing_key(feedback_topic(device_id))


def mqtt_topic_to_routing_key(topic: str) -> str:
    """Return the AMQP routing key RabbitMQ's MQTT plugin uses for an MQTT topic."""
    return topic.replace("/", ".")


def device_id_from_routing_key(routing_key: str) -> str | None:
    """Return the device of an `ambulance.<device>.triage`, `.urgent` or `.control` routing key, else None."""
    parts = routing_key.split(".")
    if len(parts) == 3 and parts[0] == "ambulance" and parts[2] in ("triage", "urgent", "control"):
        return parts[1]
    return None


def hospital_routing_key(hospital_id: str) -> str:
    return f"hospital.{check_id(hospital_id, 'hospital id')}.alert"


def hospital_ack_routing_key(hospital_id: str) -> str:
    return f"hospital.{check_id(hospital_id, 'hospital id')}.ack"


def hospital_queue(hospital_id: str) -> str:
    return f"hospital.{check_id(hospital_id, 'hospital id')}.alerts"
