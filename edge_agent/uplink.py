"""MQTT uplink to RabbitMQ's MQTT plugin (paho-mqtt 2.x, MQTT 3.1.1, QoS 1, persistent session).

paho runs the network loop in its own thread and reconnects by itself. Its callbacks only put events
on a queue; the agent's thread consumes them, so the outbox is touched by one thread alone. A message
that paho has accepted stays in paho's session until its PUBACK arrives, and paho retransmits it after
a reconnect; the agent publishes a row again only after a restart of the process, when paho's memory
is gone and the outbox is all that remains.
"""

from __future__ import annotations

import json
import logging
import queue
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from protocol.topics import status_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UplinkEvent:
    kind: str  # "connected", "disconnected" or "puback"
    mid: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    max_inflight: int = 100


class MqttUplink:
    def __init__(self, settings: MqttSettings, events: queue.Queue[UplinkEvent]):
        self.settings = settings
        self.events = events
        self.connected = False
        self._stopping = False
        self._failed_attempts = 0
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        client.max_inflight_messages_set(settings.max_inflight)
        client.max_queued_messages_set(0)  # 0 means unbounded; the agent bounds what it hands over
        client.reconnect_delay_set(
            min_delay=max(1, round(settings.reconnect_min_s)),
            max_delay=max(1, round(settings.reconnect_max_s)),
        )
        client.will_set(
            status_topic(settings.client_id), json.dumps({"state": "offline"}), qos=1, retain=False
        )
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    def start(self) -> None:
        """Connect in the background; paho keeps retrying until the broker answers."""
        log.info(
            "connecting to MQTT broker %s:%d as %s",
            self.settings.host, self.settings.port, self.settings.client_id,
        )  # fmt: skip
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive_s)
        self._client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

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

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            # Wrong credentials or a refused client id: paho retries, and so would we, but the
            # operator must fix the configuration.
            log.error("MQTT broker refused the connection: %s", reason)
            return
        self.connected = True
        self._failed_attempts = 0
        log.info("connected to MQTT broker (session present: %s)", flags.session_present)
        client.publish(status_topic(self.settings.client_id), json.dumps({"state": "online"}), qos=1)
        self.events.put(UplinkEvent("connected"))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._failed_attempts += 1
        # paho doubles its delay after each failure, so a line per failure stays readable.
        log.warning(
            "MQTT broker %s:%d unreachable (attempt %d); results stay in the outbox, retrying",
            self.settings.host, self.settings.port, self._failed_attempts,
        )  # fmt: skip

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected = self.connected
        self.connected = False
        if self._stopping:
            log.info("disconnected from MQTT broker")
        elif was_connected:
            log.warning("disconnected from MQTT broker: %s; paho reconnects with backoff", reason)
        self.events.put(UplinkEvent("disconnected", detail=str(reason)))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self.events.put(UplinkEvent("puback", mid=mid))
