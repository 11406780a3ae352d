"""The hospital board: its JSON API, and the page in headless Chromium acknowledging a real alert.

The browser tests drive Debian's `chromium` through Playwright for Python, pointed at the system
binary, so no browser is downloaded.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image, ImageStat

from cloud_hub.board.app import add_board_routes
from cloud_hub.config import HubConfig
from cloud_hub.engine import HubEngine
from cloud_hub.http import HttpServer
from cloud_hub.metrics import HubMetrics
from cloud_hub.store import (
    ALERT_ACKNOWLEDGED,
    ALERT_CANCELLED,
    ALERT_DELIVERED,
    HubStore,
    OutboxMessage,
    alert_values,
)
from protocol import (
    HospitalAck,
    HospitalAlert,
    ModelInfo,
    News2Score,
    PatientContext,
    Scores,
    TrendPoint,
    VitalsFrame,
)
from protocol.topics import feedback_topic

from .conftest import CRITICAL, NORMAL, hospital_queue_exists, make_agent, start_hub, unique, wait_until

CHROMIUM = "/usr/bin/chromium"
# Background networking, component updates and sync stay off because the test machine has no internet.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1600, "height": 1200}

# The colours of board.css, as Chromium paints them.
KTAS_COLOURS = {1: (224, 32, 27), 2: (255, 138, 0), 3: (255, 214, 0), 4: (31, 170, 60), 5: (30, 111, 224)}
STATE_COLOURS = {"delivered": (255, 176, 0), "acknowledged": (22, 163, 74)}
# Maximum Euclidean distance in RGB from the expected colour. Text and anti-aliased edges are not the
# dominant colour of a badge, so they do not count.
COLOUR_TOLERANCE = 30

FIXED_NOW = datetime(2025, 3, 4, 10, 0, tzinfo=UTC)
MODEL = ModelInfo(version="test-1", sha256="0" * 64)


# --- helpers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, timeout_s: float) -> bool:
    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    return wait_until(answers, timeout_s)


def scores(model_acuity: int, urgent: float, ectopy: float | None = None) -> Scores:
    probabilities = [0.0] * 5
    probabilities[model_acuity - 1] = 1.0
    return Scores(
        acuity_probabilities=probabilities,
        urgent_probability=urgent,
        model_acuity=model_acuity,
        emergency_type_probabilities={"cardiac": 0.8, "other": 0.2},
        ventricular_ectopy_probability=ectopy,
        deterioration_risk=0.42,
        model=MODEL,
    )


def make_alert(
    alert_id: str, hospital_id: str, acuity: int, created_at: datetime, eta_minutes: float | None = None
) -> HospitalAlert:
    """Build a pre-alert as the hub does, for a patient in shock with a rising heart rate."""
    frames = [
        TrendPoint(timestamp=created_at - timedelta(minutes=3 - i), hr_bpm=hr, sbp_mmhg=sbp, spo2_pct=spo2)
        for i, (hr, sbp, spo2) in enumerate([(110, 100, 94), (122, 92, 91), (138, 84, 86)])
    ]
    vitals = VitalsFrame(
        device_id="amb-1", incident_id="incident-1", timestamp=frames[-1].timestamp,
        hr_bpm=138, rr_per_min=30, spo2_pct=86, sbp_mmhg=84, dbp_mmhg=50, temp_c=39.4,
        consciousness="V", supplemental_oxygen=True,
        context=PatientContext(age_years=71, sex="male", chief_complaint="chest pain"),
    )  # fmt: skip
    return HospitalAlert(
        alert_id=alert_id, hospital_id=hospital_id, device_id="amb-1", incident_id="incident-1", sequence=0,
        created_at=created_at, frame_timestamp=vitals.timestamp, acuity=acuity, emergency_type="cardiac",
        reason="edge model KTAS 3; hub model KTAS 1; NEWS2 15, red: consciousness sets KTAS 2 or more urgent",
        edge=scores(3, 0.2), hub=scores(1, 0.9, ectopy=0.83), disagreement=True,
        news2=News2Score(total=15, subscores={"pulse": 3, "spo2": 3, "systolic_bp": 3, "consciousness": 3},
                         red_parameters=["pulse", "consciousness"], missing=[]),
        qsofa=3, shock_index=1.64, vitals=vitals, trend=frames, eta_minutes=eta_minutes,
    )  # fmt: skip


def insert_alert(store: HubStore, alert: HospitalAlert, state: str = ALERT_DELIVERED) -> None:
    with store.transaction(alert.created_at) as tx:
        tx.create_alert(alert_values(alert))
        tx.update_alert(alert.alert_id, state=state, attempts=1, last_sent_at=alert.created_at)


def feedback_states(messages: list[OutboxMessage], alert_id: str) -> list[str]:
    """Return the state of every `alert_feedback` message about an alert, in publishing order."""
    return [
        json.loads(message.body)["state"]
        for message in messages
        if message.kind == "alert_feedback" and message.alert_id == alert_id
    ]


class AmbulanceFeedback:
    """An ambulance's MQTT subscription to its feedback topic; records each state it receives."""

    def __init__(self, mqtt_port: int, device_id: str):
        self.states: list[tuple[str, str]] = []  # (alert id, state)
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device_id}-feedback", protocol=mqtt.MQTTv311
        )
        self.client.on_connect = lambda client, *_: client.subscribe(feedback_topic(device_id), qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", mqtt_port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        feedback = json.loads(message.payload)
        self.states.append((feedback["alert_id"], feedback["state"]))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def dominant_colour(image: Image.Image, box: dict[str, float], inset_px: int = 6) -> tuple[int, int, int]:
    """Return the most frequent colour inside an element's bounding box, a few pixels in from its edges."""
    left, top = int(box["x"]) + inset_px, int(box["y"]) + inset_px
    right, bottom = int(box["x"] + box["width"]) - inset_px, int(box["y"] + box["height"]) - inset_px
    region = image.convert("RGB").crop((left, top, right, bottom))
    count, colour = max(region.getcolors(maxcolors=region.width * region.height))
    return colour


def colour_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5


def assert_not_blank(image: Image.Image) -> None:
    grey = image.convert("L")
    assert ImageStat.Stat(grey).stddev[0] > 20, "screenshot is nearly uniform"
    assert len(image.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 50, (
        "screenshot has too few colours"
    )


# --- a stand-in for the hub ------------------------------------------------------------------------


class FakeHub:
    """Stand-in for the broker-connected HubService, with a real store and engine.

    The real service runs `engine.handle_ack` on its AMQP I/O loop and publishes the feedback. This
    one calls the engine directly, and its `ready` event plays the broker connection.
    """

    def __init__(self, store_url: str, hospitals: list[dict]):
        self.config = HubConfig.model_validate({"store_url": store_url, "hospitals": hospitals})
        self.store = HubStore(store_url)
        self.metrics = HubMetrics()
        self.engine = HubEngine(
            self.config, self.store, SimpleNamespace(model=None, operating_point=None), self.metrics
        )
        self.ready = threading.Event()
        self.ready.set()
        self.published: list[OutboxMessage] = []  # what the real service would publish

    def acknowledge(self, ack: HospitalAck) -> None:
        if not self.ready.is_set():
            raise RuntimeError("the hub is not connected to the broker")
        self.published += self.engine.handle_ack(ack)


@pytest.fixture
def fake_hub(tmp_path: Path) -> Iterator[FakeHub]:
    hub = FakeHub(
        f"sqlite:///{tmp_path / 'hub.sqlite'}",
        [{"id": "riverside", "name": "Riverside General"}, {"id": "hillcrest", "name": "Hillcrest"}],
    )
    yield hub
    hub.store.close()


@dataclass(frozen=True)
class HttpResponse:
    status_code: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class BoardClient:
    """The board's app under uvicorn on a loopback port, with a small JSON client for it."""

    def __init__(self, app: FastAPI):
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, name="board-test-http", daemon=True)

    def start(self) -> None:
        self.thread.start()
        assert wait_until(lambda: self.server.started, 10), "test HTTP server did not start"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def request(self, method: str, path: str, json_body: dict | None = None) -> HttpResponse:
        """Send a request and return the response, for error statuses too."""
        data = None if json_body is None else json.dumps(json_body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return HttpResponse(response.status, response.read().decode())
        except urllib.error.HTTPError as error:
            return HttpResponse(error.code, error.read().decode())

    def get(self, path: str, params: dict | None = None) -> HttpResponse:
        query = "" if not params else "?" + urllib.parse.urlencode(params)
        return self.request("GET", path + query)

    def post(self, path: str, json: dict) -> HttpResponse:
        return self.request("POST", path, json)


@pytest.fixture
def client(fake_hub: FakeHub) -> Iterator[BoardClient]:
    app = FastAPI()
    add_board_routes(app, fake_hub, clock=lambda: FIXED_NOW)
    running = BoardClient(app)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """Launch Debian's Chromium under Playwright, or fail with the install command for what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright is not installed: run `.venv/bin/pip install playwright` (never `playwright install`)"
        )
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} not found: run `apt-get install -y chromium`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


# --- the JSON API and pages, against the stand-in ----------------------------------------------------


def test_alerts_api_lists_newest_first(client: BoardClient, fake_hub: FakeHub) -> None:
    older = make_alert("amb-1-0", "riverside", 2, FIXED_NOW - timedelta(minutes=5), eta_minutes=12)
    newer = make_alert("amb-2-0", "riverside", 1, FIXED_NOW - timedelta(minutes=1))
    elsewhere = make_alert("amb-3-0", "hillcrest", 1, FIXED_NOW - timedelta(minutes=1))
    for alert in (older, newer, elsewhere):
        insert_alert(fake_hub.store, alert)

    response = client.get("/api/hospitals/riverside/alerts")

    assert response.status_code == 200
    body = response.json()
    assert body["hospital"]["name"] == "Riverside General"
    assert body["hub_connected"] is True
    assert [a["alert_id"] for a in body["alerts"]] == ["amb-2-0", "amb-1-0"]
    first = body["alerts"][1]
    assert first["acuity"] == 2
    assert first["emergency_type"] == "cardiac"
    assert first["state"] == "delivered"
    assert first["attempts"] == 1
    assert first["patient"] == {"age_years": 71, "sex": "male", "chief_complaint": "chest pain"}
    assert first["vitals"]["hr_bpm"] == 138
    assert [p["hr_bpm"] for p in first["trend"]] == [110, 122, 138]
    assert first["news2"]["total"] == 15
    assert first["news2"]["red_parameters"] == ["pulse", "consciousness"]
    assert first["qsofa"] == 3
    assert first["shock_index"] == 1.64
    assert first["deterioration_risk"] == 0.42
    assert first["ventricular_ectopy_probability"] == 0.83
    assert first["edge"]["model_acuity"] == 3
    assert first["hub"]["model_acuity"] == 1
    assert first["hub"]["model_version"] == "test-1"
    assert first["disagreement"] is True
    assert "NEWS2 15" in first["reason"]


def test_alerts_api_eta_counts_from_frame(client: BoardClient, fake_hub: FakeHub) -> None:
    alert = make_alert("amb-1-0", "riverside", 2, FIXED_NOW - timedelta(minutes=5), eta_minutes=12)
    insert_alert(fake_hub.store, alert)

    body = client.get("/api/hospitals/riverside/alerts").json()

    view = body["alerts"][0]
    assert view["eta_minutes"] == 12
    # The alert is 5 min old and its newest frame 6 min, so 6 of the 12 minutes remain.
    assert alert.frame_timestamp == FIXED_NOW - timedelta(minutes=6)
    assert view["expected_arrival_at"] == (alert.frame_timestamp + timedelta(minutes=12)).isoformat()
    assert view["eta_remaining_minutes"] == 6.0


def test_alerts_api_skips_old_alerts(client: BoardClient, fake_hub: FakeHub) -> None:
    insert_alert(fake_hub.store, make_alert("amb-1-0", "riverside", 2, FIXED_NOW - timedelta(hours=30)))
    insert_alert(fake_hub.store, make_alert("amb-2-0", "riverside", 2, FIXED_NOW - timedelta(hours=2)))

    default = client.get("/api/hospitals/riverside/alerts").json()
    narrow = client.get("/api/hospitals/riverside/alerts", params={"max_age_h": 1}).json()
    wide = client.get("/api/hospitals/riverside/alerts", params={"max_age_h": 48, "limit": 1}).json()

    assert [a["alert_id"] for a in default["alerts"]] == ["amb-2-0"]
    assert narrow["alerts"] == []
    assert [a["alert_id"] for a in wide["alerts"]] == ["amb-2-0"]


def test_alerts_api_sees_updated_payload(client: BoardClient, fake_hub: FakeHub) -> None:
    alert = make_alert("amb-1-0", "riverside", 2, FIXED_NOW - timedelta(minutes=5))
    insert_alert(fake_hub.store, alert)
    assert client.get("/api/hospitals/riverside/alerts").json()["alerts"][0]["qsofa"] == 3

    changed = alert.model_copy(update={"qsofa": 1, "acuity": 1})
    with fake_hub.store.transaction(FIXED_NOW) as tx:
        tx.update_alert(alert.alert_id, acuity=1, payload=changed.model_dump_json())

    view = client.get("/api/hospitals/riverside/alerts").json()["alerts"][0]
    assert view["qsofa"] == 1
    assert view["acuity"] == 1


def test_alerts_api_unknown_hospital(client: BoardClient) -> None:
    response = client.get("/api/hospitals/nowhere/alerts")

    assert response.status_code == 404
    assert "nowhere" in response.json()["detail"]


def test_pages_and_static_files(client: BoardClient) -> None:
    index = client.get("/")
    board = client.get("/board/riverside")
    unknown = client.get("/board/nowhere")
    script = client.get("/static/board/board.js")
    style = client.get("/static/board/board.css")

    assert index.status_code == 200
    assert 'href="/board/riverside"' in index.text
    assert "Riverside General" in index.text
    assert board.status_code == 200
    assert "/static/board/board.js" in board.text
    assert unknown.status_code == 404
    assert "nowhere" in unknown.text
    assert script.status_code == 200
    assert style.status_code == 200
    # The wall screens have no internet, so the page must load nothing from another host.
    for text in (board.text, script.text, style.text):
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text


def test_acknowledge_records_and_sends_feedback(client: BoardClient, fake_hub: FakeHub) -> None:
    insert_alert(fake_hub.store, make_alert("amb-1-0", "riverside", 2, FIXED_NOW - timedelta(minutes=5)))

    response = client.post(
        "/api/alerts/amb-1-0/acknowledge", json={"hospital_id": "riverside", "acknowledged_by": "Nurse Kim"}
    )

    assert response.status_code == 200
    body = response.json()
    assert body["state"] == ALERT_ACKNOWLEDGED
    assert body["acknowledged_by"] == "Nurse Kim"
    assert body["already_acknowledged"] is False
    row = fake_hub.store.alert("amb-1-0")
    assert row is not None
    assert row.state == ALERT_ACKNOWLEDGED
    assert feedback_states(fake_hub.published, "amb-1-0") == ["acknowledged"]


def test_acknowledge_twice_keeps_first(client: BoardClient, fake_hub: FakeHub) -> None:
    insert_alert(fake_hub.store, make_alert("amb-1-0", "riverside", 2, FIXED_NOW - timedelta(minutes=5)))
    client.post(
        "/api/alerts/amb-1-0/acknowledge", json={"hospital_id": "riverside", "acknowledged_by": "Kim"}
    )

    again = client.post(
        "/api/alerts/amb-1-0/acknowledge", json={"hospital_id": "riverside", "acknowledged_by": "Lee"}
    )

    assert again.status_code == 200
    assert again.json()["already_acknowledged"] is True
    assert again.json()["acknowledged_by"] == "Kim"
    assert feedback_states(fake_hub.published, "amb-1-0") == ["acknowledged"]


def test_acknowledge_unknown_alert(client: BoardClient) -> None:
    response = client.post("/api/alerts/amb-9-9/acknowledge", json={"hospital_id": "riverside"})

    assert response.status_code == 404
    assert "amb-9-9" in response.json()["detail"]


def test_acknowledge_other_hospitals_alert(client: BoardClient, fake_hub: FakeHub) -> None:
    insert_alert(fake_hub.store, make_alert("amb-1-0", "hillcrest", 2, FIXED_NOW - timedelta(minutes=5)))

    response = client.post("/api/alerts/amb-1-0/acknowledge", json={"hospital_id": "riverside"})

    assert response.status_code == 409
    assert "hillcrest" in response.json()["detail"]
    assert fake_hub.store.alert("amb-1-0").state == ALERT_DELIVERED


def test_acknowledge_cancelled_alert(client: BoardClient, fake_hub: FakeHub) -> None:
    alert = make_alert("amb-1-0", "riverside", 2, FIXED_NOW - timedelta(minutes=5))
    insert_alert(fake_hub.store, alert, state=ALERT_CANCELLED)

    response = client.post("/api/alerts/amb-1-0/acknowledge", json={"hospital_id": "riverside"})

    assert response.status_code == 409
    assert "cancelled" in response.json()["detail"]


def test_acknowledge_without_broker(client: BoardClient, fake_hub: FakeHub) -> None:
    insert_alert(fake_hub.store, make_alert("amb-1-0", "riverside", 2, FIXED_NOW - timedelta(minutes=5)))
    fake_hub.ready.clear()

    response = client.post("/api/alerts/amb-1-0/acknowledge", json={"hospital_id": "riverside"})

    assert response.status_code == 503
    assert "not connected" in response.json()["detail"]
    assert fake_hub.store.alert("amb-1-0").state == ALERT_DELIVERED
    assert client.get("/api/hospitals/riverside/alerts").json()["hub_connected"] is False


def test_acknowledge_rejects_invalid_body(client: BoardClient, fake_hub: FakeHub) -> None:
    insert_alert(fake_hub.store, make_alert("amb-1-0", "riverside", 2, FIXED_NOW - timedelta(minutes=5)))

    missing = client.post("/api/alerts/amb-1-0/acknowledge", json={"acknowledged_by": "Kim"})
    empty_name = client.post(
        "/api/alerts/amb-1-0/acknowledge", json={"hospital_id": "riverside", "acknowledged_by": ""}
    )

    assert missing.status_code == 422
    assert empty_name.status_code == 422
    assert fake_hub.store.alert("amb-1-0").state == ALERT_DELIVERED


# --- the page in Chromium ------------------------------------------------------------------------------


def test_board_shows_eta_and_lost_hub(chromium, fake_hub: FakeHub) -> None:
    # The stand-in serves real HTTP here, so the page's countdown and banners run in the browser.
    now = datetime.now(UTC)
    insert_alert(fake_hub.store, make_alert("amb-1-0", "riverside", 1, now, eta_minutes=12))
    port = free_port()
    server = HttpServer(fake_hub, "127.0.0.1", port)  # type: ignore[arg-type]
    server.start()
    assert wait_for_http(f"http://127.0.0.1:{port}/healthz", 10)
    page = chromium.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"http://127.0.0.1:{port}/board/riverside")
        card = page.locator('article.card[data-alert-id="amb-1-0"]')
        card.wait_for(timeout=10_000)

        assert page.locator("#hospital-name").text_content() == "Riverside General"
        assert card.locator('[data-field="eta"]').text_content().startswith(("ETA 12 min", "ETA 11 min"))
        assert "ventricular ectopy" in card.locator('[data-field="ectopy"]').text_content()
        assert "DISAGREE" in card.locator('[data-field="models"]').text_content()
        assert page.locator("#banner").is_hidden()

        fake_hub.ready.clear()
        page.locator("#banner").wait_for(state="visible", timeout=10_000)
        assert "lost its connection" in page.locator("#banner").text_content()
        card.locator("button.ack-button").click()
        card.locator(".ack-error").wait_for(timeout=10_000)
        assert "not connected" in card.locator(".ack-error").text_content()
        assert fake_hub.store.alert("amb-1-0").state == ALERT_DELIVERED

        server.stop()
        page.wait_for_function(
            "document.getElementById('banner').textContent.includes('Cannot reach the hub')", timeout=10_000
        )
        assert card.is_visible(), "the last cards received stay on the board"
    finally:
        page.close()
        server.stop()


def test_board_acknowledges_alert_in_chromium(
    chromium, rabbit_node, hub_scorer, edge_scorer, store_url: str, tmp_path: Path
) -> None:
    hospital_id = unique("hospital")
    hub = start_hub(
        rabbit_node.amqp_port, hub_scorer, store_url, hospital_id,
        hospitals=[{"id": hospital_id, "name": "Riverside General"}],
    )  # fmt: skip
    port = free_port()
    server = HttpServer(hub.service, "127.0.0.1", port)
    device_id = unique("amb")
    local = make_agent(device_id, rabbit_node.mqtt_port, tmp_path / "outbox.sqlite", edge_scorer, hospital_id)
    feedback = AmbulanceFeedback(rabbit_node.mqtt_port, device_id)
    page = None
    try:
        assert feedback.subscribed.wait(10), "the ambulance's feedback subscription failed"
        assert wait_until(lambda: hospital_queue_exists(rabbit_node.amqp_port, hospital_id), 20)
        server.start()
        assert wait_for_http(f"http://127.0.0.1:{port}/readyz", 20), "hub not ready"

        # A patient deteriorating over three minutes. An alert's trend is the incident's window of
        # frames, so the sparklines have several points to draw.
        start = datetime.now(UTC) - timedelta(minutes=3)
        context = {"age_years": 67, "sex": "female", "chief_complaint": "dizziness"}
        frames = [
            {**NORMAL, "hr_bpm": 92, "spo2_pct": 96, "sbp_mmhg": 122},
            {**NORMAL, "hr_bpm": 100, "spo2_pct": 95, "sbp_mmhg": 112, "rr_per_min": 20},
            {**NORMAL, "hr_bpm": 112, "spo2_pct": 93, "sbp_mmhg": 104, "dbp_mmhg": 66, "rr_per_min": 22},
            CRITICAL,
        ]
        local.uplink.start()
        for minute, frame in enumerate(frames):
            local.agent.clock = lambda at=start + timedelta(minutes=minute): at
            assert local.agent.handle_frame("incident-board", {**frame, "context": context}) is not None
        assert local.pump_until_delivered(15), "outbox did not drain"
        assert wait_until(lambda: len(hub.store.result_keys()) >= 4, 20), "results not stored"
        # The hub alerts once per emergency type, so a type that changes on the way adds an alert.
        assert wait_until(
            lambda: {a.state for a in hub.store.hospital_alerts(hospital_id)} == {ALERT_DELIVERED}, 20
        ), f"alerts not delivered: {[(a.alert_id, a.state) for a in hub.store.hospital_alerts(hospital_id)]}"
        alerts = hub.store.hospital_alerts(hospital_id)
        row = min(alerts, key=lambda alert: (alert.acuity, -alert.created_at.timestamp()))
        stored = HospitalAlert.model_validate_json(row.payload)

        page = chromium.new_page(viewport=VIEWPORT)
        page.goto(f"http://127.0.0.1:{port}/board/{hospital_id}")
        card = page.locator(f'article.card[data-alert-id="{row.alert_id}"]')
        card.wait_for(timeout=10_000)

        assert page.locator("article.card").count() == len(alerts)
        assert page.locator("article.card").first.get_attribute("data-alert-id") == row.alert_id, (
            "the most urgent alert comes first"
        )
        assert card.locator('[data-field="ktas"] .level').text_content() == str(row.acuity)
        assert card.locator('[data-field="type"]').text_content() == row.emergency_type
        assert card.locator('[data-field="patient"]').text_content() == "67 y \u00b7 female \u00b7 dizziness"
        # The edge agent sends no ambulance position yet, so the hub has no ETA to give.
        assert card.locator('[data-field="eta"]').text_content().startswith("ETA unknown")
        vitals = stored.vitals
        assert card.locator('[data-vital="hr_bpm"] .value').text_content() == f"{vitals.hr_bpm:.0f}/min"
        blood_pressure = f"{vitals.sbp_mmhg:.0f}/{vitals.dbp_mmhg:.0f}mmHg"
        assert card.locator('[data-vital="sbp_mmhg"] .value').text_content() == blood_pressure
        assert card.locator('[data-vital="spo2_pct"] .value').text_content() == f"{vitals.spo2_pct:.0f}%"
        assert len(stored.trend) >= 2, "the alert should carry the frames before it"
        sparkline = card.locator('[data-vital="hr_bpm"] svg')
        assert sparkline.get_attribute("data-points") == str(len(stored.trend))
        assert sparkline.locator("polyline").count() == 1
        assert f"NEWS2 {stored.news2.total}" in card.locator('[data-field="news2"]').text_content()
        assert "qSOFA" in card.text_content()
        assert "Shock index" in card.text_content()
        assert "model " in card.locator('[data-field="models"]').text_content()
        assert card.locator('[data-field="reason"]').text_content() == f"Why: {stored.reason}"
        assert card.locator('[data-field="state"]').text_content() == "delivered"
        assert card.locator("button.ack-button").is_visible()

        before = tmp_path / "board-before.png"
        page.screenshot(path=str(before))
        image = Image.open(before)
        assert_not_blank(image)
        badge = dominant_colour(image, card.locator('[data-field="ktas"]').bounding_box())
        assert colour_distance(badge, KTAS_COLOURS[row.acuity]) < COLOUR_TOLERANCE, badge
        state = dominant_colour(image, card.locator('[data-field="state"]').bounding_box())
        assert colour_distance(state, STATE_COLOURS["delivered"]) < COLOUR_TOLERANCE, state

        page.fill("#staff-name", "Nurse Kim")
        page.press("#staff-name", "Tab")
        card.locator("button.ack-button").click()
        page.wait_for_function(
            f"document.querySelector('article.card[data-alert-id=\"{row.alert_id}\"]').dataset.state === 'acknowledged'",
            timeout=10_000,
        )

        assert card.locator('[data-field="state"]').text_content() == "acknowledged"
        assert "Nurse Kim" in card.locator(".state-detail").text_content()
        assert card.locator("button.ack-button").count() == 0
        assert page.evaluate("localStorage.getItem('hospitalBoard.staffName')") == "Nurse Kim"
        acknowledged = hub.store.alert(row.alert_id)
        assert acknowledged is not None
        assert acknowledged.state == ALERT_ACKNOWLEDGED
        assert acknowledged.acknowledged_by == "Nurse Kim"
        # The crew hears of the acknowledgement over MQTT, after the broker's delivery report.
        assert wait_until(lambda: (row.alert_id, "acknowledged") in feedback.states, 10), (
            f"no acknowledged feedback reached the ambulance: {feedback.states}"
        )
        assert (row.alert_id, "delivered") in feedback.states

        # After a reload the state comes from the hub, not from the click.
        page.reload()
        card.wait_for(timeout=10_000)
        assert card.get_attribute("data-state") == "acknowledged"
        assert page.input_value("#staff-name") == "Nurse Kim"
        after = tmp_path / "board-after.png"
        page.screenshot(path=str(after))
        image = Image.open(after)
        assert_not_blank(image)
        state = dominant_colour(image, card.locator('[data-field="state"]').bounding_box())
        assert colour_distance(state, STATE_COLOURS["acknowledged"]) < COLOUR_TOLERANCE, state
    finally:
        if page is not None:
            page.close()
        feedback.close()
        local.close()
        server.stop()
        hub.shutdown()
