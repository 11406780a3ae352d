// Hospital board: polls the hub's alerts API every 2 s and renders one card per incoming patient.
// All text from the API goes into the page through textContent, never as HTML.
"use strict";

const POLL_INTERVAL_MS = 2000;
const REQUEST_TIMEOUT_MS = 5000;
const STAFF_NAME_KEY = "hospitalBoard.staffName";
const DEFAULT_STAFF_NAME = "board";

// Open alerts come first, then handled ones. Within a group the most urgent come first, then the newest.
const STATE_GROUP = { pending: 0, delivered: 0, escalated: 0, acknowledged: 1, cancelled: 2 };
const ACKNOWLEDGEABLE = new Set(["pending", "delivered", "escalated"]);

// Vital signs on a card: the NEWS2 subscore that colours each value, its unit and its precision.
const VITALS = [
  { key: "hr_bpm", label: "Heart rate", unit: "/min", digits: 0, news2: "pulse" },
  { key: "rr_per_min", label: "Resp. rate", unit: "/min", digits: 0, news2: "respiration_rate" },
  { key: "spo2_pct", label: "SpO\u2082", unit: "%", digits: 0, news2: "spo2" },
  { key: "sbp_mmhg", label: "Blood pressure", unit: "mmHg", digits: 0, news2: "systolic_bp" },
  { key: "temp_c", label: "Temperature", unit: "\u00b0C", digits: 1, news2: "temperature" },
];

// Readable names of the NEWS2 parameters the hub lists as red (models.scores.NEWS2_PARAMETERS).
const NEWS2_PARAMETER_NAMES = {
  respiration_rate: "resp. rate",
  spo2: "SpO\u2082",
  air_or_oxygen: "oxygen",
  systolic_bp: "systolic BP",
  pulse: "heart rate",
  consciousness: "consciousness",
  temperature: "temperature",
};

const CONSCIOUSNESS = { A: "Alert", C: "new Confusion", V: "responds to Voice", P: "responds to Pain", U: "Unresponsive" };

const board = {
  hospitalId: decodeURIComponent(window.location.pathname.split("/")[2] || ""),
  cards: new Map(), // alert id -> {signature, element}
  acknowledging: new Set(), // alert ids with a request in flight
  ackErrors: new Map(), // alert id -> message of the last failed acknowledgement
  lastSuccess: null, // Date of the last successful poll
  serverOffsetMs: 0, // hub clock minus browser clock, for the ETA countdown
  latest: null, // last API response
};

// --- small helpers --------------------------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function formatNumber(value, digits) {
  return value === null || value === undefined ? "\u2014" : Number(value).toFixed(digits);
}

function formatTime(iso, withSeconds) {
  if (!iso) return "\u2014";
  const options = { hour: "2-digit", minute: "2-digit", hour12: false };
  if (withSeconds) options.second = "2-digit";
  return new Date(iso).toLocaleTimeString([], options);
}

function staffName() {
  const stored = (window.localStorage.getItem(STAFF_NAME_KEY) || "").trim();
  return stored || DEFAULT_STAFF_NAME;
}

// --- sparkline ------------------------------------------------------------------------------------

function sparkline(trend, key) {
  const svgNs = "http://www.w3.org/2000/svg";
  const width = 120;
  const height = 34;
  const pad = 4;
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");

  const points = trend
    .filter((point) => point[key] !== null && point[key] !== undefined)
    .map((point) => ({ t: Date.parse(point.timestamp), v: point[key] }));
  svg.setAttribute("aria-label", `${key} trend, ${points.length} points`);
  svg.dataset.points = String(points.length);
  if (points.length === 0) return svg;

  const t0 = points[0].t;
  const t1 = points[points.length - 1].t;
  const values = points.map((point) => point.v);
  const low = Math.min(...values);
  const high = Math.max(...values);
  const x = (point, index) =>
    t1 > t0 ? pad + ((point.t - t0) / (t1 - t0)) * (width - 2 * pad)
            : pad + (index / Math.max(1, points.length - 1)) * (width - 2 * pad);
  // A flat series is drawn through the middle rather than along an edge.
  const y = (point) => (high > low ? height - pad - ((point.v - low) / (high - low)) * (height - 2 * pad) : height / 2);

  if (points.length > 1) {
    const line = document.createElementNS(svgNs, "polyline");
    line.setAttribute("points", points.map((point, index) => `${x(point, index).toFixed(1)},${y(point).toFixed(1)}`).join(" "));
    svg.appendChild(line);
  }
  const last = points[points.length - 1];
  const dot = document.createElementNS(svgNs, "circle");
  dot.setAttribute("cx", x(last, points.length - 1).toFixed(1));
  dot.setAttribute("cy", y(last).toFixed(1));
  dot.setAttribute("r", "3");
  svg.appendChild(dot);
  return svg;
}

// --- card parts -------------------------------------------------------------------------------------

function patientLine(patient) {
  const parts = [];
  parts.push(patient.age_years === null || patient.age_years === undefined ? "age unknown" : `${patient.age_years} y`);
  parts.push(patient.sex || "sex unknown");
  if (patient.chief_complaint) parts.push(patient.chief_complaint);
  return parts.join(" \u00b7 ");
}

function etaBlock(alert) {
  const block = element("div", "eta");
  block.dataset.field = "eta";
  if (!alert.expected_arrival_at) {
    block.textContent = "ETA unknown";
    block.appendChild(element("span", "arrival", "no ambulance position"));
    return block;
  }
  const arrival = Date.parse(alert.expected_arrival_at);
  const minutes = Math.max(0, Math.round((arrival - (Date.now() + board.serverOffsetMs)) / 60000));
  block.textContent = `ETA ${minutes} min`;
  block.appendChild(element("span", "arrival", `arrives \u2248 ${formatTime(alert.expected_arrival_at)}`));
  return block;
}

function vitalsGrid(alert) {
  const grid = element("div", "vitals");
  const subscores = alert.news2.subscores || {};
  for (const vital of VITALS) {
    const cell = element("div", "vital");
    cell.dataset.vital = vital.key;
    const subscore = subscores[vital.news2];
    if (subscore) cell.classList.add(`score-${Math.min(3, subscore)}`);
    cell.appendChild(element("div", "name", vital.label));

    const value = element("div", "value");
    if (vital.key === "sbp_mmhg") {
      value.textContent = `${formatNumber(alert.vitals.sbp_mmhg, 0)}/${formatNumber(alert.vitals.dbp_mmhg, 0)}`;
    } else {
      value.textContent = formatNumber(alert.vitals[vital.key], vital.digits);
    }
    value.appendChild(element("span", "unit", vital.unit));
    cell.appendChild(value);
    cell.appendChild(sparkline(alert.trend, vital.key));
    grid.appendChild(cell);
  }
  return grid;
}

function extraLine(alert) {
  const parts = [];
  const level = alert.vitals.consciousness;
  if (level) parts.push(`Consciousness: ${CONSCIOUSNESS[level] || level}`);
  if (alert.vitals.gcs !== null && alert.vitals.gcs !== undefined) parts.push(`GCS ${alert.vitals.gcs}`);
  if (alert.vitals.supplemental_oxygen) parts.push("on supplemental oxygen");
  if (alert.vitals.timestamp) parts.push(`vitals at ${formatTime(alert.vitals.timestamp, true)}`);
  return element("div", "extra", parts.join(" \u00b7 "));
}

function scoreItem(label, value, flagged, danger) {
  const item = element("span", "score");
  item.appendChild(document.createTextNode(`${label} `));
  const bold = element("b", flagged ? `flag${danger ? " danger" : ""}` : "", value);
  item.appendChild(bold);
  return item;
}

function scoresLine(alert, thresholds) {
  const line = element("div", "scores");
  const news2 = alert.news2;
  const red = news2.red_parameters || [];
  const redNames = red.map((name) => NEWS2_PARAMETER_NAMES[name] || name);
  const news2Text = red.length ? `${news2.total} (red: ${redNames.join(", ")})` : formatNumber(news2.total, 0);
  const news2Item = scoreItem("NEWS2", news2Text, news2.total >= thresholds.news2_urgent || red.length > 0,
    news2.total >= thresholds.news2_emergency || red.length > 0);
  news2Item.dataset.field = "news2";
  line.appendChild(news2Item);

  const qsofa = alert.qsofa === null || alert.qsofa === undefined ? "\u2014" : `${alert.qsofa}/3`;
  line.appendChild(scoreItem("qSOFA", qsofa, alert.qsofa >= thresholds.qsofa, true));
  line.appendChild(scoreItem("Shock index", formatNumber(alert.shock_index, 2),
    alert.shock_index !== null && alert.shock_index >= thresholds.shock_index, true));

  if (alert.deterioration_risk !== null && alert.deterioration_risk !== undefined) {
    const high = thresholds.deterioration !== null && alert.deterioration_risk >= thresholds.deterioration;
    line.appendChild(scoreItem("Deterioration risk", `${Math.round(alert.deterioration_risk * 100)}%`, high, true));
  }
  const ectopy = alert.ventricular_ectopy_probability;
  if (ectopy !== null && ectopy !== undefined) {
    const found = ectopy >= thresholds.ectopy;
    const text = `${found ? "ventricular ectopy" : "no ectopy"} (p ${ectopy.toFixed(2)})`;
    const item = scoreItem("ECG", text, found, true);
    item.dataset.field = "ectopy";
    line.appendChild(item);
  }
  return line;
}

function modelText(name, scores) {
  if (!scores) return `${name}: no score`;
  const version = scores.model_version ? ` (model ${scores.model_version})` : " (NEWS2 only, no model)";
  return `${name} KTAS ${scores.model_acuity}${version}`;
}

function modelsLine(alert) {
  const line = element("div", "models");
  line.dataset.field = "models";
  line.appendChild(element("b", "", modelText("Edge", alert.edge)));
  line.appendChild(document.createTextNode(" \u00b7 "));
  line.appendChild(element("b", "", alert.hub ? modelText("Hub", alert.hub) : "Hub: not re-scored"));
  if (alert.disagreement) {
    line.appendChild(element("span", "disagreement", "EDGE AND HUB DISAGREE"));
  }
  return line;
}

function stateDetail(alert) {
  const detail = element("div", "state-detail");
  const add = (text, bold) => {
    const line = element("div", "", text);
    if (bold) line.appendChild(element("b", "", bold));
    detail.appendChild(line);
  };
  if (alert.state === "acknowledged") {
    add("by ", alert.acknowledged_by || "\u2014");
    add(`at ${formatTime(alert.acknowledged_at, true)}`);
  } else if (alert.state === "pending") {
    add("queued at the hub, not yet delivered");
  } else if (alert.state === "delivered") {
    add(`delivered ${formatTime(alert.last_sent_at, true)}, waiting for acknowledgement`);
  } else if (alert.state === "escalated") {
    add("not acknowledged in time; sent on to the backup hospital ", alert.escalated_to || "");
  } else if (alert.state === "cancelled") {
    add("cancelled: the patient is not coming here");
  }
  add(`attempts: ${alert.attempts}`);
  if (alert.escalated_from) add("escalated here from ", alert.escalated_from);
  add(`alert ${alert.alert_id} \u00b7 received ${formatTime(alert.created_at, true)}`);
  return detail;
}

function sidePanel(alert) {
  const side = element("div", "side");
  const state = element("div", "state", alert.state);
  state.dataset.field = "state";
  side.appendChild(state);
  side.appendChild(stateDetail(alert));

  if (ACKNOWLEDGEABLE.has(alert.state)) {
    const busy = board.acknowledging.has(alert.alert_id);
    const button = element("button", "ack-button", busy ? "Acknowledging\u2026" : "Acknowledge");
    button.type = "button";
    button.disabled = busy;
    button.addEventListener("click", () => acknowledge(alert.alert_id));
    side.appendChild(button);
  }
  const error = board.ackErrors.get(alert.alert_id);
  if (error) side.appendChild(element("div", "ack-error", error));
  return side;
}

function buildCard(alert, thresholds) {
  const card = element("article", `card state-${alert.state}`);
  card.dataset.alertId = alert.alert_id;
  card.dataset.state = alert.state;

  const badge = element("div", `ktas ktas-${alert.acuity}`);
  badge.dataset.field = "ktas";
  badge.setAttribute("aria-label", `KTAS level ${alert.acuity}`);
  badge.appendChild(element("span", "label", "KTAS"));
  badge.appendChild(element("span", "level", String(alert.acuity)));
  card.appendChild(badge);

  const body = element("div", "body");
  const headline = element("div", "headline");
  const type = element("span", "type", alert.emergency_type);
  type.dataset.field = "type";
  headline.appendChild(type);
  const patient = element("span", "patient", patientLine(alert.patient || {}));
  patient.dataset.field = "patient";
  headline.appendChild(patient);
  headline.appendChild(etaBlock(alert));
  body.appendChild(headline);

  if (alert.payload_error) {
    body.appendChild(element("div", "ack-error", alert.payload_error));
  } else {
    body.appendChild(vitalsGrid(alert));
    body.appendChild(extraLine(alert));
    body.appendChild(scoresLine(alert, thresholds));
    body.appendChild(modelsLine(alert));
    const reason = element("div", "reason", `Why: ${alert.reason}`);
    reason.dataset.field = "reason";
    body.appendChild(reason);
  }
  card.appendChild(body);
  card.appendChild(sidePanel(alert));
  return card;
}

// --- rendering --------------------------------------------------------------------------------------

function sortAlerts(alerts) {
  return [...alerts].sort((a, b) => {
    const group = (STATE_GROUP[a.state] ?? 3) - (STATE_GROUP[b.state] ?? 3);
    if (group !== 0) return group;
    if (a.acuity !== b.acuity) return a.acuity - b.acuity;
    return Date.parse(b.created_at) - Date.parse(a.created_at);
  });
}

// A card is rebuilt only when what it shows changed, so a button is not replaced under the pointer.
function signature(alert) {
  const { eta_remaining_minutes: _remaining, ...shown } = alert;
  return JSON.stringify([shown, board.acknowledging.has(alert.alert_id), board.ackErrors.get(alert.alert_id) || null]);
}

function render() {
  const data = board.latest;
  if (!data) return;
  const list = document.getElementById("alerts");
  const seen = new Set();

  for (const alert of sortAlerts(data.alerts)) {
    seen.add(alert.alert_id);
    const key = signature(alert);
    let entry = board.cards.get(alert.alert_id);
    if (!entry || entry.signature !== key) {
      const card = buildCard(alert, data.thresholds);
      if (entry) entry.element.replaceWith(card);
      entry = { signature: key, element: card };
      board.cards.set(alert.alert_id, entry);
    }
    list.appendChild(entry.element); // moves an existing card into sorted position
  }
  for (const [alertId, entry] of board.cards) {
    if (!seen.has(alertId)) {
      entry.element.remove();
      board.cards.delete(alertId);
    }
  }
  document.getElementById("empty").hidden = data.alerts.length > 0;
}

function refreshCountdowns() {
  if (!board.latest) return;
  for (const alert of board.latest.alerts) {
    const entry = board.cards.get(alert.alert_id);
    const old = entry && entry.element.querySelector('[data-field="eta"]');
    if (old) old.replaceWith(etaBlock(alert));
  }
}

function showBanner(text, degraded) {
  const banner = document.getElementById("banner");
  banner.textContent = text;
  banner.classList.toggle("degraded", degraded);
  banner.hidden = false;
}

function hideBanner() {
  document.getElementById("banner").hidden = true;
}

// --- talking to the hub -----------------------------------------------------------------------------

async function fetchJson(url, options) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  try {
    const response = await fetch(url, { cache: "no-store", ...options, signal: controller.signal });
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    return { response, body };
  } finally {
    clearTimeout(timer);
  }
}

async function poll() {
  try {
    const { response, body } = await fetchJson(`/api/hospitals/${encodeURIComponent(board.hospitalId)}/alerts`);
    if (!response.ok) {
      const reason = body && body.detail ? body.detail : `HTTP ${response.status}`;
      throw new Error(reason);
    }
    board.latest = body;
    board.lastSuccess = new Date();
    board.serverOffsetMs = Date.parse(body.generated_at) - Date.now();
    document.getElementById("hospital-name").textContent = body.hospital.name;
    document.title = `Incoming patients \u2014 ${body.hospital.name}`;
    document.getElementById("last-update").textContent = `updated ${formatTime(board.lastSuccess.toISOString(), true)}`;
    if (body.hub_connected) {
      hideBanner();
    } else {
      showBanner("The hub has lost its connection to the message broker that links it to the ambulances: new alerts may be late and acknowledgements cannot be recorded.", true);
    }
    render();
  } catch (error) {
    const since = board.lastSuccess ? ` Last update at ${formatTime(board.lastSuccess.toISOString(), true)}; the cards below may be out of date.` : "";
    showBanner(`Cannot reach the hub (${error.message}). Retrying every ${POLL_INTERVAL_MS / 1000} s.${since}`, false);
  } finally {
    setTimeout(poll, POLL_INTERVAL_MS);
  }
}

async function acknowledge(alertId) {
  if (board.acknowledging.has(alertId)) return;
  board.acknowledging.add(alertId);
  board.ackErrors.delete(alertId);
  render();
  try {
    const { response, body } = await fetchJson(`/api/alerts/${encodeURIComponent(alertId)}/acknowledge`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ hospital_id: board.hospitalId, acknowledged_by: staffName() }),
    });
    if (!response.ok) {
      const reason = body && body.detail ? body.detail : `HTTP ${response.status}`;
      board.ackErrors.set(alertId, `Not acknowledged: ${typeof reason === "string" ? reason : JSON.stringify(reason)}`);
    } else {
      // Show the new state at once rather than on the next poll.
      const alert = board.latest && board.latest.alerts.find((item) => item.alert_id === alertId);
      if (alert) Object.assign(alert, { state: body.state, acknowledged_by: body.acknowledged_by, acknowledged_at: body.acknowledged_at });
    }
  } catch (error) {
    board.ackErrors.set(alertId, `Not acknowledged: cannot reach the hub (${error.message}).`);
  } finally {
    board.acknowledging.delete(alertId);
    render();
  }
}

function tick() {
  document.getElementById("clock").textContent = formatTime(new Date().toISOString(), true);
  refreshCountdowns();
}

function start() {
  const input = document.getElementById("staff-name");
  input.value = staffName();
  input.addEventListener("change", () => {
    const name = input.value.trim();
    if (name) {
      window.localStorage.setItem(STAFF_NAME_KEY, name);
    } else {
      window.localStorage.removeItem(STAFF_NAME_KEY);
      input.value = DEFAULT_STAFF_NAME;
    }
  });
  tick();
  setInterval(tick, 1000);
  poll();
}

document.addEventListener("DOMContentLoaded", start);
