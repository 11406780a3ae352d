"""`edge-agent`: run an ambulance's edge agent, or check its configuration.

edge-agent run --device-id amb-01 --mqtt-port 1883 --outbox /var/lib/edge/outbox.sqlite
edge-agent check-config agent.toml
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig, ConfigError, load_config
from edge_agent.inference import EdgeScorer
from edge_agent.outbox import Outbox
from edge_agent.replay import default_data_dir, open_source
from edge_agent.uplink import MqttSettings, MqttUplink, UplinkEvent

log = logging.getLogger("edge_agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0].replace("`", ""))
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="score replayed patients and forward the results")
    run.add_argument("--config", type=Path, help="TOML configuration file")
    run.add_argument("--device-id", help="ambulance id (config key device_id)")
    run.add_argument(
        "--hospital",
        dest="destination_hospital_id",
        help="default destination hospital id (destination_hospital_id)",
    )
    run.add_argument("--outbox", dest="outbox_path", type=Path, help="SQLite outbox file (outbox_path)")
    run.add_argument("--bundle", dest="bundle_dir", type=Path, help="model bundle folder (bundle_dir)")
    run.add_argument(
        "--position",
        type=_position,
        metavar="LAT,LON",
        help="fixed ambulance position in decimal degrees, e.g. 51.5072,-0.1276 (latitude and longitude)",
    )
    run.add_argument("--mqtt-host", help="MQTT broker host ([mqtt] host)")
    run.add_argument("--mqtt-port", type=int, help="MQTT broker port ([mqtt] port)")
    run.add_argument("--mqtt-username", help="MQTT user name ([mqtt] username)")
    run.add_argument(
        "--replay",
        dest="replay_source",
        choices=["ktas", "physionet"],
        help="replay source ([replay] source)",
    )
    run.add_argument(
        "--replay-start", type=int, help="index of the first visit or stay to play ([replay] start)"
    )
    run.add_argument(
        "--replay-interval", type=float, help="seconds between KTAS patients ([replay] interval_s)"
    )
    run.add_argument(
        "--replay-speed", type=float, help="recorded seconds played per second for PhysioNet ([replay] speed)"
    )
    run.add_argument(
        "--data-dir", type=Path, help="folder with ktas/ and physionet-2012/ ([replay] data_dir)"
    )
    run.add_argument(
        "--duration", type=float, help="seconds to replay before stopping (default: until signalled)"
    )
    run.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds to keep delivering after the replay stops"
    )
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")

    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("config", type=Path)
    return parser


def _position(text: str) -> tuple[float, float]:
    try:
        latitude, longitude = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid position {text!r}: expected LAT,LON in decimal degrees, e.g. 51.5072,-0.1276"
        ) from None
    return latitude, longitude


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "device_id": args.device_id,
        "destination_hospital_id": args.destination_hospital_id,
        "outbox_path": args.outbox_path,
        "bundle_dir": args.bundle_dir,
        "latitude": args.position[0] if args.position else None,
        "longitude": args.position[1] if args.position else None,
        "mqtt": {"host": args.mqtt_host, "port": args.mqtt_port, "username": args.mqtt_username},
        "replay": {
            "source": args.replay_source,
            "start": args.replay_start,
            "interval_s": args.replay_interval,
            "speed": args.replay_speed,
            "data_dir": args.data_dir,
        },
    }


def run(config: AgentConfig, duration_s: float | None, drain_timeout_s: float) -> int:
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    replay = config.replay
    try:
        frames = open_source(
            replay.source,
            replay.data_dir or default_data_dir(),
            start=replay.start,
            interval_s=replay.interval_s,
            speed=replay.speed,
            stays=replay.stays,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"replay source {replay.source!r} cannot be opened: {exc}") from exc
    scorer = EdgeScorer(config.bundle_dir)
    try:
        outbox = Outbox(
            config.outbox_path,
            max_rows=config.outbox.max_rows,
            warn_ratio=config.outbox.warn_ratio,
            routine_synchronous=config.outbox.routine_synchronous,
        )
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"outbox {config.outbox_path} cannot be opened ({exc}); move the file aside for inspection and "
            "start again to create a new one"
        ) from exc
    events: queue.Queue[UplinkEvent] = queue.Queue()
    mqtt = config.mqtt
    uplink = MqttUplink(
        MqttSettings(
            host=mqtt.host,
            port=mqtt.port,
            client_id=config.device_id,
            username=mqtt.username,
            password=mqtt.password(),
            keepalive_s=mqtt.keepalive_s,
            reconnect_min_s=mqtt.reconnect_min_s,
            reconnect_max_s=mqtt.reconnect_max_s,
            max_inflight=mqtt.max_inflight,
            tls=mqtt.tls,
            tls_ca_file=mqtt.tls_ca_file,
            tls_cert_file=mqtt.tls_cert_file,
            tls_key_file=mqtt.tls_key_file,
        ),
        events,
    )
    agent = EdgeAgent(
        config.device_id,
        scorer,
        outbox,
        uplink,
        events,
        destination_hospital_id=config.destination_hospital_id,
        window_s=config.window_s,
        window_max_frames=config.window_max_frames,
        position=config.position,
    )
    stats = outbox.stats()
    log.info(
        "edge agent %s starting: outbox %s holds %d pending results, next sequence %d",
        config.device_id, config.outbox_path, stats.pending, stats.next_sequence,
    )  # fmt: skip
    try:
        agent.run(frames, stop, duration_s=duration_s, drain_timeout_s=drain_timeout_s)
    finally:
        outbox.close()
    log.info("edge agent %s stopped", config.device_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "check-config":
            config = load_config(args.config)
            print(f"{args.config}: valid configuration for device {config.device_id}")
            return 0
        config = load_config(args.config, _overrides(args))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        return run(config, args.duration, args.drain_timeout)
    except ConfigError as exc:
        log.error("edge agent cannot start: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
