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


def declare_hub_topology(channel: BlockingChannel) -> None:
    channel.exchange_declare(DEAD_LETTER_EXCHANGE, exchange_type="fanout", durable=True)
    channel.queue_declare(DEAD_LETTER_QUEUE, durable=True, arguments=QUORUM)
    channel.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE)
    triage_arguments = {
        **QUORUM,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-delivery-limit": DELIVERY_LIMIT,
    }
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
