"""AMQP topology of the hub: the triage queue, its dead-letter queue and the hospital queues.

Declarations are idempotent, and the hub and the hospital listener declare with the same arguments,
so either may start first. Every queue is a durable quorum queue: it survives a broker restart and,
in a cluster, the loss of a minority of nodes.
"""

from __future__ import annotations

from pika.adapters.blocking_connection import BlockingChannel

from protocol.topics import (
    CONTROL_BINDING_KEY,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    HOSPITAL_ACK_BINDING_KEY,
    HOSPITAL_ACK_EXCHANGE,
    HOSPITAL_EXCHANGE,
    HUB_ACK_QUEUE,
    HUB_TRIAGE_QUEUE,
    HUB_URGENT_QUEUE,
    MQTT_EXCHANGE,
    TRIAGE_BINDING_KEY,
    URGENT_BINDING_KEY,
    hospital_queue,
    hospital_routing_key,
)

# A message redelivered this many times (the hub crashed on it each time) goes to the dead-letter
# queue instead of crashing the hub again.
DELIVERY_LIMIT = 5

QUORUM = {"x-queue-type": "quorum"}


def _triage_arguments() -> dict:
    return {**QUORUM, "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE, "x-delivery-limit": DELIVERY_LIMIT}


def ingress_definitions(vhost: str = "/") -> dict:
    """Return the queues that take the ambulances' results, in RabbitMQ's definitions format.

    A broker must have them before the first ambulance publishes: RabbitMQ confirms a message that
    no queue takes (PUBACK) and drops it, so an agent would mark a result delivered that no hub
    will ever see. Load this file at broker boot (`load_definitions`) or run
    `cloud-hub declare-topology` before any ambulance connects.
    """

    def queue(name: str, arguments: dict) -> dict:
        return {"name": name, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": arguments}

    def binding(source: str, queue_name: str, routing_key: str) -> dict:
        return {
            "source": source, "vhost": vhost, "destination": queue_name, "destination_type": "queue",
            "routing_key": routing_key, "arguments": {},
        }  # fmt: skip

    return {
        "exchanges": [
            {
                "name": DEAD_LETTER_EXCHANGE,
                "vhost": vhost,
                "type": "fanout",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            },
        ],  # fmt: skip
        "queues": [
            queue(DEAD_LETTER_QUEUE, QUORUM),
            queue(HUB_TRIAGE_QUEUE, _triage_arguments()),
            queue(HUB_URGENT_QUEUE, _triage_arguments()),
        ],
        "bindings": [
            binding(DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, ""),
            binding(MQTT_EXCHANGE, HUB_TRIAGE_QUEUE, TRIAGE_BINDING_KEY),
            binding(MQTT_EXCHANGE, HUB_TRIAGE_QUEUE, CONTROL_BINDING_KEY),
            binding(MQTT_EXCHANGE, HUB_URGENT_QUEUE, URGENT_BINDING_KEY),
        ],
    }


def declare_hub_topology(channel: BlockingChannel) -> None:
    channel.exchange_declare(DEAD_LETTER_EXCHANGE, exchange_type="fanout", durable=True)
    channel.queue_declare(DEAD_LETTER_QUEUE, durable=True, arguments=QUORUM)
    channel.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE)
    triage_arguments = _triage_arguments()
    channel.queue_declare(HUB_TRIAGE_QUEUE, durable=True, arguments=triage_arguments)
    channel.queue_bind(HUB_TRIAGE_QUEUE, MQTT_EXCHANGE, routing_key=TRIAGE_BINDING_KEY)
    channel.queue_bind(HUB_TRIAGE_QUEUE, MQTT_EXCHANGE, routing_key=CONTROL_BINDING_KEY)
    channel.queue_declare(HUB_URGENT_QUEUE, durable=True, arguments=triage_arguments)
    channel.queue_bind(HUB_URGENT_QUEUE, MQTT_EXCHANGE, routing_key=URGENT_BINDING_KEY)
    channel.exchange_declare(HOSPITAL_EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(HOSPITAL_ACK_EXCHANGE, exchange_type="topic", durable=True)
    channel.queue_declare(HUB_ACK_QUEUE, durable=True, arguments=QUORUM)
    channel.queue_bind(HUB_ACK_QUEUE, HOSPITAL_ACK_EXCHANGE, routing_key=HOSPITAL_ACK_BINDING_KEY)


def declare_hospital_queue(channel: BlockingChannel, hospital_id: str) -> str:
    channel.exchange_declare(HOSPITAL_EXCHANGE, exchange_type="topic", durable=True)
    name = hospital_queue(hospital_id)
    channel.queue_declare(name, durable=True, arguments=QUORUM)
    channel.queue_bind(name, HOSPITAL_EXCHANGE, routing_key=hospital_routing_key(hospital_id))
    return name
