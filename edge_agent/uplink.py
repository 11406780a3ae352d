"""MQTT uplink to RabbitMQ's MQTT plugin (paho-mqtt 2.x, MQTT 3.1.1, QoS 1, persistent session).

One network thread owns the connection: it connects, runs paho's loop and, when the link drops,
reconnects after a capped exponential backoff with jitter, so a fleet that regains coverage at the
same moment does not reconnect in lockstep. Callbacks only put events on a queue; the agent's thread
consumes them, so the outbox is touched by one thread alone.

A message that paho has accepted stays in paho's session until its PUBACK arrives, and paho
retransmits it after a reconnect. The agent publishes a row again only after a restart of the
process, when paho's memory is gone and the outbox is all that remains.

Presence: the agent connects with a retained last-will `offline` on `ambulance/<device>/status` and
publishes a retained `online` birth message after each connect. It subscribes to its feedback topic,
where the hub reports what happened to each pre-alert.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from protocol.topics import feedback_topic, status_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UplinkEvent:
    kind: str  # "connected", "disconnected", "puback" or "feedback"
    mid: int | None = None
    detail: str = ""
    payload: bytes = b""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))  # when the network thread saw it


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 10.0
    max_inflight: int = 100
    tls: bool = False
    tls_ca_file: Path | None = None  # the CA that signed the broker's certificate; the system's if None
    tls_cert_file: Path | None = None  # client certificate, when the broker requests one
    tls_key_file: Path | None = None
    connect_timeout_s: float = 5.0


def backoff_delay(attempt: int, minimum_s: float, maximum_s: float, rng: random.Random) -> float:
    """Return the wait before reconnect attempt `attempt` (1 for the first retry).

    The cap doubles from `minimum_s` up to `maximum_s`. The wait is drawn between half the cap and
    the cap ("equal jitter"), so it never drops to zero and clients spread out.
    """
    cap = min(maximum_s, minimum_s * 2 ** max(0, attempt - 1))
    return rng.uniform(cap / 2, cap)


class MqttUplink:
    def __init__(self, settings: MqttSettings, events: queue.Queue[UplinkEvent], *, seed: int | None = None):
        self.settings = settings
        self.events = events
        self.connected = False
        self.connects = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random(seed)
        self._failed_attempts = 0
        self._connack_received = False
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            client.tls_set(
                ca_certs=str(settings.tls_ca_file) if settings.tls_ca_file else None,
                certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
                keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.connect_timeout = settings.connect_timeout_s
        client.max_inflight_messages_set(settings.max_inflight)
        client.max_queued_messages_set(0)  # 0 means unbounded; the agent bounds what it hands over
        client.will_set(status_topic(settings.client_id), self._presence("offline"), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        # Without a loop_start() thread, paho writes a publish() straight to the socket from the
        # caller's thread, racing the network thread's writes and reordering packets. With this
        # callback set, publish() only queues the packet and wakes the network thread.
        client.on_socket_register_write = _leave_writes_to_network_thread
        self._client = client

    def _presence(self, state: str) -> str:
        return json.dumps(
            {"device_id": self.settings.client_id, "state": state, "at": datetime.now(UTC).isoformat()}
        )

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and reconnect in a background thread until `stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.settings.client_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Say goodbye (retained `offline`), disconnect and end the network thread."""
        if self.connected:
            info = self._client.publish(
                status_topic(self.settings.client_id), self._presence("offline"), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass  # the link went meanwhile: the broker publishes the last will instead
        self._stop.set()
        self._client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        attempt = 0
        first = True
        while not self._stop.is_set():
            connects_before = self.connects
            if attempt:
                delay = backoff_delay(
                    attempt, self.settings.reconnect_min_s, self.settings.reconnect_max_s, self._rng
                )
                if self._stop.wait(delay):
                    break
            if first:
                log.info(
                    "connecting to MQTT broker %s:%d as %s%s",
                    self.settings.host, self.settings.port, self.settings.client_id,
                    " over TLS" if self.settings.tls else "",
                )  # fmt: skip
                first = False
            try:
                # paho keeps unacknowledged QoS 1 messages across connect() and retransmits them.
                self._client.connect(self.settings.host, self.settings.port, self.settings.keepalive_s)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                attempt += 1
                self._failed_attempts += 1
                log.warning(
                    "MQTT broker %s:%d unreachable (%s, attempt %d); results stay in the outbox, retrying",
                    self.settings.host, self.settings.port, exc, self._failed_attempts,
                )  # fmt: skip
                continue
            rc = mqtt.MQTT_ERR_SUCCESS
            while not self._stop.is_set() and rc == mqtt.MQTT_ERR_SUCCESS:
                rc = self._client.loop(timeout=0.05)
                if self._connack_received:
                    self._announce_connected()
            if self._stop.is_set():
                # Let paho send the DISCONNECT that stop() queued.
                deadline = time.monotonic() + 1.0
                while (
                    time.monotonic() < deadline and self._client.loop(timeout=0.05) == mqtt.MQTT_ERR_SUCCESS
                ):
                    pass
                break
            # The loop ended on a lost link (or a refused CONNECT); back off before trying again.
            # A link that was up retries soon; a refused CONNECT (bad credentials) backs off further.
            attempt = 1 if self.connects > connects_before else attempt + 1
            self._mark_disconnected(mqtt.error_string(rc))

    # --- publishing -------------------------------------------------------------------------------

    def publish(self, topic: str, payload: str) -> int | None:
        """Hand a QoS 1 message to paho; return its message id, or None if paho refused it.

        A message published while the link is down is kept by paho and sent after the reconnect, so
        MQTT_ERR_NO_CONN counts as accepted.
        """
        info = self._client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish on %s not accepted: %s", topic, mqtt.error_string(info.rc))
            return None
        return info.mid

    # --- paho callbacks (network thread) ---------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            # Wrong credentials or a refused client id: retrying will not help until the operator
            # fixes the configuration, but the agent keeps its results and keeps trying.
            log.error(
                "MQTT broker refused the connection as %s: %s; check the device's MQTT user and password",
                self.settings.client_id, reason,
            )  # fmt: skip
            return
        self._failed_attempts = 0
        log.info("connected to MQTT broker (session present: %s)", flags.session_present)
        client.publish(status_topic(self.settings.client_id), self._presence("online"), qos=1, retain=True)
        client.subscribe(feedback_topic(self.settings.client_id), qos=1)
        # paho calls this before it retransmits the messages still unacknowledged from the last
        # connection. The agent may publish only after those, or a new result would overtake them.
        self._connack_received = True

    def _announce_connected(self) -> None:
        self._connack_received = False
        self.connected = True
        self.connects += 1
        self.events.put(UplinkEvent("connected"))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._mark_disconnected(str(reason))

    def _mark_disconnected(self, detail: str) -> None:
        self._connack_received = False
        if not self.connected:
            return
        self.connected = False
        if self._stop.is_set():
            log.info("disconnected from MQTT broker")
        else:
            log.warning("disconnected from MQTT broker (%s); reconnecting with backoff", detail)
        self.events.put(UplinkEvent("disconnected", detail=detail))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self.events.put(UplinkEvent("puback", mid=mid))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.events.put(UplinkEvent("feedback", detail=message.topic, payload=bytes(message.payload)))


def _leave_writes_to_network_thread(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Do nothing: the network thread's `loop()` writes whatever publish() queued."""
