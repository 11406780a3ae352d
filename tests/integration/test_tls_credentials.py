"""MQTT over TLS with per-device credentials, against a RabbitMQ node that admits no anonymous client."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import queue
import time
from pathlib import Path

import pika
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.agent import EdgeAgent
from edge_agent.outbox import Outbox
from edge_agent.uplink import MqttSettings, MqttUplink, UplinkEvent
from tests.conftest import private_node

from .conftest import CRITICAL, wait_until

DEVICE = "amb-tls"
PASSWORD = "correct-horse-battery"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_certificates(folder: Path) -> None:
    """Write a throwaway CA and a server certificate for 127.0.0.1 and localhost."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("ambulance test CA"))
        .issuer_name(_name("ambulance test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _certificates_in(folder: Path) -> Path:
    write_certificates(folder / "tls")
    return folder / "tls"


@pytest.fixture(scope="module")
def tls_node():
    options = {"mqtt_tls_port": 8893, "tls_dir": _certificates_in, "allow_anonymous": False}
    with private_node("ambulance-tls", 5692, 1903, 25692, **options) as node:
        node.add_device_user(DEVICE, PASSWORD)
        assert node.tls_dir is not None
        yield node, node.tls_dir


def _agent(tmp_path: Path, edge_scorer, tls_dir: Path, password: str) -> tuple[EdgeAgent, MqttUplink]:
    events: queue.Queue[UplinkEvent] = queue.Queue()
    settings = MqttSettings(
        host="127.0.0.1",
        port=8893,
        client_id=DEVICE,
        username=DEVICE,
        password=password,
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
        tls=True,
        tls_ca_file=tls_dir / "ca.pem",
    )
    uplink = MqttUplink(settings, events)
    outbox = Outbox(tmp_path / f"{password}.sqlite")
    agent = EdgeAgent(DEVICE, edge_scorer, outbox, uplink, events, destination_hospital_id="st-marys")
    return agent, uplink


def _bind_side_queue(amqp_port: int) -> str:
    with pika.BlockingConnection(pika.ConnectionParameters(port=amqp_port)) as connection:
        channel = connection.channel()
        name = channel.queue_declare("", exclusive=False, auto_delete=False).method.queue
        for lane in ("triage", "urgent"):
            channel.queue_bind(name, "amq.topic", routing_key=f"ambulance.{DEVICE}.{lane}")
    return name


def _queue_depth(amqp_port: int, name: str) -> int:
    with pika.BlockingConnection(pika.ConnectionParameters(port=amqp_port)) as connection:
        return connection.channel().queue_declare(name, passive=True).method.message_count


def test_device_credentials_over_tls_deliver(tls_node, edge_scorer, tmp_path: Path) -> None:
    node, tls_dir = tls_node
    side = _bind_side_queue(node.amqp_port)
    agent, uplink = _agent(tmp_path, edge_scorer, tls_dir, PASSWORD)
    try:
        uplink.start()
        agent.handle_frame("incident-1", CRITICAL)
        assert wait_until(lambda: agent.outbox.stats().pending == 0, 20, step=lambda: agent.pump(0.05))
        assert wait_until(lambda: _queue_depth(node.amqp_port, side) == 1, 10)
    finally:
        uplink.stop()
        agent.outbox.close()


def test_wrong_password_keeps_results(tls_node, edge_scorer, tmp_path: Path, caplog) -> None:
    node, tls_dir = tls_node
    agent, uplink = _agent(tmp_path, edge_scorer, tls_dir, "wrong-password")
    try:
        with caplog.at_level(logging.ERROR, logger="edge_agent.uplink"):
            uplink.start()
            agent.handle_frame("incident-1", CRITICAL)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                agent.pump(0.05)
        assert not uplink.connected
        assert agent.outbox.stats().pending == 1
        assert "refused the connection" in caplog.text
    finally:
        uplink.stop()
        agent.outbox.close()


def test_tls_rejects_untrusted_broker(tls_node, edge_scorer, tmp_path: Path, caplog) -> None:
    """A CA that did not sign the broker's certificate: the agent never sends in clear or to an impostor."""
    node, tls_dir = tls_node
    other = tmp_path / "other-ca"
    write_certificates(other)
    events: queue.Queue[UplinkEvent] = queue.Queue()
    uplink = MqttUplink(
        MqttSettings(
            host="127.0.0.1", port=8893, client_id=DEVICE, username=DEVICE, password=PASSWORD,
            reconnect_min_s=0.2, reconnect_max_s=1.0, tls=True, tls_ca_file=other / "ca.pem",
        ),
        events,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="edge_agent.uplink"):
        uplink.start()
        time.sleep(2)
        uplink.stop()
    assert uplink.connects == 0
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
