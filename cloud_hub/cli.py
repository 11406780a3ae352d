"""`cloud-hub`: run the hub, or check its configuration.

cloud-hub run --amqp-port 5672 --store-url sqlite:///hub.sqlite --hospital general-hospital
cloud-hub check-config hub.toml
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cloud_hub.config import ConfigError, HubConfig, load_config
from cloud_hub.logs import configure_logging

log = logging.getLogger("cloud_hub")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloud-hub", description=__doc__.splitlines()[0].replace("`", ""))
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="consume triage results and send hospital alerts")
    run.add_argument("--config", type=Path, help="TOML configuration file")
    run.add_argument("--amqp-host", help="AMQP broker host ([amqp] host)")
    run.add_argument("--amqp-port", type=int, help="AMQP broker port ([amqp] port)")
    run.add_argument("--amqp-username", help="AMQP user ([amqp] username)")
    run.add_argument("--store-url", help="SQLAlchemy URL of the store (store_url)")
    run.add_argument("--bundle", dest="bundle_dir", type=Path, help="model bundle folder (bundle_dir)")
    run.add_argument(
        "--hospital", dest="hospitals", action="append", help="hospital id to serve, repeatable (hospitals)"
    )
    run.add_argument(
        "--default-hospital",
        dest="default_hospital_id",
        help="hospital for results without one (default_hospital_id)",
    )
    run.add_argument(
        "--http-port", type=int, help="port of the board, probes and metrics; 0 disables (http_port)"
    )
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    run.add_argument("--log-format", choices=["text", "json"], default="text", help="log line format")

    commands.add_parser(
        "definitions",
        help="print the broker definitions (JSON) of the queues that take ambulance results; load "
        "them at broker boot (load_definitions) so no result is published before its queue exists",
    )
    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("config", type=Path)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "amqp": {"host": args.amqp_host, "port": args.amqp_port, "username": args.amqp_username},
        "store_url": args.store_url,
        "bundle_dir": args.bundle_dir,
        "hospitals": args.hospitals,
        "default_hospital_id": args.default_hospital_id,
        "http_port": args.http_port,
    }


def run(config: HubConfig) -> int:
    from cloud_hub.http import HttpServer
    from cloud_hub.scoring import HubScorer
    from cloud_hub.service import HubService
    from cloud_hub.store import HubStore

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s, finishing the current delivery and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    store = HubStore(config.store_url)
    # With an engine process the models load there; the main process never imports TensorFlow.
    scorer = None if config.engine_process else HubScorer(config.bundle_dir)
    service = HubService(config, store, scorer)
    http = HttpServer(service, config.http_host, config.http_port) if config.http_port else None
    if http is not None:
        http.start()
    try:
        service.run(stop)
    finally:
        if http is not None:
            http.stop()
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", "INFO"), getattr(args, "log_format", "text"))
    try:
        if args.command == "definitions":
            from cloud_hub.topology import ingress_definitions

            print(json.dumps(ingress_definitions(), indent=2))
            return 0
        if args.command == "check-config":
            config = load_config(args.config)
            names = ", ".join(hospital.id for hospital in config.hospitals)
            print(f"{args.config}: valid hub configuration, hospitals {names}")
            return 0
        config = load_config(args.config, _overrides(args))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
