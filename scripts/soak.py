"""Soak test of store-and-forward under faults: `make soak`, not part of `make test`.

    python -m scripts.soak [--agents 5] [--cuts 20] [--broker-restarts 5] [--hub-restarts 3]

Starts a private RabbitMQ node, the hub (engine process, SQLite store), a hospital listener and edge
agents replaying KTAS arrivals, each agent behind its own fault proxy. While they run it cuts agents'
links for 10 to 30 s, restarts the broker, kills the hub (`kill -9`, and once SIGTERM) and kills an
agent with `kill -9` in the middle of its stream. Then it restores every link, lets the agents drain,
stops everything and writes a JSON summary (`soak-summary.json`):

- `sent`: results the broker confirmed to the agents; `stored_by_hub`; `lost` (sent, never stored);
  `pending_on_edges` (left undelivered at the end)
- `duplicate_alerts`: alerts the hospital showed twice (the same alert id and attempt)
- `redelivered_alert_copies`: copies the hospital received again and dropped by alert id. The hub
  publishes at least once, so a broker restart or a hub crash before a confirmation is recorded
  makes it publish an alert again
- `out_of_order`: results the hub stored after a higher sequence number of the same ambulance and
  priority class (urgent results overtake routine ones after a reconnect on purpose)
- `max_drain_rate_per_s`: the fastest backlog drain of one agent after a reconnect, from the
  reconnect to the last backlog result stored by the hub, over backlogs of 200 results or more
- `fleet_drain`: at the end every link is cut for `--fleet-cut-s` and restored at once; the backlog
  of all agents and its rate, from the restore to the last backlog result stored
- `first_urgent_after_reconnect_ms`: from an agent's reconnect to the hub storing the first urgent
  result of its backlog, over one agent's reconnects after link cuts while the broker and the hub
  were up (the fleet-wide reconnect is reported under `fleet_drain`)

The command exits 1 if anything was lost, duplicated or stored out of order.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from scripts.rabbitmq_node import RabbitNode
from tests.faults.checks import (
    alert_copies,
    duplicate_alerts,
    edge_rows,
    hub_rows,
    link_events,
    out_of_order,
    read_alert_records,
)
from tests.faults.proxy import FaultProxy

log = logging.getLogger("soak")

PROJECT_DIR = Path(__file__).resolve().parents[1]
HOSPITAL = "st-marys"
DRAIN_BACKLOG_MIN = 200

HUB_CONFIG = """\
default_hospital_id = "st-marys"
ack_timeout_s = 3600
http_port = 0
report_every_s = 30
reconnect_min_s = 0.5
reconnect_max_s = 2.0

[[hospitals]]
id = "st-marys"
name = "St Mary's Hospital"

[amqp]
port = {amqp_port}
"""

AGENT_CONFIG = """\
device_id = "{device_id}"
destination_hospital_id = "st-marys"
outbox_path = "{outbox}"

[mqtt]
port = {port}
keepalive_s = 10
reconnect_min_s = 0.5
reconnect_max_s = 4.0

[replay]
start = {start}
interval_s = {interval_s}
"""


@dataclass
class Child:
    """A child process whose output is appended to a log file across restarts."""

    name: str
    command: list[str]
    log_path: Path
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_path.open("a", encoding="utf-8") as output:
            self.popen = subprocess.Popen(
                self.command, cwd=PROJECT_DIR, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )

    def signal(self, signum: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signum)

    def wait(self, timeout_s: float) -> int | None:
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout_s)
            self.popen.kill()
            return self.popen.wait()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        self.signal(signal.SIGTERM)
        return self.wait(timeout_s)


@dataclass
class Faults:
    cuts: int = 0
    broker_restarts: int = 0
    hub_restarts: int = 0
    agent_kills: int = 0
    # Times when the broker or the hub was down, so reconnects then are not judged on latency.
    outages: list[tuple[datetime, datetime]] = field(default_factory=list)
    fleet_restored_at: datetime | None = None


def _python(*module_args: str) -> list[str]:
    return [sys.executable, "-m", *module_args]


def _now() -> datetime:
    return datetime.now(UTC)


def build_schedule(args: argparse.Namespace, rng: random.Random) -> list[tuple[float, str, int, float]]:
    """Return (start second, fault, agent index, duration) events, sorted by start."""
    events: list[tuple[float, str, int, float]] = []
    span = args.fault_span_s
    for index in range(args.cuts):
        start = 8 + index * (span - 40) / max(1, args.cuts)
        events.append((start, "cut", index % args.agents, rng.uniform(10, 30)))
    for index in range(args.broker_restarts):
        events.append((15 + (index + 0.5) * (span - 30) / max(1, args.broker_restarts), "broker", -1, 0))
    for index in range(args.hub_restarts):
        events.append((20 + (index + 0.3) * (span - 40) / max(1, args.hub_restarts), "hub", index, 0))
    for index in range(args.agent_kills):
        events.append((30 + index * 40, "kill_agent", index % args.agents, 3))
    return sorted(events)


def run(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    run_dir = PROJECT_DIR / ".run" / "soak" / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    node = RabbitNode(
        name="ambulance-soak", amqp_port=5696, mqtt_port=1907, dist_port=25696, data_dir=run_dir / "rabbitmq"
    )
    node.start()

    hub_config = run_dir / "hub.toml"
    hub_config.write_text(HUB_CONFIG.format(amqp_port=node.amqp_port), encoding="utf-8")
    store = run_dir / "hub.sqlite"
    hub = Child(
        "hub",
        _python("cloud_hub.cli", "run", "--config", str(hub_config), "--store-url", f"sqlite:///{store}"),
        run_dir / "hub.log",
    )
    listener = Child(
        "listener",
        _python(
            "cloud_hub.hospital_listener", "--hospital", HOSPITAL, "--amqp-port", str(node.amqp_port),
            "--record", str(run_dir / "alerts.jsonl"),
        ),
        run_dir / "listener.log",
    )  # fmt: skip

    proxies = [FaultProxy("127.0.0.1", node.mqtt_port).start() for _ in range(args.agents)]
    agents = []
    for index, proxy in enumerate(proxies):
        device_id = f"soak-{index + 1:02d}"
        config = run_dir / f"{device_id}.toml"
        config.write_text(
            AGENT_CONFIG.format(
                device_id=device_id, outbox=run_dir / f"{device_id}.sqlite", port=proxy.port,
                start=index * 150, interval_s=1 / args.rate,
            ),
            encoding="utf-8",
        )  # fmt: skip
        command = _python("edge_agent.cli", "run", "--config", str(config), "--drain-timeout", "120")
        agents.append(Child(device_id, command, run_dir / f"{device_id}.log"))

    faults = Faults()
    try:
        hub.start()
        listener.start()
        time.sleep(8)  # the hub's engine process loads TensorFlow
        for agent in agents:
            agent.start()
        log.info("soak running in %s: %d agents at %.0f results/s each", run_dir, args.agents, args.rate)
        _play(build_schedule(args, rng), node, hub, agents, proxies, faults)
        _fleet_drain(proxies, faults, args.fleet_cut_s)

        time.sleep(5)
        for agent in agents:
            agent.signal(signal.SIGTERM)
        for agent in agents:
            agent.wait(180)
        total_sent = sum(
            sum(row.delivered for row in edge_rows(run_dir / f"{agent.name}.sqlite", agent.name))
            for agent in agents
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(hub_rows(store)) < total_sent:
            time.sleep(1)
        time.sleep(3)  # the last alerts reach the listener

    finally:
        for agent in agents:
            agent.stop(30)
        listener.stop(15)
        hub.stop(60)
        for proxy in proxies:
            proxy.stop()
        node.stop()

    summary = summarize(run_dir, [agent.name for agent in agents], faults, args)
    if not args.keep_broker_data:
        shutil.rmtree(run_dir / "rabbitmq", ignore_errors=True)
    return summary


def _fleet_drain(proxies: list[FaultProxy], faults: Faults, cut_s: float) -> None:
    """Restore every link, then cut them all at once and restore them at once: the fleet's drain."""
    log.info("faults done; restoring every link")
    for proxy in proxies:
        proxy.restore()
    time.sleep(10)

    log.info("fleet drain: every link cut for %.0f s, then restored at once", cut_s)
    for proxy in proxies:
        proxy.cut()
    time.sleep(cut_s)
    faults.fleet_restored_at = _now()
    for proxy in proxies:
        proxy.restore()
    log.info("links restored; letting the agents drain")


def _play(schedule, node: RabbitNode, hub: Child, agents: list[Child], proxies, faults: Faults) -> None:  # noqa: ANN001
    started = time.monotonic()
    restores: list[tuple[float, int]] = []
    agent_restarts: list[tuple[float, int]] = []
    pending = list(schedule)
    while pending or restores or agent_restarts:
        elapsed = time.monotonic() - started
        for due, index in [item for item in restores if item[0] <= elapsed]:
            restores.remove((due, index))
            if not any(other == index for _, other in restores):
                proxies[index].restore()
                log.info("link of %s restored", agents[index].name)
        for due, index in [item for item in agent_restarts if item[0] <= elapsed]:
            agent_restarts.remove((due, index))
            agents[index].start()
            log.info("%s restarted after kill -9", agents[index].name)
        while pending and pending[0][0] <= elapsed:
            _, kind, index, duration = pending.pop(0)
            if kind == "cut":
                proxies[index].cut()
                restores.append((elapsed + duration, index))
                faults.cuts += 1
                log.info("cut %d: %s offline for %.0f s", faults.cuts, agents[index].name, duration)
            elif kind == "broker":
                down = _now()
                log.info("broker restart %d", faults.broker_restarts + 1)
                node.stop()
                time.sleep(2)
                node.start()
                faults.broker_restarts += 1
                faults.outages.append((down, _now() + timedelta(seconds=10)))
            elif kind == "hub":
                down = _now()
                kill_signal = signal.SIGTERM if index == 1 else signal.SIGKILL
                log.info("hub restart %d (%s)", faults.hub_restarts + 1, kill_signal.name)
                hub.signal(kill_signal)
                hub.wait(60)
                time.sleep(2)
                hub.start()
                faults.hub_restarts += 1
                faults.outages.append((down, _now() + timedelta(seconds=15)))
            elif kind == "kill_agent":
                agents[index].signal(signal.SIGKILL)
                agents[index].wait(10)
                faults.agent_kills += 1
                agent_restarts.append((elapsed + duration, index))
                log.info("%s killed with kill -9", agents[index].name)
        time.sleep(0.1)


def summarize(run_dir: Path, devices: list[str], faults: Faults, args: argparse.Namespace) -> dict:
    stored = [row for row in hub_rows(run_dir / "hub.sqlite") if row.device_id in devices]
    stored_keys = {(row.device_id, row.sequence) for row in stored}
    received_at = {(row.device_id, row.sequence): row.received_at for row in stored}
    sent: set[tuple[str, int]] = set()
    created_at: dict[tuple[str, int], datetime] = {}
    pending = 0
    drain_rates: list[float] = []
    first_urgent_ms: list[float] = []
    fleet_first_urgent_ms: dict[str, float] = {}
    for device in devices:
        outbox = run_dir / f"{device}.sqlite"
        rows = edge_rows(outbox, device)
        sent |= {(device, row.sequence) for row in rows if row.delivered}
        pending += sum(not row.delivered for row in rows)
        created = {row.sequence: row.created_at for row in rows}
        created_at.update({(device, sequence): made for sequence, made in created.items()})
        urgent = {row.sequence for row in rows if row.urgent}
        for at, state in link_events(outbox):
            if state != "online":
                continue
            backlog = [
                sequence for sequence, made in created.items()
                if made < at and (device, sequence) in received_at and received_at[(device, sequence)] >= at
            ]  # fmt: skip
            if len(backlog) >= DRAIN_BACKLOG_MIN:
                last = max(received_at[(device, sequence)] for sequence in backlog)
                drain_rates.append(len(backlog) / max((last - at).total_seconds(), 1e-3))
            urgent_backlog = [received_at[(device, sequence)] for sequence in backlog if sequence in urgent]
            if not urgent_backlog:
                continue
            wait_ms = (min(urgent_backlog) - at).total_seconds() * 1000
            restored = faults.fleet_restored_at
            if restored is not None and restored <= at <= restored + timedelta(seconds=30):
                fleet_first_urgent_ms[device] = round(wait_ms, 1)
            elif not any(start <= at <= end for start, end in faults.outages):
                first_urgent_ms.append(wait_ms)
    alerts = read_alert_records(run_dir / "alerts.jsonl")
    fleet_rate = None
    fleet_backlog = 0
    if faults.fleet_restored_at is not None:
        restored = faults.fleet_restored_at
        backlog_rows = [
            row for row in stored
            if row.received_at >= restored and created_at[(row.device_id, row.sequence)] < restored
        ]  # fmt: skip
        fleet_backlog = len(backlog_rows)
        if backlog_rows:
            last = max(row.received_at for row in backlog_rows)
            fleet_rate = round(fleet_backlog / max((last - restored).total_seconds(), 1e-3), 1)
    return {
        "agents": len(devices),
        "duration_s": args.fault_span_s,
        "faults": {
            "link_cuts": faults.cuts,
            "broker_restarts": faults.broker_restarts,
            "hub_restarts": faults.hub_restarts,
            "agent_kills": faults.agent_kills,
        },
        "sent": len(sent),
        "stored_by_hub": len(stored_keys),
        "lost": len(sent - stored_keys),
        "pending_on_edges": pending,
        "hub_rows": len(stored),
        "alerts_received": len(alerts),
        "duplicate_alerts": duplicate_alerts(alerts),
        "redelivered_alert_copies": alert_copies(alerts),
        "out_of_order": out_of_order(stored),
        "max_drain_rate_per_s": round(max(drain_rates), 1) if drain_rates else None,
        "drain_rates_measured": len(drain_rates),
        "fleet_drain": {
            "backlog": fleet_backlog,
            "rate_per_s": fleet_rate,
            "first_urgent_ms": dict(sorted(fleet_first_urgent_ms.items(), key=lambda item: item[1])),
        },
        "first_urgent_after_reconnect_ms": {
            "max": round(max(first_urgent_ms), 1) if first_urgent_ms else None,
            "p50": round(statistics.median(first_urgent_ms), 1) if first_urgent_ms else None,
            "reconnects": len(first_urgent_ms),
        },
        "run_dir": str(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--rate", type=float, default=20.0, help="results per second per agent")
    parser.add_argument("--cuts", type=int, default=20, help="link cuts of 10 to 30 s")
    parser.add_argument("--broker-restarts", type=int, default=5)
    parser.add_argument("--hub-restarts", type=int, default=3)
    parser.add_argument("--agent-kills", type=int, default=2, help="kill -9 of an agent mid-stream")
    parser.add_argument(
        "--fault-span-s", type=float, default=240.0, help="seconds over which faults are spread"
    )
    parser.add_argument(
        "--fleet-cut-s",
        type=float,
        default=60.0,
        help="the last cut, of every link at once, for the drain rate",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--summary", type=Path, default=PROJECT_DIR / "soak-summary.json")
    parser.add_argument("--keep-broker-data", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faults.proxy").setLevel(logging.WARNING)
    os.environ.setdefault("PYTHONPATH", str(PROJECT_DIR))

    summary = run(args)
    text = json.dumps(summary, indent=2)
    print(text)
    args.summary.write_text(text + "\n", encoding="utf-8")
    healthy = summary["lost"] == 0 and summary["duplicate_alerts"] == 0 and summary["out_of_order"] == 0
    healthy = healthy and summary["pending_on_edges"] == 0
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
