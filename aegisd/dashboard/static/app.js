// Aegis dashboard: plain JavaScript over the /v1 API and its Server-Sent Events. No build step, no inline
// script (the page is served with a strict Content-Security-Policy), all text set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("aegis.token") || "", sessions: [], current: null,
                source: null, refreshTimer: null, gPending: false };

// ---- API ---------------------------------------------------------------------------------------
async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401) { showLogin(data.message || "authentication required"); throw new Error("unauthorized"); }
  if (!resp.ok) throw new Error(data.message || data.error || ("HTTP " + resp.status));
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
  return Math.round(s / 3600) + " h ago";
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function badge(status) {
  const b = el("span", status, "badge " + status);
  b.dataset.status = status;
  return b;
}

// ---- login -------------------------------------------------------------------------------------
function showLogin(message) {
  document.querySelectorAll(".view").forEach((v) => { v.hidden = true; });
  $("login").hidden = false;
  $("login-error").textContent = state.token ? message : "";
  stopLive();
  fetch("/auth/session").then((r) => r.json()).then((s) => { $("sso").hidden = !s.oidc; }).catch(() => {});
}

async function showIdentity() {  // signed in with single sign-on: who, and a way out
  try {
    const s = await (await fetch("/auth/session")).json();
    if (!s.authenticated) return;
    $("whoami-name").textContent = (s.identity.email || s.identity.sub) + " (" + s.role + ")";
    $("whoami").hidden = false;
  } catch (e) { /* no SSO */ }
}
$("sign-out").addEventListener("click", async () => {
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
  startLive();
  route();
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
    scheduleRefresh(ev.sessionId);
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

function scheduleRefresh(sessionId) {
  if (state.current && sessionId === state.current) state.refreshCurrent = true;
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(async () => {  // many events in a burst: one refresh
    state.refreshTimer = null;
    const view = currentView();
    try {
      if (view === "sessions") await loadSessions();
      if (view === "overview") await loadOverview();
      if (view === "pipelines") await loadPipelines();
      if (view === "session" && state.refreshCurrent) { state.refreshCurrent = false; await loadSession(state.current); }
    } catch (e) { /* shown by the next explicit action */ }
  }, 150);
}

// ---- views -------------------------------------------------------------------------------------
function currentView() {
  const h = location.hash.replace(/^#\//, "");
  if (h.startsWith("sessions/")) return "session";
  return ["overview", "sessions", "pipelines", "audit"].includes(h) ? h : "sessions";
}

function show(view) {
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "view-" + view; });
  document.querySelectorAll("nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.view === view || (view === "session" && a.dataset.view === "sessions"));
  });
}

async function route() {
  if (!$("login").hidden) return;
  const view = currentView();
  show(view);
  try {
    if (view === "overview") await loadOverview();
    else if (view === "sessions") await loadSessions();
    else if (view === "pipelines") await loadPipelines();
    else if (view === "audit") await loadAudit();
    else if (view === "session") await loadSession(decodeURIComponent(location.hash.split("/")[2]));
  } catch (e) { if (e.message !== "unauthorized") toast(e.message); }
}

async function loadOverview() {
  const [stats, health] = await Promise.all([api("GET", "/v1/sessions/stats"), api("GET", "/v1/health")]);
  const cards = $("cards");
  cards.replaceChildren();
  const add = (label, value) => { const c = el("div", null, "card"); c.append(el("strong", value), el("span", label)); cards.append(c); };
  add("active", stats.active);
  for (const [status, n] of Object.entries(stats.byStatus)) add(status, n);
  add("created", stats.totalCreated);
  $("health").textContent = `aegisd ${health.version} · ${health.status} · up ${Math.round(health.uptime)} s · store ${health.store}`;
}

async function loadSessions() {
  const data = await api("GET", "/v1/sessions?limit=100");
  state.sessions = data.sessions;
  renderSessions();
}

function renderSessions() {
  const q = $("search").value.trim().toLowerCase();
  const rows = $("session-rows");
  rows.replaceChildren();
  const shown = state.sessions.filter((s) => !q || [s.name, s.id, s.workDir].some((v) => (v || "").toLowerCase().includes(q)));
  for (const s of shown) {
    const tr = el("tr");
    tr.dataset.id = s.id;
    tr.tabIndex = 0;
    const name = el("td"); const a = el("a", s.name); a.href = "#/sessions/" + encodeURIComponent(s.id); name.append(a);
    const st = el("td"); st.append(badge(s.status));
    tr.append(name, st, el("td", s.workDir, "muted"), el("td", s.agent), el("td", s.turns), el("td", ago(s.lastActivity)));
    tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") location.hash = "#/sessions/" + encodeURIComponent(s.id); });
    rows.append(tr);
  }
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
  const p = s.pendingPermission;
  $("s-permission").hidden = !p;
  $("s-permission").dataset.requestId = p ? p.requestId : "";  // what Approve / Reject decide: this one only
  if (p) {
    $("s-permission-tool").textContent = p.toolTitle;
    $("s-permission-id").textContent = p.requestId;
    $("s-permission-input").textContent = p.rawInput && Object.keys(p.rawInput).length ? JSON.stringify(p.rawInput, null, 1) : "";
  }
  $("s-crash").hidden = !s.crash;
  if (s.crash) $("s-crash").textContent = s.crash.reason;
  const live = !["completed", "killed", "crashed"].includes(s.status);
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

async function loadPipelines() {
  const rows = $("pipeline-rows");
  const data = await api("GET", "/v1/pipelines");
  rows.replaceChildren();
  for (const p of data) {
    const tr = el("tr");
    const st = el("td"); st.append(badge(p.status));
    const stages = (p.stages || []).map((x) => x.name + ": " + x.status +
      (x.verification ? " (checks " + (x.verification.ok ? "passed" : "failed") + (x.fixes ? ", " + x.fixes + " fix" + (x.fixes > 1 ? "es" : "") : "") + ")" : ""));
    tr.append(el("td", p.name), st, el("td", stages.join(", ")));
    rows.append(tr);
  }
}

async function loadAudit() {
  $("audit-error").textContent = "";
  const rows = $("audit-rows");
  rows.replaceChildren();
  try {
    const data = await api("GET", "/v1/audit?limit=100&reverse=true");
    for (const r of data.records) {
      const tr = el("tr");
      tr.append(el("td", r.seq), el("td", new Date(r.ts).toLocaleString()), el("td", r.actor), el("td", r.action),
                el("td", (r.sessionId || "").slice(0, 8)));
      rows.append(tr);
    }
  } catch (e) { $("audit-error").textContent = e.message; }
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
    const to = { o: "overview", s: "sessions", p: "pipelines", a: "audit" }[ev.key.toLowerCase()];
    if (to) location.hash = "#/" + to;
    return;
  }
  if (ev.key.toLowerCase() === "g") { state.gPending = true; setTimeout(() => { state.gPending = false; }, 1500); }
});

window.addEventListener("hashchange", route);

// ---- start -------------------------------------------------------------------------------------
(async () => {
  try {
    await api("GET", "/v1/sessions/stats");
  } catch (e) { return; }  // the login form is showing
  startLive();
  route();
  showIdentity();
})();
