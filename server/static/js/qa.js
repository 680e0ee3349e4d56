// QA: past and scored calls with filters; one call's emotion timeline, transcript with grades and metrics.
import { GRADES, api, boot, el, fill, fmtClock, fmtDateTime, fmtIndex, fmtShare, gradeBadge, onLangChange, reasonText, roleName, t } from "./common.js";
import { timelineChart } from "./charts.js";
import { Playback } from "./playback.js";

boot("qa_title");
const app = document.getElementById("app");
let chart = null;
let player = null; // Playback of the call shown
let lastRender = null;

function params() { return new URL(location.href).searchParams; }

function navigate(search) {
  history.pushState(null, "", `/qa${search}`);
  route();
}
window.addEventListener("popstate", route);
onLangChange(() => lastRender && lastRender());

function route() {
  chart?.destroy();
  chart = null;
  player?.destroy();
  player = null;
  const id = params().get("call");
  if (id) showCall(id); else showList();
}

// ------------------------------------------------------------------ list

const PAGE = 50; // calls per page of the list

function select(name, options, value) {
  return el("select", { name, id: `f-${name}` }, options.map(([v, label]) => el("option", { value: v, selected: v === value }, label)));
}

async function showList() {
  const p = params();
  const f = { from: p.get("from") || "", to: p.get("to") || "", agent: p.get("agent") || "", peak: p.get("peak") || "",
    escalated: p.get("escalated") || "", status: p.get("status") || "", q: p.get("q") || "", queue: p.get("queue") || "" };
  const offset = Math.max(0, parseInt(p.get("offset") || "0", 10) || 0);
  const pager = el("div", { class: "row pager", "data-testid": "pager" });
  const body = el("tbody", { "data-testid": "calls" }, el("tr", {}, el("td", { colspan: 8, class: "empty" }, t("loading"))));
  const form = el("form", { class: "filters", "data-testid": "filters" },
    el("label", {}, t("f_words"), el("input", { type: "search", name: "q", value: f.q, size: 16, placeholder: t("f_words_hint") })),
    el("label", {}, t("f_from"), el("input", { type: "date", name: "from", value: f.from })),
    el("label", {}, t("f_to"), el("input", { type: "date", name: "to", value: f.to })),
    el("label", {}, t("f_agent"), el("input", { type: "text", name: "agent", value: f.agent, size: 10 })),
    el("label", {}, t("f_queue"), el("input", { type: "text", name: "queue", value: f.queue, size: 10 })),
    el("label", {}, t("f_peak"), select("peak", [["", t("any")], ...GRADES.map((g) => [g, t(g)])], f.peak)),
    el("label", {}, t("f_escalated"), select("escalated", [["", t("any")], ["true", t("yes")], ["false", t("no")]], f.escalated)),
    el("label", {}, t("f_status"), select("status", [["", t("any")], ...["ended", "live", "interrupted"].map((s) => [s, t(`status_${s}`)])], f.status)),
    el("button", { type: "submit", class: "primary" }, t("apply")),
    el("button", { type: "button", class: "link", onclick: () => navigate("") }, t("reset")));
  form.onsubmit = (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    navigate(q.toString() ? `?${q}` : "");
  };
  app.replaceChildren(el("section", { class: "panel" }, el("h2", {}, t("calls")), form,
    el("table", { class: "grid calls" },
      el("thead", {}, el("tr", {}, ...["col_started", "col_call", "col_agent", "col_duration", "col_lang", "col_peak", "col_escalations", "col_status"]
        .map((k) => el("th", {}, t(k))))),
      body), pager));
  lastRender = showList;

  // GET /v1/search does every filter (days are the viewer's local days) and pages the result
  const q = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
  const day = (d, plus = 0) => String(new Date(`${d}T00:00:00`).getTime() / 1000 + plus);
  if (f.q) q.set("q", f.q);
  if (f.from) q.set("since", day(f.from));
  if (f.to) q.set("until", day(f.to, 86400));
  if (f.agent) q.set("agent_id", f.agent);
  if (f.queue) q.set("queue", f.queue);
  if (f.peak) q.set("peak_grade", f.peak);
  if (f.escalated) q.set("escalated", f.escalated);
  if (f.status) q.set("status", f.status);
  let rows, found;
  try {
    found = await api(`/v1/search?${q}`);
    rows = found.calls;
  } catch (e) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "error" }, t("error", { msg: e.message }))));
    return;
  }
  const page = (to) => () => { const u = params(); u.set("offset", String(to)); navigate(`?${u}`); };
  fill(pager, el("span", { class: "muted", "data-testid": "total" }, t("n_calls", { n: found.total })), el("span", { class: "spacer" }),
    offset > 0 ? el("button", { type: "button", class: "secondary", "data-action": "newer", onclick: page(Math.max(0, offset - PAGE)) }, t("newer")) : null,
    found.next_offset != null ? el("button", { type: "button", class: "secondary", "data-action": "older", onclick: page(found.next_offset) }, t("older")) : null);
  if (!rows.length) { body.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "empty" }, t("no_calls")))); return; }
  body.replaceChildren(...rows.map((c) => {
    const link = el("a", { href: `/qa?call=${encodeURIComponent(c.call_id)}`, onclick: (e) => { e.preventDefault(); navigate(`?call=${encodeURIComponent(c.call_id)}`); } },
      c.call_id);
    return el("tr", { "data-call": c.call_id },
      el("td", {}, fmtDateTime(c.started_at)),
      el("td", {}, link),
      el("td", {}, c.agent_id || "–"),
      el("td", { class: "num" }, fmtClock(c.duration_s ?? c.summary?.duration_s)),
      el("td", {}, c.language || "–"),
      el("td", {}, c.summary?.peak_grade ? gradeBadge(c.summary.peak_grade) : "–"),
      el("td", { class: "num" }, c.escalations ? el("span", { class: "pill alert" }, `⚠ ${c.escalations}`) : "0"),
      el("td", {}, t(`status_${c.status}`)));
  }));
}

// ------------------------------------------------------------------ one call

function secs(x) { return x == null ? "–" : fmtClock(x); }

function metric(key, value) { return el("div", { class: "metric" }, el("div", { class: "k" }, t(key)), el("div", { class: "v" }, value)); }

/** Each scored speaker's time in each grade (summary.grades: share 0-1 and seconds). */
function shares(grades) {
  const sh = Object.fromEntries(Object.entries(grades || {}).map(([role, g]) => [role, g.share || {}]));
  return el("div", { class: "shares", "data-testid": "shares" }, Object.entries(sh).map(([role, s]) => el("div", { class: "share-row" },
    el("span", { class: "who" }, roleName(role)),
    el("span", { class: "stack" }, GRADES.filter((g) => s[g] > 0).map((g) => el("span", { class: `seg grade-${g}`, style: `width:${s[g] * 100}%`,
      title: `${t(g)} ${fmtShare(s[g], 0)}` }, s[g] >= 0.25 ? `${t(g)} ${fmtShare(s[g], 0)}` : ""))),
    el("span", { class: "share-text" }, GRADES.filter((g) => s[g] > 0)
      .map((g) => `${t(g)} ${fmtShare(s[g], 0)} (${secs(grades[role].seconds?.[g])})`).join(" · ")))));
}

function endText(reason) {
  if (!reason) return "–";
  const key = `end_${reason}`;
  return t(key) === key ? reason : t(key);
}

function byRole(d, fmt) { return Object.entries(d || {}).map(([r, v]) => `${roleName(r)} ${fmt(v)}`).join(" · ") || "–"; }

/** What is known of the call's recording: where it came from and its speakers. */
function recordingPanel(c) {
  const meta = c.metadata || {};
  const source = meta.source === "batch" ? t("rec_scored", { file: meta.file || "–" }) : t("rec_live");
  return el("section", { class: "panel", "data-testid": "recording" }, el("h2", {}, t("playback")),
    el("div", { class: "metrics", "data-testid": "recording-facts" },
      metric("rec_source", source),
      metric("rec_speakers", (c.roles || []).map(roleName).join(" · ") || "–"),
      metric("m_duration", secs(c.duration_s))),
    el("p", { class: "muted", "data-testid": "no-audio" }, t("no_audio")));
}

/** The grade of `channel` in force at time `t` (latest emotion.update at or before it). */
function gradeAt(emotion, channel, time) {
  let g = null;
  for (const e of emotion) if (e.channel === channel && e.t <= time + 0.5) g = e; else if (e.t > time + 0.5) break;
  return g;
}

async function showCall(id) {
  app.replaceChildren(el("p", { class: "empty" }, t("loading")));
  let c;
  try {
    c = await api(`/v1/calls/${encodeURIComponent(id)}`);
  } catch (e) {
    app.replaceChildren(backLink(), el("p", { class: "error" }, e.status === 404 ? t("not_found") : t("error", { msg: e.message })));
    return;
  }
  const render = () => {
    chart?.destroy();
    const s = c.summary || {};
    const emotion = (c.emotion || []).slice().sort((a, b) => a.t - b.t);
    const alerts = c.alerts || [];
    const chartEl = el("div", { class: "timeline", "data-testid": "timeline" });
    const transcript = (c.transcript || []).map((x) => {
      const g = gradeAt(emotion, x.channel, x.end);
      return el("div", { class: `line ${x.channel}`, "data-seq": x.seq },
        el("div", { class: "meta" }, el("span", { class: "who" }, roleName(x.channel)), el("span", { class: "ts" }, fmtClock(x.start)),
          g ? gradeBadge(g.grade, ` · ${fmtIndex(g.index)}`) : null),
        el("div", { class: "text" }, x.text));
    });
    const alertsEl = alerts.length ? el("ul", { class: "call-alerts" }, alerts.map((a, i) => el("li", {},
      el("span", { class: "pill alert" }, `⚠ ${i + 1}`), " ", el("b", {}, fmtClock(a.t)), " ", reasonText(a), " · ",
      el("span", { class: "muted" }, t(`status_${a.status}`), a.acked_by ? ` ${t("acked_by", { who: a.acked_by })}` : "",
        a.barge_in ? ` · ${t("barge_in_note")}` : "")))) : el("p", { class: "empty" }, t("no_alerts"));
    fill(app,
      backLink(),
      el("section", { class: "panel callhead-qa" },
        el("h2", {}, el("code", {}, c.call_id), " ", s.peak_grade ? gradeBadge(s.peak_grade) : null),
        el("p", { class: "muted" }, `${t("agent")} ${c.agent_id || "–"} · ${fmtDateTime(c.started_at)} · ${t(`status_${c.status}`)} · ${c.language || ""}`)),
      el("section", { class: "panel" }, el("div", { class: "row" }, el("h2", {}, t("timeline")), el("span", { class: "spacer" }),
        el("span", { class: "muted" }, t("alerts_marked"),
          emotion.some((e) => e.channel === "agent") ? "" : ` · ${t("agent_not_scored")}`)), chartEl),
      el("div", { class: "qa-grid" },
        el("section", { class: "panel transcript" }, el("h2", {}, t("transcript_qa")),
          el("div", { class: "lines static", "data-testid": "qa-transcript" }, transcript.length ? transcript : el("p", { class: "empty" }, t("no_transcript")))),
        el("div", { class: "side" },
          el("section", { class: "panel", "data-testid": "metrics" }, el("h2", {}, t("metrics")),
            el("div", { class: "metrics" },
              metric("m_duration", secs(s.duration_s ?? c.duration_s)),
              metric("m_talk", byRole(s.talk_s, secs)),
              metric("m_ratio", byRole(s.talk_share, (x) => fmtShare(x, 0))),
              metric("m_silence", s.silence_s == null ? "–" : `${secs(s.silence_s)} (${fmtShare(s.silence_share, 0)})`),
              metric("m_longest_silence", secs(s.longest_silence_s)),
              metric("m_overtalk", secs(s.overtalk_s)),
              metric("m_interruptions", byRole(s.interruptions, String)),
              metric("m_agent_rate", s.agent_speech_rate == null ? "–" : `${Math.round(s.agent_speech_rate)} ${t(`rate_${s.agent_speech_rate_unit}`)}`),
              metric("m_segments", s.final_segments ?? "–"),
              metric("m_escalations", s.escalations ?? c.escalations ?? 0),
              metric("m_peak", s.peak_grade ? el("span", {}, gradeBadge(s.peak_grade), ` ${fmtIndex(s.peak_index)} · ${fmtClock(s.peak_t)}`) : "–"),
              metric("m_end", endText(s.end_reason))),
            el("h3", {}, t("m_shares")), shares(s.grades)),
          el("section", { class: "panel" }, el("h2", {}, t("call_alerts")), alertsEl),
          recordingPanel(c))));
    chart = timelineChart(chartEl, emotion, alerts, s.duration_s ?? c.duration_s);
    player?.destroy();
    player = new Playback(app.querySelector("[data-testid=recording]"), c.call_id, c.transcript || [], transcript, chart);
    player.start();
  };
  lastRender = render;
  render();
}

function backLink() {
  return el("p", {}, el("a", { href: "/qa", onclick: (e) => { e.preventDefault(); navigate(""); } }, "← ", t("back")));
}

route();
