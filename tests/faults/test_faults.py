"""Store-and-forward under faults: cut, half-open and slow links, lost PUBACKs, a reconnect storm, a
broker restart, `kill -9` of an agent in a burst and a hub restart, against a real RabbitMQ node.

Each agent reaches the broker through its own `FaultProxy`. A test passes only if every result the
agents created reaches the hub's store once, in order per device and priority class, and each alert
reaches the hospital once. `make soak` runs the same scenarios for longer (scripts/soak.py).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.inference import EdgeScorer
from edge_agent.outbox import Outbox
from edge_agent.uplink import MqttSettings, MqttUplink, UplinkEvent
from protocol.topics import hospital_queue
from scripts.rabbitmq_node import RabbitNode
from tests.conftest import private_node
from tests.integration.conftest import CRITICAL, NORMAL, read_queue, start_hub, unique, wait_until

from .checks import describe_out_of_order, edge_rows, hub_rows, out_of_order
from .proxy import FaultProxy

pytestmark = pytest.mark.integration

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fault_node() -> Iterator[RabbitNode]:
    """A node of this module's own, so restarting it disturbs no other test."""
    with private_node("ambulance-faults", 5694, 1905, 25694) as node:
        yield node


class Driver:
    """An in-process agent behind a proxy, fed a stream of frames by its own thread."""

    def __init__(self, node: RabbitNode, folder: Path, hospital: str, *, keepalive_s: int = 30):
        self.device_id = unique("amb")
        self.proxy = FaultProxy("127.0.0.1", node.mqtt_port).start()
        self.events: queue.Queue[UplinkEvent] = queue.Queue()
        self.uplink = MqttUplink(
            MqttSettings(
                host="127.0.0.1", port=self.proxy.port, client_id=self.device_id, keepalive_s=keepalive_s,
                reconnect_min_s=0.2, reconnect_max_s=1.0,
            ),
            self.events,
        )  # fmt: skip
        self.outbox_path = folder / f"{self.device_id}.sqlite"
        self.outbox = Outbox(self.outbox_path)
        # A LiteRT interpreter serves one thread; an ambulance runs one agent per process anyway.
        self.agent = EdgeAgent(
            self.device_id,
            EdgeScorer(),
            self.outbox,
            self.uplink,
            self.events,
            destination_hospital_id=hospital,
        )
        self._stop = threading.Event()
        self._producing = threading.Event()
        self._thread: threading.Thread | None = None
        self.created = 0

    def start(self, rate_per_s: float, urgent_every: int = 5) -> None:
        self.uplink.start()
        self._producing.set()
        self._thread = threading.Thread(target=self._run, args=(rate_per_s, urgent_every), daemon=True)
        self._thread.start()

    def _run(self, rate_per_s: float, urgent_every: int) -> None:
        interval = 1.0 / rate_per_s
        next_frame = time.monotonic()
        while not self._stop.is_set():
            if self._producing.is_set() and time.monotonic() >= next_frame:
                values = CRITICAL if self.created % urgent_every == 0 else NORMAL
                self.agent.handle_frame(f"incident-{self.created // 10}", values)
                self.created += 1
                next_frame += interval
            self.agent.pump(0.01)

    def pause(self) -> None:
        self._producing.clear()

    def finish(self, timeout_s: float = 30.0) -> bool:
        """Stop producing, wait until the outbox is empty, stop the thread; True if all was delivered."""
        self._producing.clear()
        delivered = wait_until(lambda: self.outbox_depth() == 0 and self.agent.inflight == 0, timeout_s)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return delivered

    def outbox_depth(self) -> int:
        return sum(not row.delivered for row in edge_rows(self.outbox_path, self.device_id))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.uplink.stop()
        self.outbox.close()
        self.proxy.stop()


def drain_all(drivers: list[Driver], store_path: Path, timeout_s: float = 30.0) -> None:
    """Stop producing, let every agent empty its outbox and wait until the hub stored everything."""
    for driver in drivers:
        assert driver.finish(timeout_s), f"{driver.device_id} did not drain"
    total = sum(driver.created for driver in drivers)
    assert wait_until(lambda: len(hub_rows(store_path)) == total, timeout_s), "the hub did not catch up"


def assert_reconciled(
    drivers: list[Driver], store_path: Path, amqp_port: int, hospital: str, *, copies_allowed: bool = False
) -> None:
    """Check that every result was stored once and in order, and that each alert reached the hospital.

    `copies_allowed`: the broker or the hub restarted, so an alert whose confirmation was lost may
    arrive again with the same id and attempt (the hub publishes at least once).
    """
    stored = hub_rows(store_path)
    for driver in drivers:
        rows = edge_rows(driver.outbox_path, driver.device_id)
        created = {row.sequence for row in rows}
        assert created == set(range(driver.created)), f"{driver.device_id}: outbox lost a sequence number"
        assert all(row.delivered for row in rows), f"{driver.device_id}: results left undelivered"
        at_hub = [row.sequence for row in stored if row.device_id == driver.device_id]
        assert sorted(at_hub) == sorted(created), f"{driver.device_id}: hub store differs from what was sent"
    keys = Counter((row.device_id, row.sequence) for row in stored)
    assert max(keys.values()) == 1, "the hub stored a result twice"
    assert out_of_order(stored) == 0, describe_out_of_order(stored)
    alerts = [json.loads(body) for _, body, _ in read_queue(amqp_port, hospital_queue(hospital), 100_000)]
    first = Counter(
        (alert["alert_id"], alert["attempt"]) for alert in alerts if alert["kind"] == "hospital_alert"
    )
    assert first, "no alert reached the hospital"
    if not copies_allowed:
        assert max(first.values()) == 1, "an alert reached the hospital twice"


@pytest.fixture
def hub_setup(fault_node: RabbitNode, hub_scorer, tmp_path: Path):
    hospital = unique("hospital")
    store_path = tmp_path / "hub.sqlite"
    running = start_hub(
        fault_node.amqp_port, hub_scorer, f"sqlite:///{store_path}", hospital, ack_timeout_s=3600
    )
    assert running.service.ready.wait(60), "hub did not start"
    yield running, store_path, hospital
    if running.thread.is_alive():
        running.shutdown()


def test_cuts_and_slow_link_lose_nothing(fault_node, hub_setup, tmp_path: Path) -> None:
    running, store_path, hospital = hub_setup
    drivers = [Driver(fault_node, tmp_path, hospital) for _ in range(2)]
    try:
        for driver in drivers:
            driver.start(rate_per_s=40)
        time.sleep(1)
        for cut in range(3):
            drivers[cut % 2].proxy.cut()
            time.sleep(1.5)
            drivers[cut % 2].proxy.restore()
            time.sleep(0.5)
        drivers[0].proxy.slow(0.2)
        time.sleep(1)
        drivers[0].proxy.restore()
        drain_all(drivers, store_path)
    finally:
        for driver in drivers:
            driver.close()
    assert_reconciled(drivers, store_path, fault_node.amqp_port, hospital)


def test_backlog_drains_urgent_first(fault_node, hub_setup, tmp_path: Path) -> None:
    running, store_path, hospital = hub_setup
    driver = Driver(fault_node, tmp_path, hospital)
    try:
        driver.proxy.cut()  # no coverage from the start
        driver.start(rate_per_s=200, urgent_every=20)
        assert wait_until(lambda: driver.created >= 200, 20)
        driver.pause()
        driver.proxy.restore()
        drain_all([driver], store_path)
    finally:
        driver.close()
    stored = [row for row in hub_rows(store_path) if row.device_id == driver.device_id]
    urgent_count = sum(row.urgent for row in stored)
    assert urgent_count >= 10
    assert all(row.urgent for row in stored[:urgent_count]), "a routine result overtook an urgent one"
    assert_reconciled([driver], store_path, fault_node.amqp_port, hospital)


def test_half_open_link_recovers(fault_node, hub_setup, tmp_path: Path) -> None:
    """The broker 'dies silently': the socket stays up, writes succeed, nothing comes back."""
    running, store_path, hospital = hub_setup
    driver = Driver(fault_node, tmp_path, hospital, keepalive_s=2)
    try:
        driver.start(rate_per_s=20)
        assert wait_until(lambda: driver.uplink.connected, 10)
        time.sleep(0.5)
        driver.proxy.blackhole()
        time.sleep(1.0)
        assert driver.uplink.connected  # the client has not noticed yet: that is the failure mode
        assert wait_until(lambda: not driver.uplink.connected, 10), "keepalive did not detect the dead link"
        driver.proxy.restore()
        drain_all([driver], store_path)
    finally:
        driver.close()
    assert_reconciled([driver], store_path, fault_node.amqp_port, hospital)


def test_puback_lost_at_cut_gives_no_second_alert(fault_node, hub_setup, tmp_path: Path) -> None:
    running, store_path, hospital = hub_setup
    driver = Driver(fault_node, tmp_path, hospital)
    try:
        driver.uplink.start()
        assert wait_until(lambda: driver.uplink.connected, 10)
        driver.proxy.drop_downstream()
        driver.agent.handle_frame("incident-1", CRITICAL)
        driver.created = 1
        driver.agent.pump(0.05)
        # The broker has it and the hub stores it, but the PUBACK never reaches the agent.
        assert wait_until(lambda: len(hub_rows(store_path)) == 1, 10, step=lambda: driver.agent.pump(0.05))
        assert driver.outbox.stats().pending == 1
        driver.proxy.cut()
        driver.proxy.restore()
        assert wait_until(
            lambda: driver.outbox.stats().pending == 0, 20, step=lambda: driver.agent.pump(0.05)
        ), "the re-sent result was never confirmed"
        assert wait_until(lambda: running.service.counters.duplicates >= 1, 10)
    finally:
        driver.close()
    assert_reconciled([driver], store_path, fault_node.amqp_port, hospital)


def test_reconnect_storm_spreads_and_delivers(fault_node, hub_setup, tmp_path: Path) -> None:
    running, store_path, hospital = hub_setup
    drivers = [Driver(fault_node, tmp_path, hospital) for _ in range(12)]
    try:
        for driver in drivers:
            driver.start(rate_per_s=5)
        assert wait_until(lambda: all(d.uplink.connected for d in drivers), 20)
        for driver in drivers:
            driver.proxy.cut()
        time.sleep(2)
        for driver in drivers:
            driver.proxy.restore()
        assert wait_until(lambda: all(d.uplink.connected for d in drivers), 20), "not every agent reconnected"
        drain_all(drivers, store_path)
    finally:
        for driver in drivers:
            driver.close()
    assert_reconciled(drivers, store_path, fault_node.amqp_port, hospital)


def test_broker_restart_loses_nothing(fault_node, hub_setup, tmp_path: Path) -> None:
    running, store_path, hospital = hub_setup
    drivers = [Driver(fault_node, tmp_path, hospital) for _ in range(2)]
    try:
        for driver in drivers:
            driver.start(rate_per_s=30)
        time.sleep(1.5)
        fault_node.stop()
        time.sleep(1)
        fault_node.start()
        drain_all(drivers, store_path, 60)
    finally:
        for driver in drivers:
            driver.close()
    assert_reconciled(drivers, store_path, fault_node.amqp_port, hospital, copies_allowed=True)


def test_hub_restart_in_flight(fault_node, hub_scorer, tmp_path: Path) -> None:
    hospital = unique("hospital")
    store_path = tmp_path / "hub.sqlite"
    url = f"sqlite:///{store_path}"
    running = start_hub(fault_node.amqp_port, hub_scorer, url, hospital, ack_timeout_s=3600)
    assert running.service.ready.wait(60)
    driver = Driver(fault_node, tmp_path, hospital)
    try:
        driver.start(rate_per_s=100)
        time.sleep(1)
        running.shutdown()  # stops while results keep arriving
        time.sleep(1)
        running = start_hub(fault_node.amqp_port, hub_scorer, url, hospital, ack_timeout_s=3600)
        drain_all([driver], store_path)
    finally:
        driver.close()
        running.shutdown()
    assert_reconciled([driver], store_path, fault_node.amqp_port, hospital, copies_allowed=True)


def _bind_side_queue(amqp_port: int, device_id: str) -> str:
    with pika.BlockingConnection(pika.ConnectionParameters(port=amqp_port)) as connection:
        channel = connection.channel()
        name = channel.queue_declare(f"faults.{device_id}.copy", durable=True).method.queue
        for lane in ("triage", "urgent"):
            channel.queue_bind(name, "amq.topic", routing_key=f"ambulance.{device_id}.{lane}")
    return name


def _purge(amqp_port: int, name: str) -> None:
    with pika.BlockingConnection(pika.ConnectionParameters(port=amqp_port)) as connection:
        connection.channel().queue_purge(name)


def _agent_command(device_id: str, outbox: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "edge_agent.cli", "run", "--device-id", device_id, "--outbox", str(outbox),
        "--mqtt-port", str(port), "--hospital", "st-marys", *extra,
    ]  # fmt: skip


def test_kill9_agent_resends_exactly_unconfirmed(fault_node, tmp_path: Path) -> None:
    """`kill -9` in a burst: after a restart the agent sends exactly the rows it had not seen confirmed."""
    device = unique("amb")
    outbox_path = tmp_path / "outbox.sqlite"
    side = _bind_side_queue(fault_node.amqp_port, device)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
    with FaultProxy("127.0.0.1", fault_node.mqtt_port) as proxy:
        proxy.slow(0.05)  # keeps PUBACKs outstanding, so the kill lands with rows in flight
        burst = subprocess.Popen(
            _agent_command(device, outbox_path, proxy.port, "--replay-interval", "0.005"),
            cwd=PROJECT_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert wait_until(lambda: _delivered(outbox_path) >= 20, 60)
        finally:
            burst.send_signal(signal.SIGKILL)
            burst.wait(10)
        proxy.cut()  # drops what the dead agent still had on the wire
        time.sleep(1)
        _purge(fault_node.amqp_port, side)
        unconfirmed = {row.sequence for row in edge_rows(outbox_path, device) if not row.delivered}
        assert unconfirmed, "the kill found nothing in flight; the test proves nothing"
        proxy.restore()
        restart = subprocess.run(
            _agent_command(device, outbox_path, proxy.port, "--duration", "0", "--drain-timeout", "30"),
            cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert restart.returncode == 0, restart.stderr[-2000:]
    resent = [json.loads(body)["sequence"] for _, body, _ in read_queue(fault_node.amqp_port, side, 100_000)]
    assert Counter(resent) == Counter(unconfirmed)
    assert all(row.delivered for row in edge_rows(outbox_path, device))


def _delivered(outbox_path: Path) -> int:
    if not outbox_path.exists():
        return 0
    try:
        return sum(row.delivered for row in edge_rows(outbox_path, "unused"))
    except sqlite3.OperationalError:  # the agent has not created its tables yet
        return 0
