"""The edge agent: frames in, triage results into the outbox, outbox rows out over MQTT.

One thread owns the outbox and the scoring; paho's thread only reports connection changes and PUBACKs
through a queue. A row is marked delivered only when its PUBACK arrives.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from pydantic import ValidationError

from edge_agent.inference import EdgeScorer
from edge_agent.outbox import Outbox
from edge_agent.replay import ScheduledFrame
from edge_agent.uplink import MqttUplink, UplinkEvent
from models.ecg_strips import encode_strip_png, prepare_strip_image
from models.series import SeriesAccumulator
from protocol import GeoPosition, PatientContext, TriageResult, VitalsFrame
from protocol.messages import describe_validation_error
from protocol.topics import triage_topic

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


@dataclass
class IncidentState:
    """What the agent remembers of one incident: recent frames, the whole history, the latest strip."""

    window: deque[VitalsFrame]
    history: SeriesAccumulator = field(default_factory=SeriesAccumulator)
    ecg_image: np.ndarray | None = None
    ecg_strip_png: str | None = None


def utc_now() -> datetime:
    return datetime.now(UTC)


class EdgeAgent:
    def __init__(
        self,
        device_id: str,
        scorer: EdgeScorer,
        outbox: Outbox,
        uplink: MqttUplink,
        events: queue.Queue[UplinkEvent],
        *,
        destination_hospital_id: str | None = None,
        window_s: float = 600.0,
        window_max_frames: int = 60,
        max_incidents: int = 32,
        position: GeoPosition | None = None,
        clock: Clock = utc_now,
    ):
        self.device_id = device_id
        self.scorer = scorer
        self.outbox = outbox
        self.uplink = uplink
        self.events = events
        self.destination_hospital_id = destination_hospital_id
        self.window = timedelta(seconds=window_s)
        self.window_max_frames = window_max_frames
        self.max_incidents = max_incidents
        self.position = position  # sent with each result, for the hub's routing and ETA
        self.clock = clock
        self.topic = triage_topic(device_id)
        self._incidents: OrderedDict[str, IncidentState] = OrderedDict()
        self._inflight: dict[int, int] = {}  # MQTT message id -> outbox row id
        # Events are handled on this thread after publish() has returned and the mid is recorded,
        # so a PUBACK that paho receives before publish() returns still finds its row.
        self._inflight_rows: set[int] = set()

    # --- frames to results -------------------------------------------------------------------

    def handle_frame(self, incident_id: str, values: dict[str, Any]) -> TriageResult | None:
        """Validate a frame, score its incident's window and store the result; None if rejected."""
        try:
            frame = VitalsFrame(
                device_id=self.device_id, incident_id=incident_id, timestamp=self.clock(), **values
            )
            frame = _arrived_by_ambulance(frame)
        except ValidationError as exc:
            reason = describe_validation_error("VitalsFrame", exc)
            log.error("rejected frame for incident %s, kept in the outbox: %s", incident_id, reason)
            self.outbox.record_rejected_frame(reason, {"incident_id": incident_id, **values})
            return None

        incident = self._incident_for(frame)
        window = incident.window
        history = incident.history.summary()
        assessment = self.scorer.assess(list(window), history=history, ecg_image=incident.ecg_image)
        summary = assessment.summary
        hospital = (
            frame.destination_hospital_id or _latest_destination(window) or self.destination_hospital_id
        )

        def build(sequence: int) -> TriageResult:
            return TriageResult(
                device_id=self.device_id,
                incident_id=incident_id,
                sequence=sequence,
                created_at=self.clock(),
                window=list(window),
                scores=assessment.scores,
                acuity=assessment.acuity,
                acuity_floor_applied=assessment.floor_applied,
                emergency_type=assessment.scores.emergency_type,
                news2=summary.news2,
                qsofa=summary.qsofa,
                shock_index=summary.shock_index,
                inference_ms=round(assessment.inference_ms, 3),
                destination_hospital_id=hospital,
                series=history,
                ecg_strip_png=incident.ecg_strip_png,
                position=self.position,
            )

        result = self.outbox.add(build)
        log.debug(
            "result %d for incident %s: KTAS %d %s, NEWS2 %d",
            result.sequence, incident_id, result.acuity, result.emergency_type.value, result.news2.total,
        )  # fmt: skip
        return result

    def _incident_for(self, frame: VitalsFrame) -> IncidentState:
        incident = self._incidents.pop(frame.incident_id, None) or IncidentState(
            window=deque(maxlen=self.window_max_frames)
        )
        incident.window.append(frame)
        while incident.window and frame.timestamp - incident.window[0].timestamp > self.window:
            incident.window.popleft()
        incident.history.add(frame)
        self._incidents[frame.incident_id] = incident  # most recently used last
        while len(self._incidents) > self.max_incidents:
            self._incidents.popitem(last=False)
        return incident

    def attach_ecg_strip(self, incident_id: str, image: object) -> None:
        """Use a photographed ECG rhythm strip for the incident's next results.

        `image` is anything `prepare_strip_image` accepts: a PIL image, a file path or an array.
        Raises ValueError (from `prepare_strip_image`) when the image cannot be used.
        """
        prepared = prepare_strip_image(image)  # type: ignore[arg-type]
        incident = self._incidents.get(incident_id)
        if incident is None:
            incident = IncidentState(window=deque(maxlen=self.window_max_frames))
            self._incidents[incident_id] = incident
        incident.ecg_image = prepared
        incident.ecg_strip_png = encode_strip_png(prepared)
        log.info("ECG strip attached to incident %s", incident_id)

    # --- results to the broker ---------------------------------------------------------------

    def pump(self, timeout_s: float) -> None:
        """Publish what is pending, handle uplink events for up to `timeout_s`, then publish again.

        Publishing first sends a new result at once instead of after the wait.
        """
        self._publish_pending()
        deadline = time.monotonic() + max(0.0, timeout_s)
        acked: list[int] = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=remaining) if remaining > 0 else self.events.get_nowait()
            except queue.Empty:
                break
            if event.kind == "puback" and event.mid is not None:
                row_id = self._inflight.pop(event.mid, None)
                if row_id is not None:
                    self._inflight_rows.discard(row_id)
                    acked.append(row_id)
                # Drain what else is queued without waiting, then mark the batch at once.
                deadline = min(deadline, time.monotonic())
            elif event.kind == "connected":
                log.info("uplink connected; %d results pending", self.outbox.stats().pending)
        if acked:
            self.outbox.mark_delivered(acked)
        self._publish_pending()

    def _publish_pending(self) -> None:
        room = self.uplink.settings.max_inflight - len(self._inflight)
        if room <= 0 or not self.uplink.connected:
            return
        for row in self.outbox.pending(room, exclude_ids=self._inflight_rows):
            mid = self.uplink.publish(self.topic, row.payload)
            if mid is None:
                return
            self._inflight[mid] = row.id
            self._inflight_rows.add(row.id)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # --- main loop ---------------------------------------------------------------------------

    def run(
        self,
        frames: Iterator[ScheduledFrame],
        stop: threading.Event,
        *,
        duration_s: float | None = None,
        drain_timeout_s: float = 30.0,
        report_every_s: float = 10.0,
    ) -> None:
        """Play `frames` in real time until `stop` is set or `duration_s` passes, then drain."""
        self.uplink.start()
        started = time.monotonic()
        next_report = started + report_every_s
        upcoming = next(frames, None)
        while not stop.is_set():
            now = time.monotonic()
            if duration_s is not None and now - started >= duration_s:
                break
            while upcoming is not None and started + upcoming.at_s <= now:
                self.handle_frame(upcoming.incident_id, upcoming.values)
                upcoming = next(frames, None)
            wait_s = 0.05 if upcoming is None else min(0.05, max(0.0, started + upcoming.at_s - now))
            self.pump(wait_s)
            if now >= next_report:
                self._report()
                next_report = now + report_every_s
        self.drain(drain_timeout_s)

    def drain(self, timeout_s: float) -> bool:
        """Keep delivering until the outbox is empty or `timeout_s` passes; return True if empty."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.outbox.stats().pending == 0:
                break
            self.pump(0.05)
        stats = self.outbox.stats()
        if stats.pending:
            log.warning(
                "stopping with %d results still pending; they stay in the outbox and are sent after "
                "the next start",
                stats.pending,
            )
        self._report()
        self.uplink.stop()
        return stats.pending == 0

    def _report(self) -> None:
        stats = self.outbox.stats()
        log.info(
            "frames %d (rejected %d), results delivered %d, pending %d, in flight %d, %s, scoring with %s",
            stats.frames_seen, stats.frames_rejected, stats.delivered, stats.pending, self.inflight,
            "online" if self.uplink.connected else "offline", self.scorer.mode,
        )  # fmt: skip


def _arrived_by_ambulance(frame: VitalsFrame) -> VitalsFrame:
    """Record that the patient arrives by ambulance, which every patient of an edge agent does."""
    context = frame.context or PatientContext()
    if context.arrival_mode is not None:
        return frame
    return frame.model_copy(update={"context": context.model_copy(update={"arrival_mode": "ambulance"})})


def _latest_destination(window: deque[VitalsFrame]) -> str | None:
    for frame in reversed(window):
        if frame.destination_hospital_id:
            return frame.destination_hospital_id
    return None
