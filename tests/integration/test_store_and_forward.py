"""An edge agent that starts while the broker is down keeps its results and delivers each once."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from protocol import HospitalAlert, parse_message
from protocol.topics import hospital_queue
from scripts.rabbitmq_node import RabbitNode

from .conftest import CRITICAL, NORMAL, make_agent, read_queue, start_hub, unique, wait_until

RESULTS = 20


@pytest.fixture
def late_node(tmp_path: Path):
    """A second node, on ports of its own, that the test starts only when it wants the broker up."""
    node = RabbitNode(
        name="ambulance-late", amqp_port=5688, mqtt_port=1899, dist_port=25688, data_dir=tmp_path / "node"
    )
    if node.is_running():
        node.stop()
    yield node
    node.stop()
    shutil.rmtree(tmp_path / "node", ignore_errors=True)


def test_results_kept_offline_then_delivered_once(
    late_node: RabbitNode, edge_scorer, hub_scorer, tmp_path: Path
) -> None:
    device = unique("amb")
    hospital = unique("hospital")
    local = make_agent(device, late_node.mqtt_port, tmp_path / "outbox.sqlite", edge_scorer, hospital)
    hub = None
    try:
        local.uplink.start()
        for number in range(RESULTS):
            values = CRITICAL if number % 4 == 0 else NORMAL
            assert local.agent.handle_frame(f"incident-{number // 4}", values) is not None
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            local.agent.pump(0.05)
        stats = local.outbox.stats()
        assert not local.uplink.connected
        assert stats.pending == RESULTS
        assert stats.delivered == 0

        late_node.start()
        # Delivered before any hub ran: the broker's boot definitions must already hold the queue,
        # or RabbitMQ would confirm and drop every result.
        assert local.pump_until_delivered(60), f"still pending: {local.outbox.stats()}"
        hub = start_hub(late_node.amqp_port, hub_scorer, f"sqlite:///{tmp_path / 'hub.sqlite'}", hospital)
        expected = {(device, sequence) for sequence in range(RESULTS)}
        assert wait_until(lambda: expected <= hub.store.result_keys(), 20)
        assert wait_until(lambda: hub.store.counts().get("alerts_delivered", 0) == RESULTS // 4, 10)
    finally:
        local.close()
        if hub is not None:
            hub.shutdown()

    assert hub.store.result_keys() == expected
    assert hub.service.counters.stored == RESULTS
    assert hub.service.counters.duplicates == 0
    alerts = [
        parse_message(HospitalAlert, body)
        for _, body, _ in read_queue(late_node.amqp_port, hospital_queue(hospital))
    ]
    assert sorted(alert.sequence for alert in alerts) == [0, 4, 8, 12, 16]
