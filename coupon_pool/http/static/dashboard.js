// The coupon-pool dashboard: polls /v1/stats, /v1/levels, /v1/megadeal, /v1/audit and
// /v1/webhooks every 2 seconds and draws what it read. Every request goes to this page's own
// origin; rates are computed here from successive counters, so the service does no work beyond
// those five reads.
"use strict";

const REFRESH_MS = 2000;
const HISTORY_MS = 5 * 60 * 1000;
const RATE_WINDOW_MS = 10 * 1000;
const RUN_OUT_WINDOW_MS = 60 * 1000;
const AUDIT_ROWS = 12;
const KEY_STORE = "coupon-pool.api-key"; // sessionStorage: this tab only
const FIELDS = [
  "created", "allocated", "used", "released", "rolled_back", "purged", "available",
  "held", "hold_expired", "scheduled", "disabled",
];

const history = []; // {at: ms, stats}
let timer = null;

const $ = (id) => document.getElementById(id);
const number = (n) => n.toLocaleString("en-US");

function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

class Unauthorized extends Error {}

async function read(path) {
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized("this key is not valid");
  const body = await response.json();
  if (!response.ok) {
    const error = new Error(body.detail || `${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// Allocations made (allocated is net of releases and of holds that lapsed) and redemptions made
// (used is net of rollbacks).
const allocations = (counts) => counts.allocated + counts.released + counts.hold_expired;
const redemptions = (counts) => counts.used + counts.rolled_back;

function sampleBefore(ms) {
  const latest = history[history.length - 1];
  for (const sample of history) {
    if (latest.at - sample.at <= ms) return sample;
  }
  return latest;
}

function perSecond(older, newer, measure) {
  const seconds = (newer.at - older.at) / 1000;
  return seconds > 0 ? Math.max(0, (measure(newer) - measure(older)) / seconds) : 0;
}

function duration(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 48 * 3600) return `${(seconds / 3600).toFixed(1)} h`;
  return `${Math.round(seconds / 86400)} days`;
}

function cell(row, text, field, type) {
  const td = document.createElement("td");
  td.textContent = text;
  if (field) td.dataset.field = field;
  if (type) td.dataset.type = type;
  row.append(td);
}

// Pool-low events: a "low" marker beside each type below its threshold (GET /v1/levels).
function lowMarker(type, level) {
  const marker = document.createElement("span");
  marker.className = "low";
  marker.dataset.low = type;
  marker.textContent = "low";
  marker.title = `${number(level.available)} available, below its pool-low threshold of ${number(level.threshold)}`;
  return marker;
}

function drawTypes(stats, levels) {
  const latest = history[history.length - 1];
  const recent = sampleBefore(RATE_WINDOW_MS);
  const minuteAgo = sampleBefore(RUN_OUT_WINDOW_MS);
  const rows = [];
  for (const [type, counts] of [...Object.entries(stats.types), ["total", stats.totals]]) {
    const row = document.createElement("tr");
    if (type === "total") row.className = "totals";
    cell(row, type);
    const level = levels.types[type];
    if (level && level.low) row.firstChild.append(" ", lowMarker(type, level));
    for (const field of FIELDS) cell(row, number(counts[field]), field, type);
    const of = (sample) => (type === "total" ? sample.stats.totals : sample.stats.types[type]);
    const rate = perSecond(recent, latest, (s) => allocations(of(s)));
    cell(row, recent === latest ? "-" : rate.toFixed(1), "allocation_rate", type);
    const falling = perSecond(minuteAgo, latest, (s) => -of(s).available);
    const runsOut = counts.available === 0 ? "empty" : falling > 0 ? duration(counts.available / falling) : "-";
    cell(row, runsOut, "runs_out", type);
    rows.push(row);
  }
  $("types").tBodies[0].replaceChildren(...rows);
}

function drawChart() {
  const svg = $("chart");
  const points = { allocations: [], redemptions: [] };
  for (let i = 1; i < history.length; i++) {
    const [older, newer] = [history[i - 1], history[i]];
    points.allocations.push([newer.at, perSecond(older, newer, (s) => allocations(s.stats.totals))]);
    points.redemptions.push([newer.at, perSecond(older, newer, (s) => redemptions(s.stats.totals))]);
  }
  const now = history[history.length - 1].at;
  const top = Math.max(1, ...points.allocations.map((p) => p[1]), ...points.redemptions.map((p) => p[1]));
  const lines = Object.entries(points).map(([name, series]) => {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("class", name);
    const xy = series.map(([at, rate]) => {
      const x = 600 - ((now - at) / HISTORY_MS) * 600;
      const y = 155 - (rate / top) * 145;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    line.setAttribute("points", xy.join(" "));
    return line;
  });
  svg.replaceChildren(...lines);
  $("chart-max").textContent = `top of the chart: ${number(Math.round(top))}/s`;
}

function drawGate(gate) {
  $("gate-slots").textContent = `${gate.slots_in_use} of ${gate.max_concurrent}`;
  $("gate-queued").textContent = `${gate.queued} (at most ${gate.max_wait_s} s each)`;
  $("gate-admitted").textContent = `${gate.admitted_last_second} of ${gate.rate_per_s}`;
}

const AUDIT_COLUMNS = new Set(["id", "time", "op", "type", "code", "user_id"]);

function drawAudit(page) {
  const rows = page.entries.slice(-AUDIT_ROWS).reverse().map((entry) => {
    const row = document.createElement("tr");
    cell(row, entry.time.replace("T", " ").replace(/\.\d+Z$/, "").replace("Z", ""));
    cell(row, entry.op, "op");
    cell(row, entry.type || "");
    cell(row, entry.code || "");
    cell(row, entry.user_id || "");
    const details = Object.entries(entry).filter(([name]) => !AUDIT_COLUMNS.has(name));
    cell(row, details.map(([name, value]) => `${name}=${value}`).join(" "));
    return row;
  });
  $("audit").tBodies[0].replaceChildren(...rows);
}

// Webhook delivery (GET /v1/webhooks), only while WEBHOOK_URL is set: an alert marker while
// batches are parked (their retries ran out; `coupon-pool webhooks redeliver` sends them again).
function drawWebhooks(hooks) {
  $("webhooks").hidden = !hooks.configured;
  if (!hooks.configured) return;
  const parked = hooks.endpoints.reduce((sum, endpoint) => sum + endpoint.parked, 0);
  const oldest = Math.max(0, ...hooks.endpoints.map((endpoint) => endpoint.oldest_undelivered_age_s));
  const shown = $("webhooks-parked");
  shown.replaceChildren(number(parked));
  if (parked > 0) {
    const marker = document.createElement("span");
    marker.className = "alert";
    marker.dataset.parked = parked;
    marker.textContent = "parked";
    marker.title = `${number(parked)} batches parked after their retries ran out: coupon-pool webhooks redeliver`;
    shown.append(" ", marker);
  }
  $("webhooks-oldest").textContent = oldest > 0 ? duration(oldest) : "none";
}

async function refresh() {
  const status = $("status");
  try {
    const [stats, levels, gate] = await Promise.all(
      [read("/v1/stats"), read("/v1/levels"), read("/v1/megadeal")],
    );
    const at = Date.now();
    history.push({ at, stats });
    while (history.length > 2 && at - history[0].at > HISTORY_MS) history.shift();
    drawTypes(stats, levels);
    drawChart();
    drawGate(gate);
    try {
      drawAudit(await read(`/v1/audit?limit=${AUDIT_ROWS}`));
      $("audit-problem").hidden = true;
    } catch (error) {
      if (error instanceof Unauthorized || error.status !== 403) throw error;
      $("audit-problem").textContent = "The audit trail needs an admin key.";
      $("audit-problem").hidden = false;
    }
    try {
      drawWebhooks(await read("/v1/webhooks"));
    } catch (error) {
      if (error instanceof Unauthorized || error.status !== 403) throw error;
      $("webhooks").hidden = true; // delivery is for admin keys; the audit note says so
    }
    status.textContent = `updated ${new Date(at).toLocaleTimeString("en-GB")}`;
    status.className = "status";
    $("board").hidden = false;
  } catch (error) {
    if (error instanceof Unauthorized) {
      askForKey(error.message);
      return;
    }
    status.textContent = `not updated: ${error.message}`;
    status.className = "status down";
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

function askForKey(problem) {
  clearTimeout(timer);
  sessionStorage.removeItem(KEY_STORE);
  $("board").hidden = true;
  $("key-form").hidden = false;
  $("key-problem").textContent = problem || "";
  $("status").textContent = "an API key is needed";
  $("key").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("key").value.trim());
  $("key").value = "";
  $("key-form").hidden = true;
  refresh();
});

if (document.body.dataset.keys === "required" && !apiKey()) {
  askForKey();
} else {
  refresh();
}
