// Aegis dashboard: plain JavaScript over the /v1 API and its Server-Sent Events. No build step, no inline
// script (the page is served with a strict Content-Security-Policy), all text set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("aegis.token") || "", sessions: [], current: null, me: null,
                source: null, refreshTimer: null, refreshViews: new Set(), usageChanged: false,
                gPending: false, range: "day", nodes: [], nodesAt: 0 };
const VIEWS = ["overview", "sessions", "pipelines", "nodes", "audit", "users"];
const ENDED = ["completed", "killed", "crashed"];
// global events that change what the Overview, Pipelines, Nodes and Users views show (not every chunk of text)
const STATE_EVENTS = new Set(["session_status_change", "session_approval", "session_created", "session_ended",
                              "session_stall", "session_turn", "session_pipeline"]);

// ---- API ---------------------------------------------------------------------------------------
async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401) { showLogin(data.message || "authentication required"); throw new Error("unauthorized"); }
  if (!resp.ok) {
    const err = new Error(data.message || data.error || ("HTTP " + resp.status));
    err.status = resp.status;
    throw err;
  }
  return data;
}

function toast(message) {
  const t = $("toast");
  t.textContent = message;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

function ago(ms) {
  if (!ms) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

function when(ms) { return ms ? new Date(ms).toLocaleString() : ""; }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function badge(status) {
  const b = el("span", status, "badge " + status);
  b.dataset.status = status;
  return b;
}

function sessionLink(id, text) {
  const a = el("a", text || id.slice(0, 8));
  a.href = "#/sessions/" + encodeURIComponent(id);
  a.title = id;
  return a;
}

// A table cell with its column's name (shown before the value when a narrow screen turns rows into cards).
function cell(label, ...content) {
  const td = el("td");
  td.dataset.label = label;
  const box = el("div");
  for (const c of content) box.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  td.append(box);
  return td;
}

const isAdmin = () => !!state.me && state.me.role === "admin";
const canSeeUsage = () => !!state.me && (state.me.role === "admin" || state.me.role === "operator");

// ---- sign-in -----------------------------------------------------------------------------------
function showLogin(message) {
  document.querySelectorAll(".view").forEach((v) => { v.hidden = true; });
  $("login").hidden = false;
  $("login-error").textContent = state.token ? message : "";
  stopLive();
  fetch("/auth/session").then((r) => r.json()).then((s) => { $("sso").hidden = !s.oidc; }).catch(() => {});
}

async function whoami() {  // who the page acts as: which views to offer (Users is for admins)
  state.me = await api("GET", "/v1/auth/whoami");
  $("nav-users").hidden = !isAdmin();
  let label = null;
  let sso = null;
  try { sso = await (await fetch("/auth/session")).json(); } catch (e) { /* no SSO */ }
  if (sso && sso.authenticated) label = (sso.identity.email || sso.identity.sub) + " (" + sso.role + ")";
  else if (state.token) label = state.me.name + " (" + state.me.role + ")";
  $("whoami").hidden = !label;
  if (label) $("whoami-name").textContent = label;
}
$("sign-out").addEventListener("click", async () => {
  sessionStorage.removeItem("aegis.token");
  await fetch("/auth/logout", { method: "POST" });
  location.reload();
});

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  state.token = $("token").value.trim();
  try {
    const res = await fetch("/v1/auth/verify", { method: "POST", headers: { "Content-Type": "application/json" },
                                                  body: JSON.stringify({ token: state.token }) });
    const data = await res.json();
    if (!data.valid) { $("login-error").textContent = "That token is not valid."; return; }
  } catch (e) { $("login-error").textContent = String(e); return; }
  sessionStorage.setItem("aegis.token", state.token);
  $("login").hidden = true;
  await start();
});

// ---- live updates (SSE) ------------------------------------------------------------------------
async function startLive() {
  stopLive();
  let url = "/v1/events";
  if (state.token) {  // EventSource cannot send headers: a short-lived single-use token goes in the URL
    try { url += "?token=" + encodeURIComponent((await api("POST", "/v1/auth/sse-token")).token); }
    catch (e) { setTimeout(startLive, 3000); return; }
  }
  const src = new EventSource(url);
  state.source = src;
  src.onopen = () => { $("live").textContent = "live"; $("live").className = "live on"; };
  src.onmessage = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch (e) { return; }
    if (ev.event === "heartbeat" || ev.event === "connected") return;
    scheduleRefresh(ev);
  };
  src.onerror = () => {  // reconnect with a fresh token (a used one is refused)
    $("live").textContent = "reconnecting"; $("live").className = "live off";
    if (state.source === src) { src.close(); state.source = null; setTimeout(startLive, 2000); }
  };
}

function stopLive() {
  if (state.source) { state.source.close(); state.source = null; }
  $("live").textContent = "offline"; $("live").className = "live off";
}

// Many events in a burst: one refresh. The session list and the open session follow within 150 ms; the Overview,
// Pipelines and Users views (several requests each) at most once a second, and only when a state changed.
function scheduleRefresh(ev) {
  const view = currentView();
  const changesState = STATE_EVENTS.has(ev.event);
  if (view === "session" && ev.sessionId === state.current) state.refreshViews.add("session");
  else if (view === "sessions" || (changesState && ["overview", "pipelines", "nodes", "users"].includes(view))) {
    state.refreshViews.add(view);
  }
  if (ev.event === "session_turn") state.usageChanged = true;  // the plots change with turns only
  if (!state.refreshViews.size || state.refreshTimer) return;
  const delay = ["session", "sessions"].includes(view) ? 150 : 1000;
  state.refreshTimer = setTimeout(async () => {
    state.refreshTimer = null;
    const due = state.refreshViews;
    state.refreshViews = new Set();
    const now = currentView();
    if (!due.has(now)) return;
    try {
      if (now === "overview") {
        const plots = state.usageChanged;
        state.usageChanged = false;
        await loadOverview({ plots, health: false });
      } else await load(now);
    } catch (e) { /* shown by the next explicit action */ }
  }, delay);
}

// ---- views -------------------------------------------------------------------------------------
function currentView() {
  const h = location.hash.replace(/^#\//, "");
  if (h.startsWith("sessions/")) return "session";
  return VIEWS.includes(h) ? h : "sessions";
}

function show(view) {
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "view-" + view; });
  document.querySelectorAll("nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.view === view || (view === "session" && a.dataset.view === "sessions"));
  });
}

async function load(view) {
  if (view === "overview") await loadOverview();
  else if (view === "sessions") await loadSessions();
  else if (view === "pipelines") await loadPipelines();
  else if (view === "nodes") await loadNodes();
  else if (view === "audit") await loadAudit();
  else if (view === "users") await loadUsers();
  else if (view === "session") await loadSession(decodeURIComponent(location.hash.split("/")[2]));
}

async function route() {
  if (!$("login").hidden) return;
  let view = currentView();
  if (view === "users" && !isAdmin()) {
    view = "forbidden";
    $("forbidden-title").textContent = "Users";
    $("forbidden-text").textContent = "The Users view (API keys, single sign-on users and what they own) is for " +
      "admins; you are signed in as " + (state.me ? state.me.role : "unknown") + ".";
  }
  show(view);
  if (view === "forbidden") return;
  try { await load(view); } catch (e) { if (e.message !== "unauthorized") toast(e.message); }
}

// ---- Overview: what needs attention first, then counts and activity -----------------------------
async function loadOverview(what) {
  const { plots = true, health = true } = what || {};
  const list = (status, limit) => api("GET", "/v1/sessions?status=" + status + "&limit=" + limit);
  const [waiting, live, crashed, stats] = await Promise.all([
    list("permission_prompt", 100), list("active", 100), list("crashed", 20), api("GET", "/v1/sessions/stats")]);
  renderPending(waiting.sessions.filter((s) => s.pendingPermission));
  const dayAgo = Date.now() - 86400000;
  const trouble = [...live.sessions.filter((s) => s.status === "stalled"),
                   ...crashed.sessions.filter((s) => (s.endedAt || s.lastActivity) >= dayAgo),
                   ...live.sessions.filter((s) => s.lastError && !["stalled", "permission_prompt"].includes(s.status))];
  renderTrouble(trouble);
  $("all-clear").hidden = $("pending-list").children.length + trouble.length > 0;
  const cards = $("cards");
  cards.replaceChildren();
  const add = (label, value) => { const c = el("div", null, "card"); c.append(el("strong", value), el("span", label)); cards.append(c); };
  add("active", stats.active);
  for (const [status, n] of Object.entries(stats.byStatus)) add(status, n);
  add("created", stats.totalCreated);
  if (health) {
    const h = await api("GET", "/v1/health");
    $("health").textContent = `aegisd ${h.version} · ${h.status} · started ${when(Date.now() - h.uptime * 1000)} · store ${h.store}`;
  }
  if (plots) await loadPlots();
}

function renderPending(sessions) {
  const ul = $("pending-list");
  ul.replaceChildren();
  for (const s of sessions) {
    const p = s.pendingPermission;
    const li = el("li", null, "pending-item");
    li.dataset.session = s.id;
    li.dataset.requestId = p.requestId;
    const head = el("div");
    head.append(sessionLink(s.id, s.name), " ", badge(s.status), " asks to run ", el("strong", p.toolTitle), " ",
                el("code", p.requestId, "muted"));
    li.append(head);
    if (p.rawInput && Object.keys(p.rawInput).length) li.append(el("pre", JSON.stringify(p.rawInput, null, 1)));
    const buttons = el("div", null, "decide");
    const approve = el("button", "Approve", "ok approve");
    const reject = el("button", "Reject", "danger reject");
    approve.type = reject.type = "button";
    approve.addEventListener("click", () => decideInPlace(s, "approve", [approve, reject]));
    reject.addEventListener("click", () => decideInPlace(s, "reject", [approve, reject]));
    buttons.append(approve, reject);
    li.append(buttons);
    ul.append(li);
  }
}

// Approve / Reject the request shown, in place: named by its requestId, so a request decided elsewhere
// meanwhile is never mistaken for the next one (the daemon answers 409 and decides nothing).
async function decideInPlace(s, verb, buttons) {
  const p = s.pendingPermission;
  buttons.forEach((b) => { b.disabled = true; });
  try {
    await api("POST", "/v1/sessions/" + encodeURIComponent(s.id) + "/" + verb, { requestId: p.requestId });
    toast((verb === "approve" ? "Approved " : "Rejected ") + p.toolTitle + " in " + s.name);
  } catch (e) {
    if (e.message !== "unauthorized") toast(verb + ": " + e.message);
  }
  loadOverview({ plots: false, health: false }).catch(() => {});  // what is true now
}

function troubleLine(s) {
  const lines = [];
  if (s.status === "stalled") lines.push("no agent activity for " + ago(s.lastActivity).replace(" ago", ""));
  if (s.status === "crashed" && s.crash) lines.push(s.crash.reason);
  if (s.lastError) lines.push(s.lastError.kind + ": " + s.lastError.message);
  return lines.join(" — ") || s.status;
}

function renderTrouble(sessions) {
  const ul = $("trouble-list");
  ul.replaceChildren();
  for (const s of sessions) {
    const li = el("li", null, "trouble-item " + s.status);
    li.dataset.session = s.id;
    li.append(sessionLink(s.id, s.name), " ", badge(s.status), " ",
              el("span", ago(s.endedAt || s.lastActivity), "muted"), el("span", troubleLine(s), "why"));
    ul.append(li);
  }
}

// Sessions, tokens and cost over time: hand-drawn SVG bars (no library; nothing inline for the CSP).
function bucketKeys(range) {
  const keys = [];
  const now = Date.now();
  if (range === "day") {
    const hour = 3600000;
    const last = Math.floor(now / hour) * hour;
    for (let t = last - 23 * hour; t <= last; t += hour) {
      keys.push({ key: new Date(t).toISOString().slice(0, 13) + ":00Z", t,
                  label: new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) });
    }
  } else {
    const day = 86400000;
    const last = Math.floor(now / day) * day;
    for (let t = last - 13 * day; t <= last; t += day) {
      keys.push({ key: new Date(t).toISOString().slice(0, 10), t,
                  label: new Date(t).toLocaleDateString([], { month: "short", day: "numeric", timeZone: "UTC" }) });
    }
  }
  return keys;
}

async function loadPlots() {
  document.querySelectorAll("[data-range]").forEach((b) => b.classList.toggle("active", b.dataset.range === state.range));
  let range = state.range;
  const byKey = {};
  if (canSeeUsage()) {
    const keys = bucketKeys(range);
    const data = await api("GET", "/v1/metrics/aggregate?groupBy=" + (range === "day" ? "hour" : "day") +
                                  "&from=" + keys[0].t);
    for (const b of data.buckets) byKey[b.bucket] = b;
    $("plots-note").textContent = range === "day" ? "The last 24 hours, by hour." : "The last 14 days, by day (UTC).";
  } else {  // viewers: their own keys' use, by day
    range = "week";
    const data = await api("GET", "/v1/analytics/tokens");
    for (const d of data.dailyTrends) byKey[d.date] = d;
    $("plots-note").textContent = "Your own use over the last 14 days, by day (UTC).";
  }
  const points = bucketKeys(range).map((k) => ({ label: k.label, b: byKey[k.key] || {} }));
  const series = (f) => points.map((p) => ({ label: p.label, value: p.b[f] || 0 }));
  const int = (v) => Math.round(v).toLocaleString();
  const usd = (v) => "$" + (v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(2) : v.toFixed(4));
  $("plots").replaceChildren(
    plot("sessions", "Sessions with a turn", series("sessions"), int, false),
    plot("tokens", "Tokens", series("totalTokens"), int, true),
    plot("cost", "Cost (estimated, USD)", series("estimatedCostUsd"), usd, true));
}

function plot(name, title, points, fmt, summed) {
  const fig = el("figure", null, "plot");
  fig.dataset.plot = name;
  const values = points.map((p) => p.value);
  const max = Math.max(0, ...values);
  const cap = el("figcaption");
  cap.append(el("span", title), el("strong", summed ? fmt(values.reduce((a, b) => a + b, 0)) + " in all"
                                                    : "peak " + fmt(max)));
  const W = points.length * 10, H = 100;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
                             "aria-label": title + ", " + points[0].label + " to " + points[points.length - 1].label });
  points.forEach((p, i) => {
    const h = max > 0 ? Math.max(2, (p.value / max) * (H - 6)) : 0;
    const bar = svg("rect", { x: i * 10 + 1.5, y: H - 1 - (p.value > 0 ? h : 1), width: 7, height: p.value > 0 ? h : 1,
                              class: p.value > 0 ? "bar" : "bar zero" });
    const tip = svg("title");
    tip.textContent = p.label + ": " + fmt(p.value);
    bar.append(tip);
    chart.append(bar);
  });
  chart.append(svg("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "axis", "vector-effect": "non-scaling-stroke" }));
  const ticks = el("div", null, "ticks");
  ticks.append(el("span", points[0].label), el("span", "max " + fmt(max)), el("span", points[points.length - 1].label));
  fig.append(cap, chart, ticks);
  return fig;
}
document.querySelectorAll("[data-range]").forEach((b) => b.addEventListener("click", () => {
  state.range = b.dataset.range;
  loadPlots().catch((e) => toast(e.message));
}));

// ---- Sessions ----------------------------------------------------------------------------------
async function loadSessions() {
  const [data] = await Promise.all([api("GET", "/v1/sessions?limit=100"), nodesLately()]);
  state.sessions = data.sessions;
  renderSessions();
}

// The nodes, asked again at most every 10 s (the session list shows a Node column when there are several).
async function nodesLately() {
  if (Date.now() - state.nodesAt < 10000) return state.nodes;
  try { state.nodes = await api("GET", "/v1/nodes"); } catch (e) { /* the list works without it */ }
  state.nodesAt = Date.now();
  return state.nodes;
}
const multiNode = () => state.nodes.length > 1;

function renderSessions() {
  const q = $("search").value.trim().toLowerCase();
  const rows = $("session-rows");
  rows.replaceChildren();
  const shown = state.sessions.filter((s) => !q || [s.name, s.id, s.workDir].some((v) => (v || "").toLowerCase().includes(q)));
  for (const s of shown) {
    const tr = el("tr");
    tr.dataset.id = s.id;
    tr.tabIndex = 0;
    const name = cell("Name", sessionLink(s.id, s.name));
    if (s.lastError) name.firstChild.append(el("span", s.lastError.message, "row-error"));
    tr.append(name, cell("Status", badge(s.status)), cell("Work dir", el("span", s.workDir, "muted")),
              cell("Agent", s.agent), cell("Model", s.model || el("span", "default", "muted")), cell("Turns", s.turns),
              cell("Last activity", ago(s.lastActivity)));
    const node = cell("Node", el("code", s.node || ""));
    node.className = "node-col";
    node.hidden = !multiNode();
    tr.append(node);
    tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") location.hash = "#/sessions/" + encodeURIComponent(s.id); });
    rows.append(tr);
  }
  document.querySelectorAll("th.node-col").forEach((th) => { th.hidden = !multiNode(); });
  $("no-sessions").hidden = shown.length > 0;
}

async function loadSession(id) {
  if (state.current !== id) $("s-verify").hidden = true;  // a verdict belongs to the session it was run for
  state.current = id;
  const [s, tr] = await Promise.all([api("GET", "/v1/sessions/" + encodeURIComponent(id)),
                                     api("GET", "/v1/sessions/" + encodeURIComponent(id) + "/transcript/cursor?limit=200")]);
  if (state.current !== id) return;
  $("s-name").textContent = s.name;
  const status = $("s-status");
  status.textContent = s.status; status.className = "badge " + s.status; status.dataset.status = s.status;
  $("s-id").textContent = s.id;
  $("s-workdir").textContent = s.workDir;
  $("s-node-box").hidden = !s.node;
  $("s-node").textContent = s.node || "";
  $("s-agent").textContent = s.agent;
  // what the agent reports it uses (before it started: the one asked for), and what it offers
  $("s-model").textContent = s.model || "the agent's default";
  $("s-models").textContent = s.models && s.models.length ? "(offers " + s.models.join(", ") + ")" : "";
  const p = s.pendingPermission;
  $("s-permission").hidden = !p;
  $("s-permission").dataset.requestId = p ? p.requestId : "";  // what Approve / Reject decide: this one only
  if (p) {
    $("s-permission-tool").textContent = p.toolTitle;
    $("s-permission-id").textContent = p.requestId;
    $("s-permission-input").textContent = p.rawInput && Object.keys(p.rawInput).length ? JSON.stringify(p.rawInput, null, 1) : "";
  }
  $("s-last-error").hidden = !s.lastError;
  if (s.lastError) {
    $("s-last-error").textContent = s.lastError.kind + ": " + s.lastError.message;
    $("s-last-error").dataset.kind = s.lastError.kind;
  }
  $("s-crash-box").hidden = !s.crash;
  if (s.crash) {
    const how = s.crash.signal != null ? " (signal " + s.crash.signal + ")" : "";
    $("s-crash").textContent = "Crashed: " + s.crash.reason + how;
    $("s-stderr-box").hidden = !s.crash.stderrTail;
    $("s-stderr").textContent = s.crash.stderrTail || "";
  }
  const live = !ENDED.includes(s.status);
  for (const b of ["interrupt", "kill"]) $(b).disabled = !live;
  $("send-form").hidden = !live;
  const list = $("transcript");
  list.replaceChildren();
  for (const m of tr.messages) {
    const li = el("li", null, "entry " + m.role + " " + m.contentType);
    li.append(el("span", m.contentType === "text" ? m.role : m.role + " · " + m.contentType, "who"), el("div", m.text, "text"));
    list.append(li);
  }
  list.scrollTop = list.scrollHeight;
}

// ---- Pipelines ---------------------------------------------------------------------------------
async function loadPipelines() {
  const [data, sessions] = await Promise.all([api("GET", "/v1/pipelines"), api("GET", "/v1/sessions?status=all&limit=100")]);
  const names = Object.fromEntries(sessions.sessions.map((s) => [s.id, s.name]));
  const rows = $("pipeline-rows");
  rows.replaceChildren();
  $("no-pipelines").hidden = data.length > 0;
  $("pipelines-table").hidden = data.length === 0;
  for (const p of data) {
    const tr = el("tr");
    tr.dataset.id = p.id;
    const stages = el("ul", null, "stages");
    for (const x of p.stages || []) {
      const li = el("li");
      li.dataset.stage = x.name;
      li.append(el("strong", x.name), " ", badge(x.status));
      if (x.verification) {
        li.append(" ", el("span", "checks " + (x.verification.ok ? "passed" : "failed") +
                          (x.fixes ? ", " + x.fixes + " fix" + (x.fixes > 1 ? "es" : "") : ""), "muted"));
      }
      const ids = x.sessions && x.sessions.length ? x.sessions : (x.sessionId ? [x.sessionId] : []);
      ids.forEach((id, i) => {
        const a = sessionLink(id, names[id] || id.slice(0, 8));
        a.classList.add("stage-session");
        if (ids.length > 1) a.textContent += " (attempt " + (i + 1) + ")";
        li.append(a);
      });
      if (!ids.length && x.status === "pending") li.append(" ", el("span", "waiting for " + (x.dependsOn.join(", ") || "its turn"), "muted"));
      if (x.error) li.append(el("span", x.error, "row-error"));
      stages.append(li);
    }
    const name = cell("Name", el("strong", p.name));
    if (p.error) name.firstChild.append(el("span", p.error, "row-error"));
    tr.append(name, cell("Status", badge(p.status)), cell("Stages", stages), cell("Created", ago(p.createdAt)));
    rows.append(tr);
  }
}

// ---- Nodes: the daemons of the cluster, their status and load; admins drain and undrain them ------
async function loadNodes() {
  $("nodes-error").textContent = "";
  let nodes;
  try { nodes = await api("GET", "/v1/nodes"); }
  catch (e) { if (e.message !== "unauthorized") $("nodes-error").textContent = e.message; return; }
  state.nodes = nodes; state.nodesAt = Date.now();
  document.querySelectorAll("th.admin-col").forEach((th) => { th.hidden = !isAdmin(); });
  const rows = $("node-rows");
  rows.replaceChildren();
  for (const n of nodes) {
    const tr = el("tr");
    tr.dataset.node = n.id;
    const name = cell("Node", el("strong", n.id));
    if (n.local) name.firstChild.append(el("span", "this node", "muted node-local"));
    if (n.host && n.host !== n.id) name.firstChild.append(el("span", n.host, "muted row-note"));
    const load = el("div", null, "load");
    const meter = document.createElement("meter");
    meter.min = 0; meter.max = Math.max(1, n.capacity); meter.value = n.sessions;
    meter.high = Math.max(1, n.capacity) * 0.8; meter.optimum = 0;
    load.append(meter, el("span", n.sessions + " / " + n.capacity, "sessions"));
    tr.append(name, cell("Status", badge(n.status)), cell("Sessions", load),
              cell("URL", el("code", n.url || "", "muted")), cell("Version", n.version),
              cell("Heartbeat", ago(n.lastHeartbeat) || "never"), cell("Started", when(n.startedAt)));
    if (isAdmin()) {
      const draining = n.status === "draining";
      const b = el("button", draining ? "Undrain" : "Drain", "chip drain");
      b.type = "button";
      b.disabled = n.status === "down";
      b.title = draining ? "Take new sessions again" : "Take no new sessions (those it runs go on)";
      b.addEventListener("click", async () => {
        b.disabled = true;
        try {
          await api("POST", "/v1/nodes/" + encodeURIComponent(n.id) + "/" + (draining ? "undrain" : "drain"));
          toast((draining ? "Undrained " : "Draining ") + n.id);
        } catch (e) { if (e.message !== "unauthorized") toast((draining ? "undrain: " : "drain: ") + e.message); }
        loadNodes().catch(() => {});
      });
      tr.append(cell("", b));
    }
    rows.append(tr);
  }
}

// ---- Audit -------------------------------------------------------------------------------------
async function loadAudit() {
  $("audit-error").textContent = "";
  const rows = $("audit-rows");
  rows.replaceChildren();
  try {
    const data = await api("GET", "/v1/audit?limit=100&reverse=true");
    for (const r of data.records) {
      const tr = el("tr");
      const sid = r.sessionId ? sessionLink(r.sessionId) : "";
      tr.append(cell("#", r.seq), cell("Time", when(r.ts)), cell("Actor", r.actor), cell("Action", r.action),
                cell("Session", sid));
      rows.append(tr);
    }
  } catch (e) { $("audit-error").textContent = e.message; }
}

// ---- Users (admins): API keys, single sign-on users, and the sessions each owns ------------------
function owned(u) {
  const box = el("div");
  const ul = el("ul", null, "owned");
  for (const s of u.sessions) {
    const li = el("li");
    li.append(sessionLink(s.id, s.name), " ", badge(s.status));
    ul.append(li);
  }
  box.append(el("span", u.sessionCount ? u.sessionCount + " session" + (u.sessionCount > 1 ? "s" : "") + ", " +
                u.liveSessions + " live" : "none", "muted"));
  if (u.sessions.length) box.append(ul);
  if (u.sessionCount > u.sessions.length) box.append(el("span", "and " + (u.sessionCount - u.sessions.length) + " more", "muted"));
  return box;
}

function quotaText(k) {
  const q = k.quotas || {};
  const u = k.usage;
  const minutes = Math.round(u.windowMs / 60000) + " min";
  const box = el("div");
  const line = (text, limited) => box.append(el("span", text, "quota" + (limited ? "" : " muted")));
  line(u.activeSessions + " / " + (q.maxConcurrentSessions ?? "∞") + " sessions at once", q.maxConcurrentSessions != null);
  line(u.tokensInWindow.toLocaleString() + " / " + (q.maxTokensPerWindow != null ? q.maxTokensPerWindow.toLocaleString() : "∞") +
       " tokens per " + minutes, q.maxTokensPerWindow != null);
  line("$" + u.spendInWindowUsd.toFixed(4) + " / " + (q.maxSpendPerWindow != null ? "$" + q.maxSpendPerWindow : "∞") +
       " per " + minutes, q.maxSpendPerWindow != null);
  if (!k.quotas) box.prepend(el("span", "no quotas", "quota"));
  return box;
}

async function loadUsers() {
  $("users-error").textContent = "";
  let u;
  try { u = await api("GET", "/v1/auth/users"); }
  catch (e) { if (e.message !== "unauthorized") $("users-error").textContent = e.message; return; }
  const now = Date.now();
  const keys = $("key-rows");
  keys.replaceChildren();
  for (const k of u.keys) {
    const tr = el("tr");
    tr.dataset.keyId = k.id;
    const expired = k.expiresAt && k.expiresAt <= now;
    tr.append(cell("Name", el("strong", k.name), " ", el("code", k.id, "muted")), cell("Role", badge(k.role)),
              cell("Permissions", k.permissions ? k.permissions.join(", ") : "the role's defaults"),
              cell("Created", when(k.createdAt)), cell("Last used", k.lastUsedAt ? ago(k.lastUsedAt) : "never"),
              cell("Expires", k.expiresAt ? (expired ? "expired " : "") + when(k.expiresAt) : "never"),
              cell("Quotas and use", quotaText(k)), cell("Sessions", owned(k)));
    keys.append(tr);
  }
  $("no-keys").hidden = u.keys.length > 0;
  $("keys-table").hidden = u.keys.length === 0;
  const sso = $("sso-rows");
  sso.replaceChildren();
  for (const s of u.ssoUsers) {
    const tr = el("tr");
    tr.dataset.sub = s.sub;
    const who = el("div");
    who.append(el("strong", s.email || s.name || s.sub));
    if (s.name && s.email) who.append(" ", el("span", s.name, "muted"));
    who.append(" ", el("code", s.principal, "muted"));
    const via = s.via.map((v) => v === "dashboard" ? "dashboard (" + s.signIns + " open, until " +
                                 new Date(s.expiresAt).toLocaleTimeString() + ")" : "bearer token (ag login)");
    tr.append(cell("Identity", who), cell("Role", badge(s.role)), cell("Last seen", s.lastSeenAt ? ago(s.lastSeenAt) : ""),
              cell("Signed in", via.join(", ")), cell("Sessions", owned(s)));
    sso.append(tr);
  }
  $("sso-table").hidden = u.ssoUsers.length === 0;
  $("no-sso").hidden = u.ssoUsers.length > 0;
  $("no-sso").textContent = u.oidc ? "No one has signed in with single sign-on yet (dashboard sign-ins are kept, " +
      "bearer-token users are listed once seen since the daemon started)."
    : "Single sign-on is not configured: set oidc.issuer and oidc.clientId (AEGIS_OIDC_ISSUER, AEGIS_OIDC_CLIENT_ID) " +
      "in the daemon's configuration.";
  const others = $("owner-rows");
  others.replaceChildren();
  for (const o of u.otherOwners) {
    const tr = el("tr");
    tr.dataset.owner = o.owner || "";
    tr.append(cell("Owner", o.owner ? "former owner " + o.owner : "the master token and local callers"), cell("Sessions", owned(o)));
    others.append(tr);
  }
  if (!u.otherOwners.length) {
    const tr = el("tr");
    tr.append(cell("Owner", el("span", "none", "muted")), cell("Sessions", ""));
    others.append(tr);
  }
}

// ---- actions -----------------------------------------------------------------------------------
async function act(verb, body) {
  const id = state.current;
  try {
    await api("POST", "/v1/sessions/" + encodeURIComponent(id) + "/" + verb, body);
    await loadSession(id);
  } catch (e) {
    if (e.message === "unauthorized") return;
    toast(verb + ": " + e.message);
    loadSession(id).catch(() => {});  // show what is true now (say, the request that is pending instead)
  }
}
// Approve / Reject name the request shown: if another one is pending by then, the daemon decides nothing (409)
function decide(verb) {
  const requestId = $("s-permission").dataset.requestId;
  act(verb, requestId ? { requestId } : undefined);
}
function showVerdict(v) {
  const box = $("s-verify");
  box.hidden = false;
  box.className = "verify " + (v.ok ? "ok" : "bad");
  $("s-verify-summary").textContent = (v.ok ? "Checks passed: " : "Checks failed: ") + v.summary;
  const steps = $("s-verify-steps");
  steps.replaceChildren();
  for (const s of v.steps || []) {
    steps.append(el("li", s.name + " — " + (s.ok ? "ok" : (s.error || "failed")) + " (" + s.command + ", " +
                          (s.durationMs / 1000).toFixed(1) + " s)", s.ok ? "ok" : "bad"));
  }
  const failed = (v.steps || []).find((s) => !s.ok);
  $("s-verify-output").textContent = failed && failed.output ? failed.output.split("\n").slice(-40).join("\n") : "";
}
$("verify").addEventListener("click", async () => {
  const id = state.current;
  const button = $("verify");
  button.disabled = true; button.textContent = "Verifying…";
  try {
    const res = await fetch("/v1/sessions/" + encodeURIComponent(id) + "/verify", {
      method: "POST", headers: state.token ? { Authorization: "Bearer " + state.token } : {} });
    const body = await res.json();
    if (res.ok || body.code === "VERIFICATION_FAILED") { if (state.current === id) showVerdict(body); }
    else toast("verify: " + (body.error || res.status));
  } catch (e) { toast("verify: " + e.message); }
  finally { button.disabled = false; button.textContent = "Verify"; }
});
$("approve").addEventListener("click", () => decide("approve"));
$("reject").addEventListener("click", () => decide("reject"));
$("interrupt").addEventListener("click", () => act("interrupt"));
$("kill").addEventListener("click", () => { if (confirm("Kill this session?")) act("kill"); });
$("send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("send-text").value;
  if (!text.trim()) return;
  $("send-text").value = "";
  await act("send", { text });
});
$("search").addEventListener("input", renderSessions);

function openNew() {
  $("new-error").textContent = "";
  $("new-dialog").showModal();
  $("new-workdir").focus();
}
$("new-session").addEventListener("click", openNew);
$("new-cancel").addEventListener("click", () => $("new-dialog").close());
$("new-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = { workDir: $("new-workdir").value.trim(), permissionMode: $("new-mode").value, reuse: false };
  if ($("new-name").value.trim()) body.name = $("new-name").value.trim();
  if ($("new-prompt").value.trim()) body.prompt = $("new-prompt").value;
  try {
    const s = await api("POST", "/v1/sessions", body);
    $("new-dialog").close();
    $("new-form").reset();
    location.hash = "#/sessions/" + encodeURIComponent(s.id);
  } catch (e) { $("new-error").textContent = e.message; }
});

// ---- keyboard ----------------------------------------------------------------------------------
document.addEventListener("keydown", (ev) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "k") {
    ev.preventDefault(); location.hash = "#/sessions"; $("search").focus(); return;
  }
  if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "n") { ev.preventDefault(); openNew(); return; }
  if (ev.key === "Escape") {
    for (const d of ["new-dialog", "help-dialog"]) if ($(d).open) $(d).close();
    if (typing) document.activeElement.blur();
    return;
  }
  if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === "?") { $("help-dialog").showModal(); return; }
  if (state.gPending) {
    state.gPending = false;
    const to = { o: "overview", s: "sessions", p: "pipelines", n: "nodes", a: "audit", u: "users" }[ev.key.toLowerCase()];
    if (to) location.hash = "#/" + to;
    return;
  }
  if (ev.key.toLowerCase() === "g") { state.gPending = true; setTimeout(() => { state.gPending = false; }, 1500); }
});

window.addEventListener("hashchange", route);

// ---- start -------------------------------------------------------------------------------------
// the example in the Pipelines empty state names this daemon
document.querySelector("#no-pipelines pre.example").textContent =
  document.querySelector("#no-pipelines pre.example").textContent.replace("localhost:9100", location.host);

async function start() {
  try { await whoami(); } catch (e) {
    if (e.message === "unauthorized") return;  // the sign-in form is showing
    toast(e.message);
  }
  startLive();
  route();
}
start();
