"""Malformed messages are dead-lettered with their reason and the hub keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as mqtt

from protocol.topics import DEAD_LETTER_QUEUE, REJECTION_REASON_HEADER, triage_topic

from .conftest import CRITICAL, make_agent, read_queue, unique, wait_until


def publish_raw(port: int, client_id: str, topic: str, payloads: list[bytes]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(topic, payload, qos=1).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_malformed_messages_dead_lettered_with_reason(rabbit_node, hub, edge_scorer, tmp_path: Path) -> None:
    device = unique("amb")
    good = make_agent(device, rabbit_node.mqtt_port, tmp_path / "outbox.sqlite", edge_scorer, hub.hospital_id)
    try:
        good.uplink.start()
        result = good.agent.handle_frame("incident-1", CRITICAL)
        valid = json.loads(result.model_dump_json())
        impossible = json.loads(result.model_dump_json())
        impossible["sequence"] = 99
        impossible["window"][0]["hr_bpm"] = 420
        spoofed = dict(valid, sequence=98)

        publish_raw(
            rabbit_node.mqtt_port,
            unique("raw"),
            triage_topic(device),
            [b"{not json", json.dumps(impossible).encode()],
        )
        publish_raw(
            rabbit_node.mqtt_port, unique("raw"), triage_topic("someone-else"), [json.dumps(spoofed).encode()]
        )
        assert wait_until(lambda: hub.service.counters.dead_lettered >= 3, 15)

        # The hub is still serving: a valid result that follows is stored.
        assert good.pump_until_delivered(15)
        assert wait_until(lambda: (device, 0) in hub.store.result_keys(), 15)
    finally:
        good.close()

    assert hub.thread.is_alive()
    dead = read_queue(rabbit_node.amqp_port, DEAD_LETTER_QUEUE)
    reasons = {
        body: properties.headers[REJECTION_REASON_HEADER]
        for properties, body, routing_key in dead
        if device in routing_key or b"someone-else" in body or routing_key.endswith("someone-else.triage")
    }
    assert reasons[b"{not json"].startswith("invalid message: (message): Invalid JSON")
    impossible_reason = reasons[json.dumps(impossible).encode()]
    assert "window.0.hr_bpm" in impossible_reason
    assert "420" in impossible_reason
    spoofed_reason = reasons[json.dumps(spoofed).encode()]
    assert "differs from 'someone-else'" in spoofed_reason
    assert (device, 98) not in hub.store.result_keys()
    assert (device, 99) not in hub.store.result_keys()
