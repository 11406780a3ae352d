"""The hub's HTTP server: Kubernetes probes, Prometheus metrics and the hospital board.

Runs uvicorn in a thread beside the AMQP loop. `/healthz` answers while the process is alive,
`/readyz` only while the hub consumes from the broker and its store answers, so Kubernetes sends no
traffic to a hub that cannot work and restarts one that hangs.
"""

from __future__ import annotations

import logging
import threading

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud_hub.service import HubService

log = logging.getLogger(__name__)


def create_app(service: HubService) -> FastAPI:
    app = FastAPI(title="Ambulance gateway hub", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(response: Response) -> dict[str, object]:
        checks = {
            "broker": service.ready.is_set(),
            "store": service.store.ping(),
            "model": service.engine.model is not None,
        }
        # Without the hub model the hub still alerts on the edge's scores, so it stays ready.
        ready = checks["broker"] and checks["store"]
        response.status_code = 200 if ready else 503
        return {"ready": ready, "checks": checks}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    try:
        from cloud_hub.board.app import add_board_routes
    except ImportError:  # pragma: no cover - the board ships with the hub; this guards partial installs
        log.warning("hospital board not installed; serving probes and metrics only")
    else:
        add_board_routes(app, service)
    return app


class HttpServer:
    """uvicorn in a daemon thread; `stop` asks it to finish and waits."""

    def __init__(self, service: HubService, host: str, port: int):
        config = uvicorn.Config(
            create_app(service), host=host, port=port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self.host, self.port = host, port

    def start(self) -> None:
        self.thread.start()
        log.info("board, probes and metrics on http://%s:%d", self.host, self.port)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
