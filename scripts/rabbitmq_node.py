"""A private RabbitMQ node with the MQTT plugin, for development, the demo, tests and CI.

    python -m scripts.rabbitmq_node start|status|stop [--name ambulance-dev] [--amqp-port 5682] ...

The node uses Debian's `rabbitmq-server` package, installed through apt when missing, with its own
node name, ports, Erlang cookie and data directory, so it neither needs nor disturbs a broker that
already runs on the machine (the system broker usually holds 5672 and 25672, Mosquitto 1883). The
server runs as the current user straight from /usr/lib/rabbitmq/bin, bypassing Debian's wrapper,
which would switch to the `rabbitmq` user; every path it writes lies under the data directory.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("rabbitmq_node")

PROJECT_DIR = Path(__file__).resolve().parents[1]
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SERVER = RABBITMQ_BIN / "rabbitmq-server"
CTL = RABBITMQ_BIN / "rabbitmqctl"


class NodeError(RuntimeError):
    """The node could not be installed, started or stopped; the text says what to do."""


@dataclass
class RabbitNode:
    name: str = "ambulance-dev"
    amqp_port: int = 5682
    mqtt_port: int = 1893
    dist_port: int = 25682
    data_dir: Path = field(default=Path())
    # MQTT over TLS: a port and a folder holding ca.pem, server.pem and server.key.
    mqtt_tls_port: int | None = None
    tls_dir: Path | None = None
    # False requires every MQTT client to log in with its own user (see `add_user`).
    allow_anonymous: bool = True

    def __post_init__(self) -> None:
        if self.data_dir == Path():
            self.data_dir = PROJECT_DIR / ".run" / "rabbitmq" / self.name
        # RabbitMQ resolves paths from its own working folder, so relative ones would point elsewhere.
        self.data_dir = self.data_dir.resolve()

    @property
    def node_name(self) -> str:
        return f"{self.name}@localhost"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "log" / f"{self.node_name}.log"

    def env(self) -> dict[str, str]:
        """Environment for the server and rabbitmqctl: every path and port is this node's own."""
        env = dict(os.environ)
        env.update(
            HOME=str(self.data_dir),  # the Erlang cookie lives here
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_CONF_ENV_FILE=str(self.data_dir / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.data_dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.data_dir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.data_dir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.data_dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.data_dir / "log"),
            RABBITMQ_PID_FILE=str(self.data_dir / "node.pid"),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            # No scheduler busy-waiting: this node shares its machine with the hub and the agents,
            # and Erlang's default spinning takes CPU time from them (RabbitMQ, "Runtime Tuning").
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none"
            ),
        )
        return env

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "rabbitmq-env.conf").write_text("", encoding="utf-8")
        (self.data_dir / "advanced.config").write_text("[].\n", encoding="utf-8")
        (self.data_dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n", encoding="utf-8")
        # The hub's ingress queues exist from boot, before any ambulance can publish (see
        # cloud_hub.topology.ingress_definitions).
        from cloud_hub.topology import ingress_definitions

        definitions = self.data_dir / "definitions.json"
        content = {**ingress_definitions(), **_guest_definitions()}
        definitions.write_text(json.dumps(content, indent=2), encoding="utf-8")
        lines = [
            f"load_definitions = {definitions}",
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}",
            "log.console = false",
            "log.file.level = info",
        ]
        if self.allow_anonymous:
            # Anonymous MQTT clients act as guest, whom RabbitMQ admits from loopback only.
            lines += ["mqtt.allow_anonymous = true", "mqtt.default_user = guest", "mqtt.default_pass = guest"]
        else:
            lines += ["mqtt.allow_anonymous = false"]
        if self.mqtt_tls_port is not None:
            if self.tls_dir is None:
                raise NodeError("mqtt_tls_port needs tls_dir with ca.pem, server.pem and server.key")
            lines += [
                f"mqtt.listeners.ssl.default = 127.0.0.1:{self.mqtt_tls_port}",
                f"ssl_options.cacertfile = {self.tls_dir / 'ca.pem'}",
                f"ssl_options.certfile = {self.tls_dir / 'server.pem'}",
                f"ssl_options.keyfile = {self.tls_dir / 'server.key'}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        (self.data_dir / "rabbitmq.conf").write_text("\n".join([*lines, ""]), encoding="utf-8")

    def _pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "node.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def is_running(self) -> bool:
        return self._pid() is not None and _port_open(self.amqp_port) and _port_open(self.mqtt_port)

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the node unless it already runs; return once AMQP and MQTT accept connections."""
        if self.is_running():
            log.info(
                "node %s already running (AMQP %d, MQTT %d)", self.node_name, self.amqp_port, self.mqtt_port
            )
            return
        ensure_installed()
        for port, what in (
            (self.amqp_port, "AMQP"),
            (self.mqtt_port, "MQTT"),
            (self.dist_port, "Erlang distribution"),
        ):
            if _port_open(port):
                raise NodeError(
                    f"{what} port {port} is already in use by another process; stop it or pick other "
                    f"ports (--amqp-port, --mqtt-port, --dist-port)"
                )
        self._write_config()
        output = (self.data_dir / "server-output.log").open("ab")
        started = time.monotonic()
        log.info("starting RabbitMQ node %s in %s", self.node_name, self.data_dir)
        process = subprocess.Popen(
            [str(SERVER)],
            env=self.env(),
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the caller: stopping is an explicit step
        )
        output.close()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise NodeError(
                    f"RabbitMQ node {self.node_name} exited with status {process.returncode} during "
                    f"start-up; see {self.data_dir / 'server-output.log'} and {self.log_file}"
                )
            tls_ready = self.mqtt_tls_port is None or _port_open(self.mqtt_tls_port)
            if _port_open(self.amqp_port) and _port_open(self.mqtt_port) and tls_ready:
                log.info(
                    "node %s ready in %.1f s: AMQP 127.0.0.1:%d, MQTT 127.0.0.1:%d",
                    self.node_name, time.monotonic() - started, self.amqp_port, self.mqtt_port,
                )  # fmt: skip
                return
            time.sleep(0.25)
        process.terminate()
        raise NodeError(
            f"RabbitMQ node {self.node_name} did not listen on AMQP {self.amqp_port} and MQTT "
            f"{self.mqtt_port} within {timeout_s:.0f} s; see {self.log_file}"
        )

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the node gracefully, killing it if it does not stop within `timeout_s`."""
        pid = self._pid()
        if pid is None:
            log.info("node %s is not running", self.node_name)
            return
        log.info("stopping RabbitMQ node %s (pid %d)", self.node_name, pid)
        try:
            subprocess.run(
                [str(CTL), "-n", self.node_name, "shutdown"],
                env=self.env(),
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.warning("rabbitmqctl shutdown timed out after %.0f s", timeout_s)
        deadline = time.monotonic() + 10
        while self._pid() is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._pid() is not None:
            log.warning("node %s still running; killing pid %d", self.node_name, pid)
            os.kill(pid, signal.SIGKILL)
        (self.data_dir / "node.pid").unlink(missing_ok=True)

    def ctl(self, *args: str, timeout_s: float = 60.0) -> str:
        """Run rabbitmqctl against this node; raise NodeError with its output when it fails."""
        completed = subprocess.run(
            [str(CTL), "-n", self.node_name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if completed.returncode != 0:
            raise NodeError(
                f"rabbitmqctl {' '.join(args)} failed: {completed.stderr.strip() or completed.stdout}"
            )
        return completed.stdout

    def add_device_user(self, device_id: str, password: str) -> None:
        """Create an MQTT user for one ambulance that may use only its own topics and session queue.

        The MQTT plugin names a client's subscription queue `mqtt-subscription-<client id>qos<n>` and
        publishes to `amq.topic`; topic permissions limit routing keys to `ambulance.<device>.*`.
        """
        own_queue = f"mqtt-subscription-{device_id}qos"
        self.ctl("add_user", device_id, password)
        self.ctl(
            "set_permissions", "-p", "/", device_id,
            f"^{own_queue}", f"^(amq\\.topic|{own_queue}.*)$", f"^(amq\\.topic|{own_queue}.*)$",
        )  # fmt: skip
        own_topics = f"^ambulance\\.{device_id}\\..*"
        self.ctl("set_topic_permissions", "-p", "/", device_id, "amq.topic", own_topics, own_topics)

    def kill(self) -> None:
        """Kill the node abruptly (SIGKILL), as a crash or power loss would."""
        pid = self._pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _port_open(self.amqp_port) and time.monotonic() < deadline:
                time.sleep(0.1)

    def status(self) -> str:
        if self.is_running():
            return (
                f"{self.node_name} running: AMQP 127.0.0.1:{self.amqp_port}, MQTT 127.0.0.1:{self.mqtt_port}"
            )
        return f"{self.node_name} not running"


def _guest_definitions() -> dict:
    """Return the default vhost and the `guest` user, which RabbitMQ skips when it loads definitions.

    RabbitMQ admits `guest` from loopback only. The hash is RabbitMQ's salted SHA-256 format:
    base64(salt + sha256(salt + password)).
    """
    salt = os.urandom(4)
    password_hash = base64.b64encode(salt + hashlib.sha256(salt + b"guest").digest()).decode()
    return {
        "vhosts": [{"name": "/"}],
        "users": [
            {
                "name": "guest",
                "password_hash": password_hash,
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["administrator"],
            },
        ],  # fmt: skip
        "permissions": [{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
    }


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def ensure_installed() -> None:
    """Install Debian's rabbitmq-server through apt when its binaries are missing."""
    from scripts.system_packages import PackageError, ensure_packages

    if SERVER.exists() and CTL.exists():
        return
    try:
        ensure_packages({"rabbitmq-server": SERVER})
    except PackageError as exc:
        raise NodeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start, check or stop a private RabbitMQ node with MQTT.")
    parser.add_argument("action", choices=["start", "status", "stop"])
    parser.add_argument("--name", default="ambulance-dev", help="node name before @localhost")
    parser.add_argument("--amqp-port", type=int, default=5682)
    parser.add_argument("--mqtt-port", type=int, default=1893)
    parser.add_argument("--dist-port", type=int, default=25682, help="Erlang distribution port")
    parser.add_argument("--data-dir", type=Path, help="default: .run/rabbitmq/NAME in the project")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for start or stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = RabbitNode(args.name, args.amqp_port, args.mqtt_port, args.dist_port, args.data_dir or Path())
    try:
        if args.action == "start":
            node.start(args.timeout)
        elif args.action == "stop":
            node.stop(args.timeout)
        print(node.status())
    except NodeError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
