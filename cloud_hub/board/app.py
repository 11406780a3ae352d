"""The hospital board: a live page of incoming patients per hospital, with an acknowledge button.

Routes added to the hub's FastAPI app:
- `GET /`: the hospitals, each linking to its board;
- `GET /board/{hospital_id}`: the board page, which polls the alerts API every 2 s;
- `GET /api/hospitals/{hospital_id}/alerts`: the hospital's recent alerts, newest first;
- `POST /api/alerts/{alert_id}/acknowledge`: records an acknowledgement through the hub's I/O loop,
  which also sends the `alert_feedback` message back to the ambulance.
Errors are JSON objects with a `detail` message, as FastAPI's `HTTPException` renders them.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.board.views import AlertViews
from cloud_hub.hospitals import Hospital
from cloud_hub.store import ALERT_ACKNOWLEDGED, ALERT_CANCELLED, AlertRow
from models.scores import NEWS2_EMERGENCY_THRESHOLD, NEWS2_URGENT_THRESHOLD, SHOCK_INDEX_ABNORMAL
from protocol import HospitalAck
from protocol.messages import Identifier

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_URL = "/static/board"

DEFAULT_ALERT_LIMIT = 30
MAX_ALERT_LIMIT = 200
DEFAULT_MAX_AGE_H = 24.0
MAX_MAX_AGE_H = 168.0
# Ectopy threshold without a loaded bundle, as in the alert policy and `OperatingPoint`'s default.
DEFAULT_ECTOPY_THRESHOLD = 0.5
# Sepsis-3 (Singer M et al., JAMA 2016;315(8):801-810): two or more qSOFA criteria suggest a poor outcome.
QSOFA_POSITIVE = 2


class AcknowledgeRequest(BaseModel):
    """Body of `POST /api/alerts/{alert_id}/acknowledge`."""

    model_config = ConfigDict(extra="forbid")

    hospital_id: Identifier
    acknowledged_by: str = Field(default="board", min_length=1, max_length=80)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _hospital_view(hospital: Hospital) -> dict[str, Any]:
    return {
        "id": hospital.id,
        "name": hospital.label,
        "pci": hospital.pci,
        "stroke_centre": hospital.stroke_centre,
        "trauma_level": hospital.trauma_level,
        "backup_hospital_id": hospital.backup_hospital_id,
    }


def _acknowledgement_view(row: AlertRow, already_acknowledged: bool) -> dict[str, Any]:
    return {
        "alert_id": row.alert_id,
        "hospital_id": row.hospital_id,
        "state": row.state,
        "acknowledged_by": row.acknowledged_by,
        "acknowledged_at": None if row.acknowledged_at is None else row.acknowledged_at.isoformat(),
        "already_acknowledged": already_acknowledged,
    }


def _index_page(hospitals: list[Hospital]) -> str:
    items = "\n".join(
        f'    <li><a href="/board/{html.escape(h.id)}">{html.escape(h.label)}</a>'
        f' <span class="muted">({html.escape(h.id)})</span></li>'
        for h in hospitals
    )
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Hospital boards</title>
  <link rel="stylesheet" href="{STATIC_URL}/board.css">
</head>
<body class="index">
  <h1>Hospital boards</h1>
  <ul class="hospital-list">
{items}
  </ul>
</body>
</html>
"""


def _not_found_page(hospital_id: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Hospital not found</title>
  <link rel="stylesheet" href="{STATIC_URL}/board.css">
</head>
<body class="index">
  <h1>Hospital not found</h1>
  <p>No hospital with id <code>{html.escape(hospital_id)}</code> is configured on this hub.
  <a href="/">Choose a hospital.</a></p>
</body>
</html>
"""


def add_board_routes(app: FastAPI, service: Any, clock: Callable[[], datetime] = _utc_now) -> None:
    """Add the board's pages, static files and JSON API to the hub's app.

    `service` is a `HubService`, or an object with its `config`, `store`, `ready`, `engine` and
    `acknowledge`.
    """
    hospitals = {hospital.id: hospital for hospital in service.config.hospitals}
    views = AlertViews(service.store)

    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="board-static")

    def known_hospital(hospital_id: str) -> Hospital:
        hospital = hospitals.get(hospital_id)
        if hospital is None:
            raise HTTPException(
                404, detail=f"hospital {hospital_id!r} not found; known hospitals: {', '.join(hospitals)}"
            )
        return hospital

    def store_unavailable(action: str, exc: SQLAlchemyError) -> HTTPException:
        log.error("board could not %s: the hub store failed: %s", action, exc)
        return HTTPException(
            503, detail=f"the hub's database is unavailable ({type(exc).__name__}); try again"
        )

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(_index_page(list(hospitals.values())))

    @app.get("/board/{hospital_id}", response_model=None)
    def board_page(hospital_id: str) -> FileResponse | HTMLResponse:
        if hospital_id not in hospitals:
            return HTMLResponse(_not_found_page(hospital_id), status_code=404)
        return FileResponse(STATIC_DIR / "board.html", media_type="text/html")

    # The views hold only JSON types, so the body goes straight to json.dumps, skipping FastAPI's
    # serialisation of a return value. A board of 30 alerts with 60-point trends is about 300 KB.
    @app.get("/api/hospitals/{hospital_id}/alerts", response_class=JSONResponse)
    def hospital_alerts(
        hospital_id: str,
        limit: int = Query(
            DEFAULT_ALERT_LIMIT, ge=1, le=MAX_ALERT_LIMIT, description="maximum number of alerts"
        ),
        max_age_h: float = Query(
            DEFAULT_MAX_AGE_H,
            gt=0,
            le=MAX_MAX_AGE_H,
            description="only alerts created within this many hours",
        ),
    ) -> JSONResponse:
        hospital = known_hospital(hospital_id)
        now = clock()
        try:
            alerts = views.recent(hospital.id, limit, since=now - timedelta(hours=max_age_h), now=now)
        except SQLAlchemyError as exc:
            raise store_unavailable(f"read the alerts of {hospital.id}", exc) from exc

        operating_point = getattr(service.engine, "operating_point", None)
        body = {
            "hospital": _hospital_view(hospital),
            "generated_at": now.isoformat(),
            "hub_connected": service.ready.is_set(),
            # The page highlights a score at or above its threshold.
            "thresholds": {
                "news2_urgent": NEWS2_URGENT_THRESHOLD,
                "news2_emergency": NEWS2_EMERGENCY_THRESHOLD,
                "qsofa": QSOFA_POSITIVE,
                "shock_index": SHOCK_INDEX_ABNORMAL,
                "ectopy": operating_point.ectopy_threshold if operating_point else DEFAULT_ECTOPY_THRESHOLD,
                "deterioration": operating_point.deterioration_threshold if operating_point else None,
            },
            "alerts": alerts,
        }
        return JSONResponse(body)

    @app.post("/api/alerts/{alert_id}/acknowledge")
    def acknowledge(alert_id: str, request: AcknowledgeRequest) -> dict[str, Any]:
        try:
            row = service.store.alert(alert_id)
        except SQLAlchemyError as exc:
            raise store_unavailable(f"read alert {alert_id}", exc) from exc
        if row is None:
            raise HTTPException(404, detail=f"alert {alert_id!r} not found")
        if row.hospital_id != request.hospital_id:
            raise HTTPException(
                409,
                detail=f"alert {alert_id!r} was sent to hospital {row.hospital_id!r}, not {request.hospital_id!r}",
            )
        if row.state == ALERT_CANCELLED:
            raise HTTPException(
                409, detail=f"alert {alert_id!r} was cancelled, so there is nothing to acknowledge"
            )
        if row.state == ALERT_ACKNOWLEDGED:
            return _acknowledgement_view(row, already_acknowledged=True)

        ack = HospitalAck(
            alert_id=alert_id,
            hospital_id=request.hospital_id,
            acknowledged_at=clock(),
            acknowledged_by=request.acknowledged_by.strip() or "board",
        )
        try:
            service.acknowledge(ack)
        except RuntimeError as exc:
            log.warning("acknowledgement of alert %s not recorded: %s", alert_id, exc)
            raise HTTPException(
                503,
                detail="the hub is not connected to the message broker, so the acknowledgement was not "
                "recorded. Try again in a moment.",
            ) from exc
        except TimeoutError as exc:
            log.error("acknowledgement of alert %s timed out on the hub's I/O loop", alert_id)
            raise HTTPException(
                503,
                detail="the hub did not confirm the acknowledgement in time. "
                "Check the board before trying again.",
            ) from exc
        except SQLAlchemyError as exc:
            raise store_unavailable(f"record the acknowledgement of {alert_id}", exc) from exc

        try:
            updated = service.store.alert(alert_id)
        except SQLAlchemyError as exc:
            raise store_unavailable(f"read alert {alert_id}", exc) from exc
        if updated is None or updated.state != ALERT_ACKNOWLEDGED:
            # The alert changed between the check above and the hub's I/O loop, e.g. the crew cancelled it.
            state = "deleted" if updated is None else updated.state
            raise HTTPException(
                409, detail=f"alert {alert_id!r} is {state}, so the acknowledgement was not recorded"
            )
        return _acknowledgement_view(updated, already_acknowledged=False)
