"""End-to-end demo: real patients replayed on four ambulances, alerts arriving at two hospitals.

    python -m scripts.demo [--duration 60] [--summary demo-summary.json]

Starts a private RabbitMQ node with a fresh data directory, the hub, one hospital listener per
hospital and the edge agents, and prints alerts as they arrive. The hospital boards are live at
http://127.0.0.1:8084/board/st-marys and /board/city-general while it runs. St Mary's acknowledges
each alert after a few seconds; City General never does, so its alerts are re-sent and then
escalated to St Mary's, its backup. At the end the demo stops the replay, lets the agents drain their
outboxes, stops everything and writes a JSON summary that reconciles what the ambulances sent with
what the hub stored and what the hospitals received.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from scripts.rabbitmq_node import PROJECT_DIR, NodeError, RabbitNode

log = logging.getLogger("demo")

HOSPITALS = ("st-marys", "city-general")
ACKNOWLEDGE_AFTER_S = {"st-marys": 3.0}  # City General never acknowledges
HTTP_PORT = 8084
ACK_TIMEOUT_S = 8.0
# The hospital listener's line kinds worth showing on the demo's console.
HOSPITAL_LINE_WORDS = (" ALERT ", " UPDATE ", " RESENT ", " ESCALATED ", " CANCEL ")

# The hub's settings for the demo: the example registry (fictional hospitals, one with PCI, a stroke
# centre and level 1 trauma, each the other's backup) and short acknowledgement timers.
HUB_CONFIG = """
default_hospital_id = "st-marys"
ack_timeout_s = {ack_timeout_s}
max_resends = 1
escalation_check_s = 1.0
http_port = {http_port}
report_every_s = 10.0

[[hospitals]]
id = "st-marys"
name = "St Mary's Hospital"
latitude = 51.5175
longitude = -0.1740
pci = true
stroke_centre = true
trauma_level = 1
backup_hospital_id = "city-general"

[[hospitals]]
id = "city-general"
name = "City General Hospital"
latitude = 51.4980
longitude = -0.1180
trauma_level = 3
backup_hospital_id = "st-marys"

[amqp]
port = {amqp_port}
"""


@dataclass(frozen=True)
class Ambulance:
    device_id: str
    hospital: str | None  # the crew's choice; None lets the hub route to the nearest capable hospital
    position: str  # LAT,LON
    replay: list[str]  # edge-agent replay arguments


AMBULANCES = (
    Ambulance(
        "amb-01", "st-marys", "51.5230,-0.1580", ["--replay", "ktas", "--replay-start", "0", "--replay-interval", "2"]
    ),
    Ambulance(
        "amb-02", "city-general", "51.5010,-0.1260",
        ["--replay", "ktas", "--replay-start", "120", "--replay-interval", "2"],
    ),
    Ambulance(
        "amb-03", None, "51.4950,-0.1000", ["--replay", "ktas", "--replay-start", "240", "--replay-interval", "2"]
    ),
    # One recorded ICU hour per second: a 48-hour stay plays in under a minute.
    Ambulance("amb-04", "city-general", "51.5100,-0.1400", ["--replay", "physionet", "--replay-speed", "3600"]),
)  # fmt: skip


class Process:
    """A child process whose output goes to a log file, optionally echoed to our stdout."""

    def __init__(self, name: str, command: list[str], log_path: Path, echo: bool = False):
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("w", encoding="utf-8")
        self.popen = subprocess.Popen(
            command,
            cwd=PROJECT_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._pump = threading.Thread(target=self._copy, args=(self.popen.stdout, echo), daemon=True)
        self._pump.start()

    def _copy(self, stream: IO[str], echo: bool) -> None:
        for line in stream:
            self._log.write(line)
            self._log.flush()
            if echo and any(word in line for word in HOSPITAL_LINE_WORDS):
                print(f"[{self.name}] {line.rstrip()}", flush=True)

    def log_contains(self, text: str) -> bool:
        return text in self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", self.name, timeout_s)
                self.popen.kill()
                self.popen.wait()
        self._pump.join(timeout=5)
        self._log.close()
        return self.popen.returncode


def _wait_for(condition, timeout_s: float, description: str, poll_s: float = 0.5) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    log.warning("timed out after %.0f s waiting for %s", timeout_s, description)
    return False


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return round(ordered[index], 1)


def _outbox_rows(path: Path) -> tuple[list[tuple[str, int, str]], dict[str, int]]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT sequence, state FROM results").fetchall()
        counters = dict(connection.execute("SELECT name, value FROM counters").fetchall())
        rejected = connection.execute("SELECT count(*) FROM rejected_frames").fetchone()[0]
    finally:
        connection.close()
    counters["frames_rejected"] = rejected
    return [(path.stem, sequence, state) for sequence, state in rows], counters


def _hub_counts(path: Path) -> tuple[set[tuple[str, int]], int, dict[str, int]]:
    """Return the stored result keys, the number of alerts and counts of alert states and events."""
    if not path.exists():
        return set(), 0, {}
    connection = sqlite3.connect(path)
    try:
        keys = set(connection.execute("SELECT device_id, sequence FROM triage_results").fetchall())
        alerts = connection.execute("SELECT count(*) FROM alerts").fetchone()[0]
        states = dict(connection.execute("SELECT state, count(*) FROM alerts GROUP BY state").fetchall())
        events = dict(connection.execute("SELECT kind, count(*) FROM alert_events GROUP BY kind").fetchall())
    except sqlite3.OperationalError:
        return set(), 0, {}
    finally:
        connection.close()
    return (
        keys,
        alerts,
        {
            "acknowledged": states.get("acknowledged", 0),
            "escalated": states.get("escalated", 0),
            "waiting_for_acknowledgement": states.get("delivered", 0),
            "resent": events.get("resent", 0),
            "updated": events.get("updated", 0),
        },
    )


def _alert_records(paths: list[Path]) -> list[dict]:
    records = []
    for path in paths:
        if path.exists():
            records += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return records


def summarize(run_dir: Path, ambulances: tuple[Ambulance, ...], duration_s: float) -> dict:
    created: list[tuple[str, int, str]] = []
    frames = rejected = 0
    for ambulance in ambulances:
        rows, counters = _outbox_rows(run_dir / f"{ambulance.device_id}.sqlite")
        created += rows
        frames += counters.get("frames_seen", 0) + counters["frames_rejected"]
        rejected += counters["frames_rejected"]
    sent = {(device, sequence) for device, sequence, state in created if state == "delivered"}
    pending = [(device, sequence) for device, sequence, state in created if state != "delivered"]
    hub_keys, hub_alerts, alert_counts = _hub_counts(run_dir / "hub.sqlite")
    records = _alert_records([run_dir / f"alerts-{hospital}.jsonl" for hospital in HOSPITALS])
    # Re-sends and updates are expected; a duplicate is the same message (kind, alert, attempt) twice.
    alerts = [record for record in records if record["kind"] == "hospital_alert"]
    unique_alerts = {record["alert_id"] for record in alerts}
    # Latency is the path's speed: re-sends and escalations wait for a timer on purpose.
    first_arrivals = [
        record
        for record in alerts
        if record["attempt"] == 1 and not record["duplicate"] and not record.get("escalated_from")
    ]
    latencies = [record["latency_ms"] for record in first_arrivals]
    return {
        "ambulances": len(ambulances),
        "hospitals": len(HOSPITALS),
        "duration_s": duration_s,
        "frames": frames,
        "frames_rejected": rejected,
        "triage_created": len(created),
        "triage_sent": len(sent),
        "triage_pending_on_edges": len(pending),
        "hub_received": len(hub_keys),
        "alerts_stored_by_hub": hub_alerts,
        "alerts_delivered": len(unique_alerts),
        "alerts": alert_counts,
        "lost": len(sent - hub_keys),
        "duplicates": sum(1 for record in records if record["duplicate"]),
        "latency_ms": {
            "p50": _percentile(latencies, 0.50),
            "p99": _percentile(latencies, 0.99),
            "max": _percentile(latencies, 1.0),
            "samples": len(latencies),
        },
        "run_dir": str(run_dir),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_demo(duration_s: float, summary_path: Path, keep_node: bool) -> dict:
    run_dir = PROJECT_DIR / ".run" / "demo" / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    node = RabbitNode(name="ambulance-demo", amqp_port=5684, mqtt_port=1895, dist_port=25684)
    if node.is_running():
        node.stop()
    shutil.rmtree(node.data_dir, ignore_errors=True)  # a fresh broker: no messages from earlier runs
    node.start()
    python = sys.executable
    processes: list[Process] = []
    try:
        hub_config = run_dir / "hub.toml"
        hub_config.write_text(
            HUB_CONFIG.format(ack_timeout_s=ACK_TIMEOUT_S, http_port=HTTP_PORT, amqp_port=node.amqp_port),
            encoding="utf-8",
        )
        hub = Process(
            "hub",
            [python, "-m", "cloud_hub.cli", "run", "--config", str(hub_config),
             "--store-url", f"sqlite:///{run_dir / 'hub.sqlite'}"],
            run_dir / "hub.log",
        )  # fmt: skip
        processes.append(hub)
        for hospital in HOSPITALS:
            processes.append(
                Process(
                    hospital,
                    [
                        python,
                        "-m",
                        "cloud_hub.hospital_listener",
                        "--hospital",
                        hospital,
                        "--amqp-port",
                        str(node.amqp_port),
                        "--record",
                        str(run_dir / f"alerts-{hospital}.jsonl"),
                        *(
                            ["--acknowledge-after", str(ACKNOWLEDGE_AFTER_S[hospital])]
                            if hospital in ACKNOWLEDGE_AFTER_S
                            else []
                        ),
                    ],
                    run_dir / f"listener-{hospital}.log",
                    echo=True,
                )  # fmt: skip
            )
        if not _wait_for(lambda: hub.log_contains("hub consuming"), 120, "the hub to start consuming"):
            raise RuntimeError(f"the hub did not start; see {hub.log_path}")
        log.info("hub ready; starting %d ambulances for %.0f s", len(AMBULANCES), duration_s)
        for hospital in HOSPITALS:
            log.info("hospital board: http://127.0.0.1:%d/board/%s", HTTP_PORT, hospital)

        agents = []
        for ambulance in AMBULANCES:
            agent = Process(
                ambulance.device_id,
                [python, "-m", "edge_agent.cli", "run", "--device-id", ambulance.device_id,
                 *(["--hospital", ambulance.hospital] if ambulance.hospital else []),
                 "--position", ambulance.position, "--mqtt-port", str(node.mqtt_port),
                 "--outbox", str(run_dir / f"{ambulance.device_id}.sqlite"),
                 "--duration", str(duration_s), "--drain-timeout", "30", *ambulance.replay],
                run_dir / f"{ambulance.device_id}.log",
            )  # fmt: skip
            agents.append(agent)
            processes.append(agent)

        for agent in agents:
            try:
                agent.popen.wait(timeout=duration_s + 90)
            except subprocess.TimeoutExpired:
                log.warning("%s still running after its replay; stopping it", agent.name)
        log.info("replay finished; waiting for the hub and the hospitals to catch up")

        def caught_up() -> bool:
            summary = summarize(run_dir, AMBULANCES, duration_s)
            return summary["lost"] == 0 and summary["alerts_delivered"] >= summary["alerts_stored_by_hub"]

        _wait_for(caught_up, 30, "the hub to store every result and the hospitals to receive every alert")
    finally:
        for process in reversed(processes):
            process.stop()
        if not keep_node:
            node.stop()

    summary = summarize(run_dir, AMBULANCES, duration_s)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of replay (default: 60)")
    parser.add_argument(
        "--summary", type=Path, default=PROJECT_DIR / "demo-summary.json", help="summary file"
    )
    parser.add_argument("--keep-node", action="store_true", help="leave the demo's RabbitMQ node running")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.duration <= 0:
        log.error("--duration must be positive, got %s", args.duration)
        return 2
    try:
        summary = run_demo(args.duration, args.summary, args.keep_node)
    except (NodeError, RuntimeError) as exc:
        log.error("demo failed: %s", exc)
        return 1
    print(json.dumps(summary, indent=2))
    print(f"summary written to {args.summary}; logs in {summary['run_dir']}")
    healthy = (
        summary["lost"] == 0
        and summary["duplicates"] == 0
        and summary["triage_pending_on_edges"] == 0
        and summary["alerts_delivered"] == summary["alerts_stored_by_hub"]
    )
    if not healthy:
        log.error("the demo lost, duplicated or left undelivered some results or alerts; see the summary")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
