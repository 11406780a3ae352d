"""Integration fixtures: the hub in a thread, in-process edge agents and an AMQP reader.

Everything talks to the session's real RabbitMQ node. Queues persist for the whole session, so each
test uses its own device and hospital ids and only looks at its own messages.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

from cloud_hub.config import HubConfig
from cloud_hub.scoring import HubScorer
from cloud_hub.service import HubService
from cloud_hub.store import HubStore
from edge_agent.agent import EdgeAgent
from edge_agent.inference import EdgeScorer
from edge_agent.outbox import Outbox
from edge_agent.uplink import MqttSettings, MqttUplink, UplinkEvent
from protocol import Consciousness

pytestmark = pytest.mark.integration

CRITICAL = {
    "hr_bpm": 138, "rr_per_min": 30, "spo2_pct": 86, "sbp_mmhg": 84, "dbp_mmhg": 50, "temp_c": 39.4,
    "consciousness": Consciousness.VOICE, "supplemental_oxygen": True,
}  # fmt: skip
NORMAL = {
    "hr_bpm": 72, "rr_per_min": 14, "spo2_pct": 98, "sbp_mmhg": 124, "dbp_mmhg": 78, "temp_c": 36.8,
    "consciousness": Consciousness.ALERT, "supplemental_oxygen": False,
    "context": {"age_years": 25, "sex": "female", "chief_complaint": "finger laceration", "injury": True, "pain_nrs": 2},
}  # fmt: skip


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(
    condition: Callable[[], bool], timeout_s: float, step: Callable[[], None] | None = None
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if step is not None:
            step()
        else:
            time.sleep(0.05)
    return condition()


@pytest.fixture(scope="session")
def hub_scorer() -> HubScorer:
    return HubScorer()


@pytest.fixture(scope="session")
def edge_scorer() -> EdgeScorer:
    return EdgeScorer()


@dataclass
class RunningHub:
    service: HubService
    store: HubStore
    thread: threading.Thread
    stop: threading.Event
    hospital_id: str

    def shutdown(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "hub thread did not stop"
        self.store.close()


def start_hub(
    amqp_port: int, hub_scorer: HubScorer, store_url: str, hospital_id: str, **settings
) -> RunningHub:
    """Run a hub in a thread; `settings` override HubConfig fields (short timers in tests)."""
    config = HubConfig.model_validate(
        {
            "amqp": {"port": amqp_port, "prefetch": 64},
            "store_url": store_url,
            "hospitals": [hospital_id],
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "http_port": 0,
            # Inline keeps each test's hub start fast; test_pipeline runs the engine process.
            "engine_process": False,
            **settings,
        }
    )
    store = HubStore(config.store_url)
    service = HubService(config, store, hub_scorer)
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), name="hub", daemon=True)
    thread.start()
    return RunningHub(service, store, thread, stop, hospital_id)


@pytest.fixture
def hub(rabbit_node, hub_scorer: HubScorer, store_url: str) -> Iterator[RunningHub]:
    running = start_hub(rabbit_node.amqp_port, hub_scorer, store_url, unique("hospital"))
    # The hub declares the hospital queue on connect; wait for it so alerts have somewhere to go.
    assert wait_until(lambda: hospital_queue_exists(rabbit_node.amqp_port, running.hospital_id), 20)
    yield running
    running.shutdown()


def hospital_queue_exists(amqp_port: int, hospital_id: str) -> bool:
    from protocol.topics import hospital_queue

    try:
        connection = pika.BlockingConnection(pika.ConnectionParameters(port=amqp_port))
    except pika.exceptions.AMQPConnectionError:
        return False
    try:
        channel = connection.channel()
        channel.queue_declare(hospital_queue(hospital_id), passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


@dataclass
class LocalAgent:
    agent: EdgeAgent
    outbox: Outbox
    uplink: MqttUplink

    def pump_until_delivered(self, timeout_s: float) -> bool:
        return wait_until(
            lambda: self.outbox.stats().pending == 0 and self.agent.inflight == 0,
            timeout_s,
            step=lambda: self.agent.pump(0.05),
        )

    def close(self) -> None:
        self.uplink.stop()
        self.outbox.close()


def make_agent(
    device_id: str, mqtt_port: int, outbox_path: Path, scorer: EdgeScorer, hospital_id: str
) -> LocalAgent:
    events: queue.Queue[UplinkEvent] = queue.Queue()
    uplink = MqttUplink(
        MqttSettings(
            host="127.0.0.1", port=mqtt_port, client_id=device_id, reconnect_min_s=1, reconnect_max_s=2
        ),
        events,
    )
    outbox = Outbox(outbox_path)
    agent = EdgeAgent(device_id, scorer, outbox, uplink, events, destination_hospital_id=hospital_id)
    return LocalAgent(agent, outbox, uplink)


def read_queue(
    amqp_port: int, queue_name: str, max_messages: int = 1000
) -> list[tuple[pika.spec.BasicProperties, bytes, str]]:
    """Fetch and acknowledge the messages now in a queue, as (properties, body, routing key)."""
    connection = pika.BlockingConnection(pika.ConnectionParameters(port=amqp_port))
    messages = []
    try:
        channel = connection.channel()
        for _ in range(max_messages):
            method, properties, body = channel.basic_get(queue_name, auto_ack=True)
            if method is None:
                break
            messages.append((properties, body, method.routing_key))
    finally:
        connection.close()
    return messages
