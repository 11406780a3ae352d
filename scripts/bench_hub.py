"""Benchmark of the hub against a naive per-message `predict()` consumer (`make bench-hub`).

    python -m scripts.bench_hub [--messages 20000] [--rate 1000] [--seconds 20] [--store-url URL]

Both consumers run in one session against a private RabbitMQ node on this machine, on the same
pre-built triage results: real KTAS ambulance patients scored by the edge model, on eight ambulances.
Each ambulance sends ten results per patient, as a crew's agent does while vitals come in. The first
urgent one alerts and later ones update the alert or are suppressed; `--results-per-incident 1`
makes every urgent result a new alert.
- throughput: the results wait in the queue, then the consumer starts; messages per second from its
  first delivery until every result is stored and every input acknowledged;
- latency: results are published over MQTT QoS 1 at a fixed rate; a hospital consumer records the
  time from each result's publish (its frame timestamp) to the first delivery of the alert it
  caused. The broker delivers an alert once its quorum queue has committed it, which is also when
  it confirms the alert to the hub, so this is the publish-to-confirmed-alert latency.
The hub runs as in production (`cloud-hub run`, its engine in a process of its own) and its figures
come from its Prometheus endpoint. The naive consumer is measured on fewer messages and at a rate it
can sustain, because at the hub's rate its queue would only grow. The JSON goes to stdout and to
`bench-hub.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pika

from scripts.rabbitmq_node import PROJECT_DIR, RabbitNode

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger("bench_hub")
HOSPITAL = "bench-hospital"


# --- workload ------------------------------------------------------------------------------------


def build_payloads(count: int, devices: int, results_per_incident: int = 1) -> list[tuple[str, str, bytes]]:
    """Return (device id, topic, JSON) of `count` results spread over `devices` ambulances.

    Each ambulance sends `results_per_incident` results per patient, as an edge agent sends one per
    frame; within the hub's suppression window only the first urgent one of an incident alerts.
    """
    from edge_agent.inference import EdgeScorer
    from models.data_paths import KTAS_FILE, default_data_dir
    from models.ktas import load_ktas
    from models.series import summarize_frames
    from protocol import TriageResult
    from protocol.topics import triage_topic

    visits = [
        visit for visit in load_ktas(default_data_dir() / KTAS_FILE).visits if visit.arrived_by_ambulance
    ]
    scorer = EdgeScorer()
    templates = []
    for index, visit in enumerate(visits):
        frame = visit.to_frame("amb-00", f"inc-{index}", datetime.now(UTC))
        history = summarize_frames([frame])
        assessment = scorer.assess([frame], history=history)
        templates.append((frame, history, assessment))
    payloads = []
    sequences = [0] * devices
    for number in range(count):
        device_index = number % devices
        device = f"bench-{device_index:02d}"
        patient = (number // devices) // results_per_incident * devices + device_index
        frame, history, assessment = templates[patient % len(templates)]
        incident = f"inc-{patient}"
        window = [frame.model_copy(update={"device_id": device, "incident_id": incident})]
        result = TriageResult(
            device_id=device, incident_id=incident, sequence=sequences[device_index], created_at=frame.timestamp,
            window=window, scores=assessment.scores, acuity=assessment.acuity,
            acuity_floor_applied=assessment.floor_applied, emergency_type=assessment.scores.emergency_type,
            news2=assessment.summary.news2, qsofa=assessment.summary.qsofa, shock_index=assessment.summary.shock_index,
            inference_ms=1.0, destination_hospital_id=HOSPITAL, series=history,
        )  # fmt: skip
        sequences[device_index] += 1
        payloads.append((device, triage_topic(device), result.model_dump_json().encode()))
    return payloads


# Results are stamped at their send time. Templates carry this stamp, which is swapped for the real one.
TEMPLATE_STAMP = datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=UTC).isoformat(timespec="microseconds").encode()


def restamp(payload: bytes, when: datetime) -> bytes:
    """Set the frame and creation timestamps to `when`, so latency counts from the publish."""
    data = json.loads(payload)
    stamp = when.isoformat(timespec="microseconds")
    data["created_at"] = stamp
    for frame in data["window"]:
        frame["timestamp"] = stamp
    return json.dumps(data).encode()


class Publisher:
    """MQTT QoS 1 publishers, one client per ambulance, as the edge agents would be.

    The ambulances share this machine with the hub and the broker, so they are kept cheap: `publish`
    writes to the socket in the calling thread, and one thread reads every client's acknowledgements,
    instead of one network thread per client.
    """

    def __init__(self, port: int, devices: list[str]):
        self.clients: dict[str, mqtt.Client] = {}
        for device in devices:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
            client.max_inflight_messages_set(1000)
            client.max_queued_messages_set(0)
            client.connect("127.0.0.1", port)
            self.clients[device] = client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._network, name="bench-mqtt", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not all(client.is_connected() for client in self.clients.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the bench's MQTT clients did not connect within 30 s")
            time.sleep(0.05)

    def _network(self) -> None:
        selector = selectors.DefaultSelector()
        for client in self.clients.values():
            selector.register(client.socket(), selectors.EVENT_READ, client)
        housekeeping = time.monotonic()
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.01):
                key.data.loop_read()
            for client in self.clients.values():
                if client.want_write():
                    client.loop_write()
            if time.monotonic() - housekeeping > 1.0:
                housekeeping = time.monotonic()
                for client in self.clients.values():
                    client.loop_misc()
        selector.close()

    def publish(self, device: str, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self.clients[device].publish(topic, payload, qos=1)

    def close(self) -> None:
        for client in self.clients.values():
            client.disconnect()
        self._stop.set()
        self._thread.join(timeout=5)


def publish_backlog(publisher: Publisher, payloads: list[tuple[str, str, bytes]]) -> None:
    infos = [publisher.publish(device, topic, payload) for device, topic, payload in payloads]
    for info in infos:
        info.wait_for_publish(timeout=60)


def publish_at_rate(publisher: Publisher, payloads: list[tuple[str, str, bytes]], rate: float) -> float:
    """Publish at `rate` per second, stamping each result at its send time; return the achieved rate."""
    templates = [(device, topic, restamp(payload, datetime.fromisoformat(TEMPLATE_STAMP.decode())))
                 for device, topic, payload in payloads]  # fmt: skip
    started = time.perf_counter()
    infos = []
    for number, (device, topic, template) in enumerate(templates):
        due = started + number / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        stamp = datetime.now(UTC).isoformat(timespec="microseconds").encode()
        infos.append(publisher.publish(device, topic, template.replace(TEMPLATE_STAMP, stamp)))
    elapsed = time.perf_counter() - started
    for info in infos:
        info.wait_for_publish(timeout=60)
    return len(payloads) / elapsed


class HospitalReceiver:
    """Consumes the bench hospital's queue in a thread and records each alert's latency."""

    def __init__(self, amqp_port: int):
        from cloud_hub.topology import declare_hospital_queue

        self.latencies_ms: list[float] = []
        self.stop = threading.Event()
        self.connection = pika.BlockingConnection(pika.ConnectionParameters(port=amqp_port))
        self.channel = self.connection.channel()
        self.queue = declare_hospital_queue(self.channel, HOSPITAL)
        self.channel.queue_purge(self.queue)
        self.channel.basic_qos(prefetch_count=500)
        self.channel.basic_consume(self.queue, self._on_message, auto_ack=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_message(self, channel, method, properties, body: bytes) -> None:  # noqa: ANN001
        arrived = datetime.now(UTC)
        data = json.loads(body)
        if data.get("kind") == "hospital_alert" and data.get("attempt", 1) == 1:
            stamp = datetime.fromisoformat(data["frame_timestamp"])
            self.latencies_ms.append((arrived - stamp).total_seconds() * 1000)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.connection.process_data_events(time_limit=0.1)

    def reset(self) -> None:
        self.latencies_ms = []

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.connection.close()


def queue_depth(amqp_port: int, queue: str) -> int:
    connection = pika.BlockingConnection(pika.ConnectionParameters(port=amqp_port))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None}
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
    }


# --- consumers -------------------------------------------------------------------------------------


class HubUnderTest:
    """The real hub, `cloud-hub run`, in its own process as in production, on a fresh store.

    Its progress is read from its Prometheus metrics endpoint.
    """

    def __init__(self, amqp_port: int, store_dir: Path, store_url: str | None = None, http_port: int = 8791):
        self.http_port = http_port
        store_url = store_url or f"sqlite:///{store_dir / 'bench-hub.sqlite'}"
        self.config_path = store_dir / "bench-hub.toml"
        self.config_path.write_text(
            "\n".join(
                [
                    f'store_url = "{store_url}"',
                    f'hospitals = ["{HOSPITAL}"]',
                    f"http_port = {http_port}",
                    "report_every_s = 5",
                    "batch_size = 512",
                    "batch_wait_ms = 2",
                    "[amqp]",
                    f"port = {amqp_port}",
                    "prefetch = 2000",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        self.log_path = store_dir / "bench-hub.log"
        self.process: subprocess.Popen | None = None

    def declare_topology(self) -> None:
        from cloud_hub.config import load_config
        from cloud_hub.service import HubService

        service = HubService.__new__(HubService)
        service.config = load_config(self.config_path)
        service._declare_topology()  # noqa: SLF001 - the queue must exist before the backlog

    def start(self) -> None:
        with self.log_path.open("w") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cloud_hub.cli", "run", "--config", str(self.config_path)],
                cwd=PROJECT_DIR, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if not _wait(lambda: self._get("/readyz") is not None and "true" in (self._get("/readyz") or ""), 90):
            raise RuntimeError(f"the hub did not become ready within 90 s; see {self.log_path}")

    def _get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as response:
                return response.read().decode()
        except (OSError, urllib.error.HTTPError):
            return None

    def metric(self, name: str) -> float:
        text = self._get("/metrics") or ""
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def processed(self) -> int:
        return int(self.metric("hub_results_stored_total") + self.metric("hub_duplicate_results_total"))

    def settled(self) -> bool:
        return self.metric("hub_inputs_in_progress") == 0

    def batch_counters(self) -> tuple[float, float, float]:
        return (
            self.metric("hub_batch_size_count"),
            self.metric("hub_batch_size_sum"),
            self.metric("hub_rescore_seconds_sum"),
        )

    def mean_batch(self, since: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> dict[str, float]:
        """Mean batch size and engine time, over the batches after the `since` counters."""
        count, total, seconds = (
            now - before for now, before in zip(self.batch_counters(), since, strict=True)
        )
        return {
            "results": round(total / count, 1) if count else 0,
            "batches": count,
            "engine_seconds": round(seconds, 2),
            "engine_ms_per_batch": round(1000 * seconds / count, 2) if count else 0,
        }

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


class NaiveConsumer:
    """The baseline: one message at a time, Keras `predict()` per message, a blocking confirm per alert."""

    def __init__(self, amqp_port: int, store_dir: Path):
        import keras

        from cloud_hub.store import HubStore
        from cloud_hub.topology import declare_hub_topology
        from models.bundle import load_bundle

        bundle = load_bundle(files=(("triage", "keras"),))
        self.model = keras.saving.load_model(bundle.path("triage", "keras"), compile=False)
        self.operating_point = bundle.manifest.operating_point
        self.image_shape = bundle.manifest.ecg_image_shape
        self.store = HubStore(f"sqlite:///{store_dir / 'naive.sqlite'}")
        self.connection = pika.BlockingConnection(pika.ConnectionParameters(port=amqp_port))
        self.channel = self.connection.channel()
        declare_hub_topology(self.channel)
        self.publish_channel = self.connection.channel()
        self.publish_channel.confirm_delivery()
        self.channel.basic_qos(prefetch_count=1)
        self.processed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        from protocol.topics import HUB_TRIAGE_QUEUE

        self.channel.basic_consume(HUB_TRIAGE_QUEUE, self._on_message)
        while not self.stop.is_set():
            self.connection.process_data_events(time_limit=0.1)

    def _on_message(self, channel, method, properties, body: bytes) -> None:  # noqa: ANN001
        from cloud_hub.policy import decide
        from models.features import features_from_summary, summarize_window
        from models.triage import scores_from_outputs
        from protocol import TriageResult
        from protocol.topics import HOSPITAL_EXCHANGE, hospital_routing_key

        result = TriageResult.model_validate_json(body)
        summary = summarize_window(result.window)
        features = features_from_summary(summary)[np.newaxis, :]
        outputs = self.model.predict(
            [features, np.zeros((1, *self.image_shape), np.float32), np.zeros((1, 1), np.float32)], verbose=0
        )
        scores = scores_from_outputs(
            outputs["acuity"][0], float(outputs["urgent"][0, 0]), outputs["emergency_type"][0],
            self.operating_point, None,
        )  # fmt: skip
        decision = decide(result, summary, scores, HOSPITAL, self.operating_point)
        with self.store.transaction() as tx:
            tx.insert_results(
                [
                    {
                        "device_id": result.device_id,
                        "sequence": result.sequence,
                        "incident_id": result.incident_id,
                        "created_at": result.created_at,
                        "frame_timestamp": result.frame_timestamp,
                        "edge_acuity": result.acuity,
                        "hub_acuity": decision.hub_acuity,
                        "final_acuity": decision.acuity,
                        "emergency_type": result.emergency_type.value,
                        "urgent": decision.alert is not None,
                        "hospital_id": HOSPITAL,
                        "alert_action": "none",
                        "payload": body.decode(),
                    }
                ]  # fmt: skip
            )
        if decision.alert is not None:
            self.publish_channel.basic_publish(
                HOSPITAL_EXCHANGE, hospital_routing_key(HOSPITAL), decision.alert.model_dump_json().encode(),
                pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent), mandatory=True,
            )  # fmt: skip
        channel.basic_ack(method.delivery_tag)
        self.processed += 1

    def settled(self) -> bool:
        return True

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.connection.close()
        self.store.close()


# --- measurements --------------------------------------------------------------------------------


def measure_throughput(consumer, amqp_port: int, count: int, processed, timeout_s: float) -> dict[str, float]:  # noqa: ANN001
    """Start the consumer on a full queue; messages per second until it has processed `count`."""
    from protocol.topics import HUB_TRIAGE_QUEUE

    consumer.start()
    # The clock starts once the consumer is ready, so model loading is not counted; what it finished
    # before that moment is not counted either.
    started = time.perf_counter()
    already = processed()
    deadline = started + timeout_s
    # Each check reads the hub's metrics over HTTP; every 50 ms keeps that load on the hub small.
    while processed() < count and time.perf_counter() < deadline:
        time.sleep(0.05)
    while not consumer.settled() and time.perf_counter() < deadline:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    done = processed() - already
    return {
        "messages": done,
        "seconds": round(elapsed, 2),
        "msgs_per_s": round(done / elapsed, 1),
        "queue_left": queue_depth(amqp_port, HUB_TRIAGE_QUEUE),
    }


def run(
    messages: int,
    rate: float,
    seconds: float,
    naive_messages: int,
    naive_rate: float,
    store_url: str | None,
    results_per_incident: int = 10,
) -> dict:
    node = RabbitNode(name="ambulance-bench", amqp_port=5690, mqtt_port=1901, dist_port=25690)
    if node.is_running():
        node.stop()
    shutil.rmtree(node.data_dir, ignore_errors=True)
    node.start(timeout_s=60)
    work = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    report: dict = {
        "machine": f"{os.cpu_count()} CPUs",
        "broker": "RabbitMQ on this machine",
        "store": "PostgreSQL" if store_url and store_url.startswith("postgresql") else "SQLite",
        "workload": f"KTAS ambulance patients, 8 ambulances, {results_per_incident} results per incident",
    }
    hub: HubUnderTest | None = None
    try:
        latency_count = int(rate * seconds)
        devices = 8
        log.info("building %d results", messages + latency_count)
        payloads = build_payloads(max(messages, latency_count), devices, results_per_incident)
        device_ids = sorted({device for device, _, _ in payloads})
        # Declare the queues, then fill the triage queue for the throughput run.
        hub = HubUnderTest(node.amqp_port, work, store_url)
        hub.declare_topology()
        receiver = HospitalReceiver(node.amqp_port)
        publisher = Publisher(node.mqtt_port, device_ids)
        log.info("publishing a backlog of %d results", messages)
        publish_backlog(publisher, payloads[:messages])
        log.info("hub: draining the backlog")
        hub_throughput = measure_throughput(hub, node.amqp_port, messages, hub.processed, timeout_s=600)
        hub_throughput["mean_batch"] = hub.mean_batch()
        log.info("hub throughput: %s", hub_throughput)

        # Latency at a fixed rate, with the hub already consuming.
        receiver.reset()
        before = hub.batch_counters()
        fresh = build_payloads(latency_count, devices, results_per_incident) if latency_count else []
        fresh = [(device, topic, _shift_sequence(payload, messages)) for device, topic, payload in fresh]
        log.info("hub: %d results at %.0f per second", latency_count, rate)
        offered = publish_at_rate(publisher, fresh, rate)
        _wait(lambda: hub.processed() >= messages + latency_count and hub.settled(), 60)
        time.sleep(1.0)
        hub_latency = {**percentiles(receiver.latencies_ms), "offered_rate_per_s": round(offered, 1),
                       "alerts_measured": len(receiver.latencies_ms),
                       "mean_batch": hub.mean_batch(before)}  # fmt: skip
        log.info("hub latency: %s", hub_latency)
        hub.close()

        # The naive consumer on the same kind of workload, smaller.
        naive = NaiveConsumer(node.amqp_port, work)
        naive_payloads = [
            (d, t, _shift_sequence(p, messages + latency_count)) for d, t, p in payloads[:naive_messages]
        ]
        publish_backlog(publisher, naive_payloads)
        log.info("naive: draining a backlog of %d", naive_messages)
        naive_throughput = measure_throughput(
            naive, node.amqp_port, naive_messages, lambda: naive.processed, timeout_s=600
        )
        log.info("naive throughput: %s", naive_throughput)
        receiver.reset()
        naive_latency_count = int(naive_rate * 10)
        latency_payloads = [(d, t, _shift_sequence(p, messages + latency_count + naive_messages))
                            for d, t, p in payloads[:naive_latency_count]]  # fmt: skip
        offered_naive = publish_at_rate(publisher, latency_payloads, naive_rate)
        _wait(lambda: naive.processed >= naive_messages + naive_latency_count, 120)
        time.sleep(1.0)
        naive_latency = {**percentiles(receiver.latencies_ms), "offered_rate_per_s": round(offered_naive, 1),
                         "alerts_measured": len(receiver.latencies_ms)}  # fmt: skip
        naive.close()
        publisher.close()
        receiver.close()

        report["hub"] = {
            "msgs_per_s": hub_throughput["msgs_per_s"],
            **hub_latency,
            "throughput_run": hub_throughput,
        }
        report["naive_predict_per_message"] = {
            "msgs_per_s": naive_throughput["msgs_per_s"], **naive_latency, "throughput_run": naive_throughput,
        }  # fmt: skip
        report["throughput_ratio"] = round(hub_throughput["msgs_per_s"] / naive_throughput["msgs_per_s"], 1)
    finally:
        if hub is not None:
            hub.close()  # also after a failure, so no hub outlives its broker
        node.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report


def _shift_sequence(payload: bytes, offset: int) -> bytes:
    """Give a reused result new sequence and incident numbers so the hub stores it as new."""
    data = json.loads(payload)
    data["sequence"] += offset
    incident = f"{data['incident_id']}-{offset}"
    data["incident_id"] = incident
    for frame in data["window"]:
        frame["incident_id"] = incident
    return json.dumps(data).encode()


def _wait(condition, timeout_s: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].replace("`", ""))
    parser.add_argument("--messages", type=int, default=20000, help="backlog for the hub's throughput run")
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="results per second in the hub's latency run"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the hub's latency run")
    parser.add_argument("--naive-messages", type=int, default=300, help="backlog for the naive consumer")
    parser.add_argument(
        "--naive-rate", type=float, default=10.0, help="results per second for the naive latency run"
    )
    parser.add_argument(
        "--results-per-incident",
        type=int,
        default=10,
        help="results each ambulance sends per patient; 1 makes every urgent result a new alert",
    )
    parser.add_argument(
        "--store-url", help="hub store, e.g. postgresql+psycopg://postgres@127.0.0.1/bench (default: SQLite)"
    )
    parser.add_argument(
        "--output", type=Path, default=PROJECT_DIR / "bench-hub.json", help="where to write the JSON"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    report = run(
        args.messages,
        args.rate,
        args.seconds,
        args.naive_messages,
        args.naive_rate,
        args.store_url,
        args.results_per_incident,
    )
    text = json.dumps(report, indent=2)
    args.output.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
