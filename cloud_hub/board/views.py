"""The hospital board's view of alerts: one cheap query per poll and a cache of parsed payloads.

Every open board polls every 2 s, and an alert's payload (scores, vitals and a trend of up to 60
points) is about 10 KB of JSON. So a poll reads only the alerts' columns, and it fetches and parses a
payload only when the alert's `updated_at` has changed since the previous poll.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from cloud_hub.store import HubStore, alerts, utc

log = logging.getLogger(__name__)

# Every column except the payload, which is read only on a cache miss.
_ROW_COLUMNS = [column for column in alerts.c if column.name != "payload"]

VITAL_NAMES = ("hr_bpm", "rr_per_min", "spo2_pct", "sbp_mmhg", "dbp_mmhg", "temp_c")


@dataclass(frozen=True)
class _CachedPayload:
    updated_at: datetime
    view: dict[str, Any]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _model_view(scores: dict[str, Any] | None) -> dict[str, Any] | None:
    """Condense one model's scores to what the board shows."""
    if scores is None:
        return None
    model = scores.get("model")
    return {
        "model_acuity": scores.get("model_acuity"),
        "urgent_probability": scores.get("urgent_probability"),
        "model_version": None if model is None else model.get("version"),
        "deterioration_risk": scores.get("deterioration_risk"),
        "ventricular_ectopy_probability": scores.get("ventricular_ectopy_probability"),
    }


def payload_view(payload: str) -> dict[str, Any]:
    """Turn the JSON of a stored `HospitalAlert` into the fields the board shows.

    A payload that is not valid JSON gives a view with `payload_error` set, so one bad row
    does not blank the whole board.
    """
    try:
        alert = json.loads(payload)
    except json.JSONDecodeError as exc:
        return {"payload_error": f"stored alert payload is not valid JSON: {exc}"}

    vitals = alert.get("vitals") or {}
    context = vitals.get("context") or {}
    edge = _model_view(alert.get("edge"))
    hub = _model_view(alert.get("hub"))
    # The hub's full model is the better judge, so its numbers are shown when it scored.
    preferred = hub or edge or {}
    news2 = alert.get("news2") or {}
    return {
        "reason": alert.get("reason", ""),
        "frame_timestamp": alert.get("frame_timestamp"),
        "eta_minutes": alert.get("eta_minutes"),
        "attempt": alert.get("attempt"),
        "escalated_from": alert.get("escalated_from"),
        "patient": {
            "age_years": context.get("age_years"),
            "sex": context.get("sex"),
            "chief_complaint": context.get("chief_complaint"),
        },
        "vitals": {
            "timestamp": vitals.get("timestamp"),
            **{name: vitals.get(name) for name in VITAL_NAMES},
            "consciousness": vitals.get("consciousness"),
            "gcs": vitals.get("gcs"),
            "supplemental_oxygen": vitals.get("supplemental_oxygen"),
        },
        "trend": [
            {"timestamp": point.get("timestamp"), **{name: point.get(name) for name in VITAL_NAMES}}
            for point in alert.get("trend") or []
        ],
        "news2": {
            "total": news2.get("total"),
            "subscores": news2.get("subscores") or {},
            "red_parameters": news2.get("red_parameters") or [],
            "missing": news2.get("missing") or [],
        },
        "qsofa": alert.get("qsofa"),
        "shock_index": alert.get("shock_index"),
        "deterioration_risk": preferred.get("deterioration_risk"),
        "ventricular_ectopy_probability": preferred.get("ventricular_ectopy_probability"),
        "edge": edge,
        "hub": hub,
        "disagreement": bool(alert.get("disagreement")),
    }


def _arrival(frame_timestamp: str | None, eta_minutes: float | None, now: datetime) -> dict[str, Any]:
    """Estimate the arrival time and the minutes left, counted from the newest vitals frame.

    The hub computes the ETA from where the ambulance was when it scored that frame. A re-sent
    alert keeps its ETA but gets a new `created_at`, so the frame's time is the right start.
    """
    if eta_minutes is None or frame_timestamp is None:
        return {"expected_arrival_at": None, "eta_remaining_minutes": None}
    # NOTE: the frame's time comes from the ambulance's clock, so a skewed clock shifts the estimate.
    arrival = datetime.fromisoformat(frame_timestamp) + timedelta(minutes=eta_minutes)
    remaining_minutes = max(0.0, (arrival - now).total_seconds() / 60)
    return {"expected_arrival_at": arrival.isoformat(), "eta_remaining_minutes": round(remaining_minutes, 1)}


class AlertViews:
    """Reads a hospital's recent alerts for the board, parsing each payload once per change."""

    def __init__(self, store: HubStore):
        self.store = store
        self._cache: dict[str, dict[str, _CachedPayload]] = {}  # hospital id -> alert id -> payload
        self._lock = threading.Lock()

    def recent(self, hospital_id: str, limit: int, since: datetime, now: datetime) -> list[dict[str, Any]]:
        """Return the hospital's alerts created at or after `since`, newest first, at most `limit`."""
        with self.store.engine.connect() as connection:
            rows = connection.execute(
                select(*_ROW_COLUMNS)
                .where(alerts.c.hospital_id == hospital_id, alerts.c.created_at >= since)
                .order_by(alerts.c.created_at.desc())
                .limit(limit)
            ).all()

            with self._lock:
                cached = dict(self._cache.get(hospital_id, {}))
            stale = [row.alert_id for row in rows if not self._is_fresh(cached.get(row.alert_id), row)]
            if stale:
                payloads = connection.execute(
                    select(alerts.c.alert_id, alerts.c.updated_at, alerts.c.payload).where(
                        alerts.c.alert_id.in_(stale)
                    )
                )
                for alert_id, updated_at, payload in payloads:
                    cached[alert_id] = _CachedPayload(utc(updated_at), payload_view(payload))  # type: ignore[arg-type]

        # Alerts that left the window drop out of the cache, so it contains one board's worth per hospital.
        current = {row.alert_id for row in rows}
        with self._lock:
            self._cache[hospital_id] = {key: value for key, value in cached.items() if key in current}
        return [
            self._alert_view(row, cached[row.alert_id].view, now) for row in rows if row.alert_id in cached
        ]

    @staticmethod
    def _is_fresh(entry: _CachedPayload | None, row: Any) -> bool:
        # Every write of a payload also sets updated_at (Transaction.update_alert), so an unchanged
        # updated_at means an unchanged payload.
        return entry is not None and entry.updated_at == utc(row.updated_at)

    @staticmethod
    def _alert_view(row: Any, payload: dict[str, Any], now: datetime) -> dict[str, Any]:
        # An update re-routes with a new position and stores the new ETA in the payload only.
        eta_minutes = payload.get("eta_minutes")
        if eta_minutes is None:
            eta_minutes = row.eta_minutes
        view = {
            "alert_id": row.alert_id,
            "device_id": row.device_id,
            "incident_id": row.incident_id,
            "sequence": row.sequence,
            "hospital_id": row.hospital_id,
            "acuity": row.acuity,
            "emergency_type": row.emergency_type,
            "state": row.state,
            "attempts": row.attempts,
            "created_at": _iso(utc(row.created_at)),
            "updated_at": _iso(utc(row.updated_at)),
            "last_sent_at": _iso(utc(row.last_sent_at)),
            "acknowledged_at": _iso(utc(row.acknowledged_at)),
            "acknowledged_by": row.acknowledged_by,
            "escalated_to": row.escalated_to,
            "escalation_of": row.escalation_of,
            "eta_minutes": eta_minutes,
            **_arrival(payload.get("frame_timestamp"), eta_minutes, now),
        }
        return {**payload, **view}
