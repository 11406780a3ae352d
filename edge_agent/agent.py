"""The edge agent: frames in, triage results into the outbox, outbox rows out over MQTT.

One thread owns the outbox and the scoring; the uplink's network thread only reports connection
changes, PUBACKs and the hub's feedback through a queue. A row is marked delivered only when its
PUBACK arrives. After a reconnect the backlog drains urgent rows first (see `Outbox.pending`).
The crew terminal talks to the agent through the outbox file: it queues commands there and reads
the results, the feedback and the agent's state.
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
from protocol import URGENT_ACUITY_MAX, AlertFeedback, GeoPosition, PatientContext, TriageResult, VitalsFrame
from protocol.messages import ContractError, describe_validation_error, parse_message
from protocol.topics import check_id, triage_topic, urgent_topic

log = logging.getLogger(__name__)

COMMAND_POLL_S = 0.25
COMMAND_MAX_AGE_S = 120.0
CREW_DESTINATION_KEY = "crew_destination"

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
        self._configured_destination = destination_hospital_id
        self.window = timedelta(seconds=window_s)
        self.window_max_frames = window_max_frames
        self.max_incidents = max_incidents
        self.position = position  # sent with each result, for the hub's routing and ETA
        self.clock = clock
        self.topic = triage_topic(device_id)
        self.urgent_topic = urgent_topic(device_id)
        self._incidents: OrderedDict[str, IncidentState] = OrderedDict()
        self._inflight: dict[int, int] = {}  # MQTT message id -> outbox row id
        # Events are handled on this thread after publish() has returned and the mid is recorded,
        # so a PUBACK that paho receives before publish() returns still finds its row.
        self._inflight_rows: set[int] = set()
        self._next_command_check = 0.0
        self.current_incident_id: str | None = None  # set by the crew terminal's "new incident"

    # --- frames to results -------------------------------------------------------------------

    def handle_frame(
        self,
        incident_id: str,
        values: dict[str, Any],
        *,
        crew_prealert: bool = False,
        crew_note: str | None = None,
    ) -> TriageResult | None:
        """Validate a frame, score its incident's window and store the result; None if rejected.

        `crew_prealert` requests an alert to the hospital whatever the scores are.
        """
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
                crew_prealert=crew_prealert,
                crew_note=crew_note,
            )

        result = self.outbox.add(build, urgent=assessment.acuity <= URGENT_ACUITY_MAX or crew_prealert)
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
                stats = self.outbox.stats()
                log.info(
                    "uplink connected; %d results pending, %d of them urgent and sent first",
                    stats.pending, stats.pending_urgent,
                )  # fmt: skip
                self.outbox.record_link("online", at=event.at)
            elif event.kind == "disconnected":
                self.outbox.record_link("offline", event.detail, at=event.at)
            elif event.kind == "feedback":
                self._record_feedback(event.payload)
        if acked:
            self.outbox.mark_delivered(acked)
        self._publish_pending()
        if time.monotonic() >= self._next_command_check:
            self._next_command_check = time.monotonic() + COMMAND_POLL_S
            self.handle_commands()

    def _publish_pending(self) -> None:
        room = self.uplink.settings.max_inflight - len(self._inflight)
        if room <= 0 or not self.uplink.connected:
            return
        rows = self.outbox.pending(room, exclude_ids=self._inflight_rows)
        if not rows:
            return
        # A routine row may not be on disk yet. Once the hub has its sequence number, a power cut
        # must not hand that number out again, so it is flushed first.
        self.outbox.sync()
        sent = []
        for row in rows:
            mid = self.uplink.publish(self.urgent_topic if row.urgent else self.topic, row.payload)
            if mid is None:
                break
            self._inflight[mid] = row.id
            self._inflight_rows.add(row.id)
            sent.append(row.id)
        self.outbox.mark_sent(sent)

    def _record_feedback(self, payload: bytes) -> None:
        try:
            feedback = parse_message(AlertFeedback, payload)
        except ContractError as exc:
            log.error("unreadable feedback from the hub ignored: %s", exc)
            return
        self.outbox.record_feedback(
            feedback.alert_id, feedback.incident_id, feedback.hospital_id, feedback.state, feedback.at,
            feedback.detail,
        )  # fmt: skip
        log.info("pre-alert %s at %s: %s", feedback.alert_id, feedback.hospital_id, feedback.state)

    # --- commands from the crew terminal ---------------------------------------------------------

    def handle_commands(self) -> None:
        """Carry out the commands the crew terminal queued in the outbox, oldest first."""
        for command in self.outbox.take_commands():
            age_s = (utc_now() - command.created_at).total_seconds()
            if age_s > COMMAND_MAX_AGE_S:
                # Queued while no agent ran: a pre-alert or incident change from then is stale now.
                detail = f"expired: queued {age_s:.0f} s before the agent took it (limit {COMMAND_MAX_AGE_S:.0f} s)"
                log.warning("command %d (%s) %s", command.id, command.kind, detail)
                self.outbox.finish_command(command.id, False, detail)
                continue
            try:
                detail = self._run_command(command.kind, command.payload)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("command %d (%s) failed: %s", command.id, command.kind, exc)
                self.outbox.finish_command(command.id, False, str(exc))
            else:
                log.info("command %d (%s): %s", command.id, command.kind, detail)
                self.outbox.finish_command(command.id, True, detail)

    def _run_command(self, kind: str, payload: dict[str, Any]) -> str:
        if kind == "set_destination":
            hospital = payload.get("hospital_id") or None
            if hospital is not None:
                check_id(str(hospital), "hospital id")
            self.destination_hospital_id = hospital
            self.outbox.set_state("destination_hospital_id", hospital)
            # Kept across a restart of the agent until the crew starts a new incident.
            self.outbox.set_state(CREW_DESTINATION_KEY, {"hospital_id": hospital})
            return f"destination set to {hospital or 'the hub’s choice'}"
        if kind == "new_incident":
            incident_id = str(payload.get("incident_id") or f"inc-{self.clock():%Y%m%d-%H%M%S}")
            check_id(incident_id, "incident id")
            self.current_incident_id = incident_id
            self.outbox.set_state("current_incident_id", incident_id)
            if self.outbox.get_state(CREW_DESTINATION_KEY) is not None:
                self.outbox.set_state(CREW_DESTINATION_KEY, None)
                self.destination_hospital_id = self._configured_destination
            return f"new incident {incident_id}"
        if kind == "manual_prealert":
            return self._manual_prealert(str(payload.get("note") or "")[:280], payload.get("incident_id"))
        raise ValueError(f"unknown command {kind!r}: use set_destination, new_incident or manual_prealert")

    def _manual_prealert(self, note: str, incident_id: str | None) -> str:
        """Send a pre-alert for the incident's newest vitals, marked as the crew's request."""
        incident_id = incident_id or self.current_incident_id or next(reversed(self._incidents), None)
        if incident_id is None:
            raise ValueError("no incident yet: start one or wait for the first vitals")
        incident = self._incidents.get(incident_id)
        if incident is None or not incident.window:
            raise ValueError(f"no vitals recorded for incident {incident_id!r}")
        latest = incident.window[-1].model_dump(
            exclude={"device_id", "incident_id", "timestamp", "kind"}, exclude_none=True
        )
        result = self.handle_frame(incident_id, latest, crew_prealert=True, crew_note=note or None)
        if result is None:
            raise ValueError(f"the newest vitals of incident {incident_id!r} were rejected")
        return f"pre-alert queued as result {result.sequence} for incident {incident_id}"

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
        self.publish_state()
        self.outbox.record_link("offline", "starting")
        self.uplink.start()
        started = time.monotonic()
        next_report = started + report_every_s
        upcoming = next(frames, None)
        while not stop.is_set():
            now = time.monotonic()
            if duration_s is not None and now - started >= duration_s:
                break
            while upcoming is not None and started + upcoming.at_s <= now:
                self.handle_frame(self.current_incident_id or upcoming.incident_id, upcoming.values)
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
        self.outbox.record_link("offline", "agent stopped")  # the crew terminal shows this text
        return stats.pending == 0

    def publish_state(self) -> None:
        """Write what the crew terminal shows about the agent itself into the outbox's state table.

        A destination the crew chose before a restart of the agent wins over the configured one.
        """
        crew_choice = self.outbox.get_state(CREW_DESTINATION_KEY)
        if isinstance(crew_choice, dict):
            self.destination_hospital_id = crew_choice.get("hospital_id")
        self.outbox.set_state("device_id", self.device_id)
        self.outbox.set_state("destination_hospital_id", self.destination_hospital_id)
        self.outbox.set_state("scorer_mode", self.scorer.mode)
        self.outbox.set_state("model_version", self.scorer.model.version if self.scorer.model else None)
        self.outbox.set_state("max_rows", self.outbox.max_rows)

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
