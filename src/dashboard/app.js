// mcpod dashboard: polls /dashboard/data every 2 s and updates one card per
// server in place (so keyboard focus and open log panes survive an update).
// Everything the router sends is shown with textContent, never as HTML.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "mcpod.apiKey";
const STATUS_WORDS = {
  running: "● Running",
  paused: "❚❚ Paused",
  starting: "◐ Starting",
  stopping: "◑ Stopping",
  stopped: "○ Stopped",
  failed: "✕ Failed",
};

const cards = new Map();
let clockOffsetMs = 0; // router clock minus browser clock
let pollTimer = null;

// ---- requests: same origin only, with the API key when one is set ----

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function call(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = token();
  if (key) headers.set("Authorization", "Bearer " + key);
  const response = await fetch(path, { ...options, headers, credentials: "omit", cache: "no-store" });
  if (response.status === 401) {
    showLogin(key ? "That API key was not accepted." : "");
    throw new Unauthorized();
  }
  return response;
}

class Unauthorized extends Error {}

async function messageOf(response) {
  try {
    const body = await response.json();
    return body.message || (body.error && body.error.message) || response.statusText;
  } catch {
    return response.statusText;
  }
}

// ---- login ----

function showLogin(problem) {
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = problem;
  document.getElementById("summary").textContent = "Sign in with an API key to see the servers.";
  document.getElementById("token").focus();
}

function setUpLogin() {
  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    document.getElementById("login").hidden = true;
    document.getElementById("forget").hidden = false;
    refresh();
  });
  const forget = document.getElementById("forget");
  forget.hidden = !token();
  forget.addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    forget.hidden = true;
    for (const card of cards.values()) card.root.remove();
    cards.clear();
    refresh();
  });
}

// ---- formatting ----

function plural(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}

function duration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return seconds + " s";
  const m = Math.floor(seconds / 60), s = seconds % 60;
  if (m < 60) return m + " min " + String(s).padStart(2, "0") + " s";
  return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value < 10 ? value.toFixed(2) + " ms" : value < 1000 ? Math.round(value) + " ms" : (value / 1000).toFixed(2) + " s";
}

function bytes(value) {
  if (value === null || value === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (value >= 1024 && i < units.length - 1) { value /= 1024; i++; }
  return (i === 0 ? value : value.toFixed(1)) + " " + units[i];
}

function routerNow() {
  return Date.now() + clockOffsetMs;
}

function ago(iso) {
  if (!iso) return "never";
  return duration((routerNow() - Date.parse(iso)) / 1000) + " ago";
}

// ---- one card per server ----

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

const FIGURES = [
  ["lastActivity", "Last activity"],
  ["sessions", "Sessions"],
  ["inFlight", "In flight"],
  ["rps", "Requests/s"],
  ["errorRate", "Error rate"],
  ["p50", "p50 latency"],
  ["p95", "p95 latency"],
  ["hour", "Requests, last hour"],
  ["coldStarts", "Cold starts"],
  ["lastColdStart", "Last start"],
  ["meanColdStart", "Mean start"],
  ["restarts", "Restarts"],
  ["cpu", "CPU"],
  ["memory", "Memory"],
];

const CHARTS = [
  ["requests", "Requests per minute"],
  ["errors", "Errors per minute"],
  ["p95", "p95 latency per minute"],
];

function makeCard(name) {
  const id = "server-" + name.replace(/[^A-Za-z0-9_-]/g, "_");
  const card = { name, previousCpu: null };
  card.status = element("span", { class: "status" });
  card.message = element("p", { class: "message" });
  card.countdown = element("p", { class: "countdown" });
  card.figures = {};
  const list = element("dl", { class: "figures" });
  for (const [key, label] of FIGURES) {
    card.figures[key] = element("dd", { "data-figure": key });
    list.append(element("div", {}, element("dt", {}, label), card.figures[key]));
  }
  card.charts = {};
  const charts = element("div", { class: "charts" });
  for (const [key, label] of CHARTS) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 120 40");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    card.charts[key] = svg;
    charts.append(element("figure", { class: key }, svg, element("figcaption", {}, label)));
  }
  card.start = element("button", { type: "button", "data-action": "start" }, "Start");
  card.stop = element("button", { type: "button", "data-action": "stop" }, "Stop");
  card.start.setAttribute("aria-label", "Start " + name);
  card.stop.setAttribute("aria-label", "Stop " + name);
  card.outcome = element("span", { class: "outcome", role: "status" });
  card.start.addEventListener("click", () => operate(card, "start"));
  card.stop.addEventListener("click", () => operate(card, "stop"));
  card.log = element("pre", { tabindex: "0", "aria-label": "Recent log lines of " + name });
  card.details = element("details", {}, element("summary", {}, "Recent log lines"), card.log);
  card.details.addEventListener("toggle", () => { if (card.details.open) loadLog(card); });
  card.root = element("li", { class: "server", id, "data-server": name },
    element("div", { class: "title" }, element("h2", {}, name), card.status),
    card.message, card.countdown, list, charts,
    element("div", { class: "controls" }, card.start, card.stop, card.outcome),
    card.details);
  return card;
}

function countdownText(server) {
  if (server.status === "paused") {
    const stop = server.idleTimeoutSeconds ? " " + stopText(server) : "";
    return "Frozen (no CPU): the next request resumes it in milliseconds." + stop;
  }
  if (server.status !== "running") return "";
  if (server.desiredState !== "OnDemand" || !server.idleTimeoutSeconds) return "Kept running (no idle timeout).";
  if (server.inFlight > 0) return "Busy: the idle countdown starts when its requests are answered.";
  return stopText(server);
}

function stopText(server) {
  const idle = (routerNow() - Date.parse(server.lastActivity || server.startedAt)) / 1000;
  const left = server.idleTimeoutSeconds - idle;
  return left > 0 ? "Stops when idle in about " + duration(left) + "." : "Idle: stopping now.";
}

function updateCard(card, server, receivedAt) {
  card.server = server;
  card.root.dataset.status = server.status;
  card.status.dataset.status = server.status;
  card.status.textContent = STATUS_WORDS[server.status] || server.status;
  card.message.textContent = server.message || "";
  card.message.hidden = !server.message;
  card.countdown.textContent = countdownText(server);
  const live = server.live || {};
  const f = card.figures;
  f.lastActivity.textContent = ago(server.lastActivity);
  f.sessions.textContent = String(server.sessions);
  f.inFlight.textContent = String(server.inFlight);
  f.rps.textContent = (live.requestsPerSecond ?? 0).toFixed(2);
  f.errorRate.textContent = live.errorRate === null || live.errorRate === undefined ? "–" : (live.errorRate * 100).toFixed(1) + " %";
  f.p50.textContent = ms(live.p50Ms);
  f.p95.textContent = ms(live.p95Ms);
  f.hour.textContent = String(live.requestsLastHour ?? 0);
  f.coldStarts.textContent = String(server.starts) + (server.startFailures ? " (" + server.startFailures + " failed)" : "");
  f.lastColdStart.textContent = ms(server.lastColdStartMs);
  f.meanColdStart.textContent = server.starts ? ms(server.coldStartMsTotal / server.starts) : "–";
  f.restarts.textContent = String(server.restartCount) + (server.oomKills ? " (" + server.oomKills + " OOM)" : "");
  f.cpu.textContent = cpuText(card, server, receivedAt);
  f.memory.textContent = server.memoryBytes === undefined || server.memoryBytes === null ? "–"
    : bytes(server.memoryBytes) + (server.memoryLimitBytes ? " of " + bytes(server.memoryLimitBytes) : "");
  const running = server.status === "running";
  card.start.disabled = running || server.status === "starting" || card.busy === true;
  card.stop.disabled = server.status === "stopped" || card.busy === true;
  drawCharts(card, server.history || []);
  if (card.details.open) loadLog(card);
}

/// CPU as a share of one core between two polls (cpuSeconds is cumulative).
function cpuText(card, server, receivedAt) {
  if (server.cpuSeconds === undefined || server.cpuSeconds === null) return "–";
  const previous = card.previousCpu;
  card.previousCpu = { seconds: server.cpuSeconds, at: receivedAt };
  if (!previous || server.cpuSeconds < previous.seconds || receivedAt <= previous.at) {
    return server.cpuSeconds.toFixed(1) + " s";
  }
  const share = (server.cpuSeconds - previous.seconds) / ((receivedAt - previous.at) / 1000);
  return (share * 100).toFixed(1) + " % (" + server.cpuSeconds.toFixed(1) + " s)";
}

function drawCharts(card, points) {
  const series = {
    requests: points.map((p) => p.requests),
    errors: points.map((p) => p.errors),
    p95: points.map((p) => p.p95Ms || 0),
  };
  for (const [key, label] of CHARTS) {
    const values = series[key];
    const svg = card.charts[key];
    const max = Math.max(0, ...values);
    const width = 120 / Math.max(values.length, 1);
    svg.replaceChildren(...values.map((v, i) => {
      const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      const h = max > 0 ? (v / max) * 38 : 0;
      rect.setAttribute("x", (i * width).toFixed(2));
      rect.setAttribute("width", Math.max(width - 0.3, 0.3).toFixed(2));
      rect.setAttribute("y", (40 - h).toFixed(2));
      rect.setAttribute("height", h.toFixed(2));
      return rect;
    }));
    const peak = key === "p95" ? ms(max || null) : String(max);
    const total = values.reduce((a, b) => a + b, 0);
    const summary = key === "p95" ? "highest " + peak : "total " + total + ", highest " + peak + " in a minute";
    svg.setAttribute("aria-label", label + " over the last hour: " + summary);
  }
}

async function loadLog(card) {
  try {
    const response = await call("/servers/" + encodeURIComponent(card.name) + "/logs?tail=50");
    const text = response.ok ? await response.text() : "(" + (await messageOf(response)) + ")";
    const atBottom = card.log.scrollTop + card.log.clientHeight >= card.log.scrollHeight - 4;
    card.log.textContent = text.trim() ? text : "(no log lines yet)";
    if (atBottom) card.log.scrollTop = card.log.scrollHeight;
  } catch (error) {
    if (!(error instanceof Unauthorized)) card.log.textContent = "(could not load the log: " + error.message + ")";
  }
}

async function operate(card, action) {
  card.busy = true;
  card.start.disabled = card.stop.disabled = true;
  card.outcome.textContent = action === "start" ? "Starting…" : "Stopping…";
  try {
    const response = await call("/servers/" + encodeURIComponent(card.name) + "/" + action, { method: "POST" });
    card.outcome.textContent = response.ok
      ? (action === "start" ? "Started." : "Stopped.")
      : "Refused: " + (await messageOf(response));
  } catch (error) {
    if (!(error instanceof Unauthorized)) card.outcome.textContent = "Failed: " + error.message;
  } finally {
    card.busy = false;
    refresh();
  }
}

// ---- the page ----

function render(data, receivedAt) {
  clockOffsetMs = Date.parse(data.now) - receivedAt;
  const list = document.getElementById("servers");
  const seen = new Set();
  for (const server of data.servers) {
    seen.add(server.name);
    let card = cards.get(server.name);
    if (!card) {
      card = makeCard(server.name);
      cards.set(server.name, card);
      list.append(card.root);
    }
    updateCard(card, server, receivedAt);
  }
  for (const [name, card] of cards) {
    if (!seen.has(name)) { card.root.remove(); cards.delete(name); }
  }
  const counts = {};
  for (const server of data.servers) counts[server.status] = (counts[server.status] || 0) + 1;
  const parts = Object.entries(counts).sort().map(([status, n]) => n + " " + status);
  document.getElementById("summary").textContent =
    plural(data.servers.length, "server") + (parts.length ? ": " + parts.join(", ") : "");
  document.getElementById("updated").textContent = "Updated " + new Date(receivedAt).toLocaleTimeString();
}

async function refresh() {
  clearTimeout(pollTimer);
  const error = document.getElementById("error");
  try {
    const response = await call("/dashboard/data");
    if (!response.ok) throw new Error(await messageOf(response));
    render(await response.json(), Date.now());
    error.hidden = true;
    document.getElementById("login").hidden = true;
  } catch (e) {
    if (e instanceof Unauthorized) return; // waits for a key; the form calls refresh
    error.textContent = "Cannot reach mcpod: " + e.message + " (retrying)";
    error.hidden = false;
  }
  pollTimer = setTimeout(refresh, POLL_MS);
}

// The idle countdowns tick between polls.
function tick() {
  for (const card of cards.values()) {
    if (card.server) {
      card.countdown.textContent = countdownText(card.server);
      card.figures.lastActivity.textContent = ago(card.server.lastActivity);
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setUpLogin();
  refresh();
  setInterval(tick, 1000);
});
