"""The hub's engine behind a request interface, run inline or in a process of its own.

Parsing, re-scoring and storing cost more CPU per result than the broker traffic around them. In a
worker process they use a second core while the main process keeps consuming, publishing and
acknowledging, which is what lets one hub keep up with thousands of results a second on two cores.
The worker handles requests strictly in the order sent, so results are stored in delivery order.

Both runners offer `request(method, args, callback)`: the callback receives `(ok, result)` on the
main process's I/O loop; `result` is the engine method's return value, or an error description.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from cloud_hub.config import HubConfig
from cloud_hub.metrics import HubMetrics

log = logging.getLogger(__name__)

Callback = Callable[[bool, Any], None]
WORKER_START_TIMEOUT_S = 180.0  # loading TensorFlow and the models on a busy machine


class RecordingMetrics:
    """Stands in for HubMetrics inside the worker: records each update for the main process to apply."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, tuple[str, ...], str, float]] = []

    def __getattr__(self, name: str) -> _RecordedMetric:
        return _RecordedMetric(self.updates, name, ())

    def drain(self) -> list[tuple[str, tuple[str, ...], str, float]]:
        updates, self.updates = self.updates, []
        return updates


class _RecordedMetric:
    def __init__(self, updates: list, name: str, labels: tuple[str, ...]):
        self._updates, self._name, self._labels = updates, name, labels

    def labels(self, *values: str) -> _RecordedMetric:
        return _RecordedMetric(self._updates, self._name, tuple(str(value) for value in values))

    def inc(self, amount: float = 1) -> None:
        self._updates.append((self._name, self._labels, "inc", amount))

    def observe(self, value: float) -> None:
        self._updates.append((self._name, self._labels, "observe", value))

    def set(self, value: float) -> None:
        self._updates.append((self._name, self._labels, "set", value))


def apply_metric_updates(metrics: HubMetrics, updates: list[tuple[str, tuple[str, ...], str, float]]) -> None:
    for name, labels, operation, value in updates:
        metric = getattr(metrics, name)
        if labels:
            metric = metric.labels(*labels)
        getattr(metric, operation)(value)


def _build_engine(config: HubConfig, metrics: Any):  # noqa: ANN202 - HubEngine, imported late
    from cloud_hub.engine import HubEngine
    from cloud_hub.scoring import HubScorer
    from cloud_hub.store import HubStore

    store = HubStore(config.store_url)
    scorer = HubScorer(config.bundle_dir)
    return HubEngine(config, store, scorer, metrics)


def worker_main(connection: Connection, config_json: str, log_level: int) -> None:
    """Entry point of the worker process: build the engine, then serve requests until the stop request."""
    from cloud_hub.logs import configure_logging
    from cloud_hub.service import tune_garbage_collector

    configure_logging(logging.getLevelName(log_level))
    config = HubConfig.model_validate_json(config_json)
    recorder = RecordingMetrics()
    engine = _build_engine(config, recorder)
    tune_garbage_collector()
    scorer = engine.scorer
    connection.send(("ready", {"model": scorer.model, "operating_point": scorer.operating_point}))
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return  # the main process is gone
        if request is None:
            return
        request_id, method, args = request
        try:
            reply = (request_id, True, getattr(engine, method)(*args), recorder.drain())
        except Exception as exc:  # noqa: BLE001 - reported to the main process, which decides
            detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            reply = (request_id, False, detail, recorder.drain())
        connection.send(reply)


class InlineEngine:
    """Runs the engine in the calling thread; for tests and small deployments."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.model = engine.scorer.model
        self.operating_point = engine.scorer.operating_point

    def start(self) -> None:
        pass

    def attach(self, ioloop: Any) -> None:
        pass

    def detach(self, ioloop: Any) -> None:
        pass

    def request(self, method: str, args: list[Any], callback: Callback) -> None:
        try:
            result = getattr(self.engine, method)(*args)
        except Exception as exc:  # noqa: BLE001 - handed to the callback, as the worker would
            callback(False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            return
        callback(True, result)

    def oldest_request_age_s(self) -> float:
        return 0.0

    @property
    def alive(self) -> bool:
        return True

    def stop(self) -> None:
        pass


class EngineProcess:
    """The engine in a child process; replies are dispatched on the main process's I/O loop."""

    def __init__(self, config: HubConfig, metrics: HubMetrics):
        self.config = config
        self.metrics = metrics
        self.model = None
        self.operating_point = None
        self._connection: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._callbacks: dict[int, tuple[float, Callback]] = {}
        self._next_id = 0
        # A batch is megabytes once pickled, more than a pipe holds. Sending from the I/O loop while
        # the worker sends its own large reply would block both sides, so a thread does the sending.
        self._outgoing: queue.Queue[tuple[int, str, list[Any]] | None] = queue.Queue()
        self._sender: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker and wait until its models are loaded."""
        context = multiprocessing.get_context("spawn")  # TensorFlow is not safe to fork
        parent, child = context.Pipe()
        self._process = context.Process(
            target=worker_main,
            args=(child, self.config.model_dump_json(), logging.getLogger().getEffectiveLevel()),
            name="hub-engine",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._connection = parent
        if not parent.poll(WORKER_START_TIMEOUT_S):
            self.stop()
            raise RuntimeError(
                f"the hub's engine process did not start within {WORKER_START_TIMEOUT_S:.0f} s"
            )
        try:
            kind, info = parent.recv()
        except EOFError:
            raise RuntimeError("the hub's engine process exited during start-up; see the log above") from None
        self.model, self.operating_point = info["model"], info["operating_point"]
        self._outgoing = queue.Queue()
        self._sender = threading.Thread(target=self._send_requests, name="engine-sender", daemon=True)
        self._sender.start()
        log.info("engine process %d ready", self._process.pid)

    def _send_requests(self) -> None:
        connection = self._connection
        while True:
            request = self._outgoing.get()
            if request is None or connection is None:
                return
            try:
                connection.send(request)
            except OSError as exc:
                log.error("sending a request to the engine process failed: %s", exc)
                return

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def attach(self, ioloop: Any) -> None:
        assert self._connection is not None
        ioloop.add_handler(self._connection.fileno(), self._on_readable, ioloop.READ)

    def detach(self, ioloop: Any) -> None:
        if self._connection is not None:
            ioloop.remove_handler(self._connection.fileno())
        # Requests of a lost connection: their deliveries return to the queue with it.
        self._callbacks.clear()

    def request(self, method: str, args: list[Any], callback: Callback) -> None:
        self._next_id += 1
        self._callbacks[self._next_id] = (time.monotonic(), callback)
        self._outgoing.put((self._next_id, method, args))

    def oldest_request_age_s(self) -> float:
        if not self._callbacks:
            return 0.0
        return time.monotonic() - min(started for started, _ in self._callbacks.values())

    def _on_readable(self, fd: int, events: int) -> None:
        assert self._connection is not None
        while self._connection.poll():
            try:
                request_id, ok, result, updates = self._connection.recv()
            except EOFError:
                log.error("the hub's engine process exited; deliveries in progress return to the queue")
                raise
            apply_metric_updates(self.metrics, updates)
            _, callback = self._callbacks.pop(request_id, (0.0, None))
            if callback is not None:
                callback(ok, result)

    def stop(self) -> None:
        if self._sender is not None:
            self._outgoing.put(None)
            self._sender.join(10)
            self._sender = None
        if self._connection is not None:
            try:
                self._connection.send(None)
            except OSError:
                pass
        if self._process is not None:
            self._process.join(15)
            if self._process.is_alive():
                log.warning("engine process did not stop; terminating it")
                self._process.terminate()
                self._process.join(5)
        self._connection = None
