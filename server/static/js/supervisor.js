// Supervisor console: live calls by risk, the alert feed (ack / barge in; KPI anomalies, ops.anomaly, as their own
// cards), follow a call live.
import { GRADE_RANK, HttpError, api, boot, el, fill, fmtClock, fmtIndex, fmtShare, fmtTime, fmtTrend, gradeBadge, onLangChange, openSocket, reasonText,
  t } from "./common.js";
import { CallView } from "./callview.js";

boot("supervisor_title");
const app = document.getElementById("app");

const calls = new Map();   // call_id -> {info, grade, index, trend} from /v1/live
const alerts = new Map();  // alert_id -> AlertMessage
const anomalies = new Map(); // alert_id -> AnomalyAlert (ops.anomaly: a KPI of a queue or agent, no call)
const ANOMALY_HOURS = 24; // the anomalies shown: raised in the last day (all of them: /ops)
let following = null;      // CallView
let soundOn = false;

const board = el("tbody", { "data-testid": "wallboard" });
const alertList = el("div", { class: "alert-list", "data-testid": "alerts" });
const anomalyList = el("div", { class: "alert-list", "data-testid": "anomalies" });
const followEl = el("section", { class: "panel follow", id: "follow" });
const soundBox = el("input", { type: "checkbox", id: "sound", onchange: (e) => { soundOn = e.target.checked; } });

app.replaceChildren(
  el("div", { class: "console" },
    el("section", { class: "panel board" },
      el("h2", { "data-i18n": "wallboard" }, t("wallboard")),
      el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, ...["col_call", "col_agent", "col_duration", "col_grade", "col_index", "col_trend", "col_alerts"]
          .map((k) => el("th", { "data-i18n": k }, t(k))))),
        board)),
    el("section", { class: "panel alerts" },
      el("div", { class: "row" }, el("h2", { "data-i18n": "alerts" }, t("alerts")), el("span", { class: "spacer" }),
        el("label", { class: "sound" }, soundBox, " ", el("span", { "data-i18n": "sound" }, t("sound")))),
      alertList,
      el("div", { class: "row" }, el("h2", { "data-i18n": "anomalies" }, t("anomalies")), el("span", { class: "spacer" }),
        el("a", { href: "/ops", "data-i18n": "anomaly_open_ops", "data-testid": "anomalies-ops" }, t("anomaly_open_ops"))),
      anomalyList)),
  followEl);

// ------------------------------------------------------------------ wallboard

function openAlerts(callId) {
  return [...alerts.values()].filter((a) => a.call_id === callId && a.status === "open");
}

function risk(c) {
  return openAlerts(c.info.call_id).length * 1000 + (GRADE_RANK[c.grade] ?? -1) * 200 + (c.index ?? 0) + Math.max(0, c.trend ?? 0) / 10;
}

function renderBoard() {
  const rows = [...calls.values()].sort((a, b) => risk(b) - risk(a) || a.info.started_at - b.info.started_at);
  if (!rows.length) {
    board.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, t("no_live"))));
    return;
  }
  board.replaceChildren(...rows.map((c) => {
    const id = c.info.call_id;
    const open = openAlerts(id);
    const acked = [...alerts.values()].filter((a) => a.call_id === id && a.status === "acked").length;
    const tr = fmtTrend(c.trend);
    return el("tr", { class: `call-row grade-${c.grade || "unknown"}${following?.callId === id ? " selected" : ""}`, "data-call": id,
      tabindex: 0, onclick: () => follow(id), onkeydown: (e) => { if (e.key === "Enter") follow(id); } },
      el("td", {}, el("code", {}, id)),
      el("td", {}, c.info.agent_id || "–"),
      el("td", { class: "num dur", "data-started": c.info.started_at }, fmtClock(Date.now() / 1000 - c.info.started_at)),
      el("td", {}, gradeBadge(c.grade)),
      el("td", { class: "num" }, c.index == null ? "–" : el("span", { class: "idx" }, el("span", { class: "bar" },
        el("span", { style: `width:${Math.round(c.index)}%` })), Math.round(c.index))),
      el("td", { class: `trend ${tr.cls}` }, c.index == null ? "–" : `${tr.arrow} ${tr.text}`),
      el("td", {}, open.length ? el("span", { class: "pill alert" }, "⚠ ", t("open_alerts", { n: open.length })) : null,
        acked ? el("span", { class: "pill ok" }, `✔ ${acked}`) : null));
  }));
}

// One websocket (/v1/live) for the whole board: a snapshot of the live calls, then at most one frame a second
// with the calls that changed (a call whose status is no longer "live" leaves the board).
function applyLive(s) {
  if (s.status !== "live") { calls.delete(s.call_id); return; }
  calls.set(s.call_id, { info: { call_id: s.call_id, agent_id: s.agent_id, started_at: s.started_at, queue: s.queue },
    grade: s.grade, index: s.index, trend: s.trend });
}

let liveRetry = 0;
const retryLive = () => setTimeout(connectLive, Math.min(5000, 300 * 2 ** liveRetry++));
async function connectLive() {
  let ws;
  try {
    ws = await openSocket("/v1/live");
  } catch (e) {
    if (e instanceof HttpError && e.status === 403) board.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "error" }, t("forbidden"))));
    else retryLive();
    return;
  }
  let lastError = null;
  ws.onopen = () => { liveRetry = 0; };
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "error") { lastError = msg.code; return; }
    if (msg.type === "live.snapshot") calls.clear();
    for (const s of msg.calls) applyLive(s);
    renderBoard();
    renderAlerts(); // a card offers barge-in only while its call is live
  };
  ws.onclose = (e) => {
    if (e.code === 1008 && lastError !== "unauthorized") {
      board.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "error" }, t("forbidden"))));
      return;
    }
    retryLive(); // dropped, or a node going away: a new snapshot on reconnect
  };
}

setInterval(() => {
  for (const td of board.querySelectorAll("td.dur")) td.textContent = fmtClock(Date.now() / 1000 - +td.dataset.started);
}, 1000);

// ------------------------------------------------------------------ alert feed

function beep() {
  if (!soundOn) return;
  try {
    const ctx = new AudioContext();
    const o = ctx.createOscillator();
    const g = ctx.createGain();
    o.frequency.value = 880;
    g.gain.value = 0.1;
    o.connect(g).connect(ctx.destination);
    o.start();
    o.stop(ctx.currentTime + 0.25);
  } catch { /* no audio */ }
}

async function ack(alertId, bargeIn, buttons) {
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const row = await api(`/v1/alerts/${encodeURIComponent(alertId)}/ack`, { method: "POST", body: { barge_in: bargeIn } });
    alerts.set(alertId, { ...alerts.get(alertId), ...row });
    if (bargeIn) follow(row.call_id);
  } catch (e) {
    if (e.status === 409) { /* someone else acknowledged it: the feed brings alert.acked */ } else {
      alert(t("error", { msg: e.message }));
      buttons.forEach((b) => { b.disabled = false; });
    }
  }
  renderAlerts();
  renderBoard();
}

function renderAlerts() {
  const list = [...alerts.values()].sort((a, b) => (a.status === "open" ? 0 : 1) - (b.status === "open" ? 0 : 1) || (b.raised_at ?? 0) - (a.raised_at ?? 0));
  if (!list.length) { alertList.replaceChildren(el("p", { class: "empty" }, t("no_alerts"))); return; }
  alertList.replaceChildren(...list.map((a) => {
    const status = a.status || "open";
    const btnAck = el("button", { type: "button", class: "secondary", "data-action": "ack" }, "✔ ", t("ack"));
    // barging in needs an open alert on a call still live; a cleared or ended one can only be acknowledged
    const btnBarge = status === "open" && calls.has(a.call_id)
      ? el("button", { type: "button", class: "danger", "data-action": "barge" }, "☎ ", t("barge")) : null;
    const buttons = [btnAck, btnBarge].filter(Boolean);
    btnAck.onclick = () => ack(a.alert_id, false, buttons);
    if (btnBarge) btnBarge.onclick = () => ack(a.alert_id, true, buttons);
    const who = a.acked_by ? t("acked_by", { who: a.acked_by }) + (a.barge_in ? ` · ${t("barge_in_note")}` : "") : "";
    return el("article", { class: `alert-card status-${status}`, "data-alert": a.alert_id, "data-status": status,
      "data-live": calls.has(a.call_id) ? "true" : "false" },
      el("div", { class: "row" },
        el("span", { class: `pill ${status === "open" ? "alert" : status === "acked" ? "ok" : "muted"}` },
          status === "open" ? "⚠ " : status === "acked" ? "✔ " : "↘ ", t(`status_${status}`)),
        el("b", {}, a.agent_id || ""), el("code", {}, a.call_id),
        el("span", { class: "spacer" }), el("span", { class: "muted" }, fmtTime(a.raised_at))),
      el("p", { class: "reason" }, reasonText(a)),
      a.evidence?.index != null ? el("p", { class: "muted" }, `${t("index")} ${fmtIndex(a.evidence.index)}`) : null,
      (a.excerpt || []).length ? el("blockquote", {}, (a.excerpt || []).slice(-3).map((x) => el("div", {}, el("b", {}, `${t(x.channel)}: `), x.text))) : null,
      el("div", { class: "row actions" },
        status !== "acked" ? buttons : el("span", { class: "muted" }, who),
        el("span", { class: "spacer" }),
        el("button", { type: "button", class: "link", onclick: () => follow(a.call_id) }, t("open_call"))));
  }));
}

// ------------------------------------------------------------------ KPI anomalies (ops.anomaly)


/** An anomaly's card: which KPI, where (queue or agent), the hour judged and the figures that raised it. */
function anomalyCard(a) {
  const f = a.figures;
  const link = new URLSearchParams({ bucket: "hour", kpi: a.kpi, [a.scope]: a.scope_value });
  return el("article", { class: "alert-card anomaly-card status-open", "data-anomaly": a.alert_id, "data-kpi": a.kpi,
    "data-scope": a.scope, "data-value": a.scope_value },
    el("div", { class: "row" },
      el("span", { class: "pill alert" }, "⚠ ", t("anomaly")),
      el("b", { class: "kpi" }, t(`kpi_${a.kpi}`)),
      el("span", { class: "scope" }, `${t(`ops_g_${a.scope}`)} ${a.scope_value}`),
      el("span", { class: "spacer" }), el("span", { class: "muted" }, fmtTime(a.raised_at))),
    el("p", { class: "reason figures" }, t("anomaly_value", { value: fmtShare(f.value), count: f.count, calls: f.calls,
      from: fmtTime(a.window_start), to: fmtTime(a.window_end) })),
    el("p", { class: "muted baseline" }, t("anomaly_baseline", { value: fmtShare(f.baseline_value), count: f.baseline_count,
      calls: f.baseline_calls, weeks: f.baseline_weeks })),
    el("p", { class: "muted test" }, t("anomaly_test", { z: f.z.toFixed(2), min_z: f.min_z,
      increase: `${(100 * (f.value - f.baseline_value)).toFixed(1)}`, min_increase: `${(100 * f.min_increase).toFixed(1)}` })),
    el("div", { class: "row actions" }, el("span", { class: "spacer" }),
      el("a", { href: `/ops?${link}`, "data-action": "ops" }, t("anomaly_open_ops"))));
}

function renderAnomalies() {
  const since = Date.now() / 1000 - ANOMALY_HOURS * 3600;
  for (const [id, a] of anomalies) if (a.raised_at < since) anomalies.delete(id); // a page left open for days
  const list = [...anomalies.values()].sort((a, b) => b.raised_at - a.raised_at);
  anomalyList.replaceChildren(...(list.length ? list.map(anomalyCard) : [el("p", { class: "empty" }, t("no_anomalies"))]));
}

/** The anomalies raised before the feed connected (the feed brings the later ones). */
async function loadAnomalies() {
  try {
    for (const a of await api(`/v1/anomalies?hours=${ANOMALY_HOURS}`)) anomalies.set(a.alert_id, a);
    renderAnomalies();
  } catch (e) {
    anomalyList.replaceChildren(el("p", { class: "error" }, e instanceof HttpError && e.status === 403 ? t("forbidden") : t("error", { msg: e.message })));
  }
}

let alertRetry = 0;
const retryAlerts = () => setTimeout(connectAlerts, Math.min(5000, 300 * 2 ** alertRetry++));
async function connectAlerts() {
  let ws;
  try {
    ws = await openSocket("/v1/alerts");
  } catch (e) {
    if (e instanceof HttpError && e.status === 403) alertList.replaceChildren(el("p", { class: "error" }, t("forbidden")));
    else retryAlerts();
    return;
  }
  let lastError = null;
  ws.onopen = () => { alertRetry = 0; loadAnomalies(); };
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "error") { lastError = msg.code; return; }
    if (msg.type === "ops.anomaly") {
      if (!anomalies.has(msg.alert_id)) beep();
      anomalies.set(msg.alert_id, msg);
      renderAnomalies();
      return;
    }
    const old = alerts.get(msg.alert_id);
    if (msg.type === "escalation.raised" && !msg.replay && !old) beep();
    // never let a replayed "open" overwrite a newer acknowledged state
    if (old && old.status === "acked" && msg.status !== "acked") return;
    alerts.set(msg.alert_id, { ...(old || {}), ...msg });
    renderAlerts();
    renderBoard();
  };
  ws.onclose = (e) => {
    if (e.code === 1008 && lastError !== "unauthorized") { alertList.replaceChildren(el("p", { class: "error" }, t("forbidden"))); return; }
    retryAlerts(); // dropped, or a ticket that expired on the way: a new ticket next time
  };
}

// ------------------------------------------------------------------ follow a call

function follow(callId) {
  if (following?.callId === callId) { followEl.scrollIntoView({ behavior: "smooth", block: "start" }); return; }
  following?.destroy();
  const root = el("div", {});
  fill(followEl,
    el("div", { class: "row" }, el("h2", {}, t("following")), el("span", { class: "spacer" }),
      el("a", { href: `/agent?call=${encodeURIComponent(callId)}`, target: "_blank", rel: "noopener" }, "↗"),
      el("button", { type: "button", class: "link", onclick: unfollow }, t("close"))),
    root);
  following = new CallView(root, callId).start();
  window.calltone = { following };
  renderBoard();
  const u = new URL(location.href);
  u.searchParams.set("call", callId);
  history.replaceState(null, "", u);
}

function unfollow() {
  following?.destroy();
  following = null;
  followEl.replaceChildren(el("p", { class: "empty" }, t("select_call")));
  const u = new URL(location.href);
  u.searchParams.delete("call");
  history.replaceState(null, "", u);
  renderBoard();
}

onLangChange(() => { renderBoard(); renderAlerts(); renderAnomalies(); if (!following) unfollow(); else followEl.querySelector("h2").textContent = t("following"); });

renderBoard();
renderAlerts();
renderAnomalies();
const initial = new URL(location.href).searchParams.get("call");
if (initial) follow(initial); else unfollow();
// a first authenticated request (asks for a token if needed) before opening the alert socket
connectLive().then(connectAlerts);
