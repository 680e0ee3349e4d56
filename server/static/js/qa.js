// QA: past and scored calls with filters; one call's emotion timeline, transcript with grades and metrics.
import { GRADES, api, boot, el, fmtClock, fmtDateTime, gradeBadge, onLangChange, roleName, t } from "./common.js";
import { timelineChart } from "./charts.js";

boot("qa_title");
const app = document.getElementById("app");
let chart = null;
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
  const id = params().get("call");
  if (id) showCall(id); else showList();
}

// ------------------------------------------------------------------ list

function select(name, options, value) {
  return el("select", { name, id: `f-${name}` }, options.map(([v, label]) => el("option", { value: v, selected: v === value }, label)));
}

async function showList() {
  const p = params();
  const f = { from: p.get("from") || "", to: p.get("to") || "", agent: p.get("agent") || "", peak: p.get("peak") || "",
    escalated: p.get("escalated") || "", status: p.get("status") || "" };
  const body = el("tbody", { "data-testid": "calls" }, el("tr", {}, el("td", { colspan: 8, class: "empty" }, t("loading"))));
  const form = el("form", { class: "filters", "data-testid": "filters" },
    el("label", {}, t("f_from"), el("input", { type: "date", name: "from", value: f.from })),
    el("label", {}, t("f_to"), el("input", { type: "date", name: "to", value: f.to })),
    el("label", {}, t("f_agent"), el("input", { type: "text", name: "agent", value: f.agent, size: 10 })),
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
      body)));
  lastRender = showList;

  const q = new URLSearchParams({ limit: "500" });
  if (f.from) q.set("since", new Date(`${f.from}T00:00:00`).toISOString());
  if (f.agent) q.set("agent_id", f.agent);
  if (f.escalated) q.set("escalated", f.escalated);
  if (f.status) q.set("status", f.status);
  let rows;
  try {
    rows = (await api(`/v1/calls?${q}`)).calls;
  } catch (e) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "error" }, t("error", { msg: e.message }))));
    return;
  }
  if (f.to) {
    const end = new Date(`${f.to}T00:00:00`).getTime() / 1000 + 86400;
    rows = rows.filter((c) => c.started_at < end);
  }
  if (f.peak) rows = rows.filter((c) => (c.summary?.peak_grade || null) === f.peak);
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

function pct(x) { return x == null ? "–" : `${Math.round(x * 100)}%`; }
function secs(x) { return x == null ? "–" : fmtClock(x); }

function metric(key, value) { return el("div", { class: "metric" }, el("div", { class: "k" }, t(key)), el("div", { class: "v" }, value)); }

function shares(sh) {
  return el("div", { class: "shares" }, Object.entries(sh || {}).map(([role, s]) => el("div", { class: "share-row" },
    el("span", { class: "who" }, roleName(role)),
    el("span", { class: "stack" }, GRADES.filter((g) => s[g] > 0).map((g) => el("span", { class: `seg grade-${g}`, style: `width:${s[g] * 100}%`,
      title: `${t(g)} ${pct(s[g])}` }, s[g] >= 0.25 ? `${t(g)} ${pct(s[g])}` : ""))),
    el("span", { class: "share-text" }, GRADES.filter((g) => s[g] > 0).map((g) => `${t(g)} ${pct(s[g])}`).join(" · ")))));
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
    const talk = s.transcript_talk_s || s.talk_s || {};
    const transcript = (c.transcript || []).map((x) => {
      const g = gradeAt(emotion, x.channel, x.end);
      return el("div", { class: `line ${x.channel}`, "data-seq": x.seq },
        el("div", { class: "meta" }, el("span", { class: "who" }, roleName(x.channel)), el("span", { class: "ts" }, fmtClock(x.start)),
          g ? gradeBadge(g.grade, ` · ${Math.round(g.index)}`) : null),
        el("div", { class: "text" }, x.text));
    });
    const alertsEl = alerts.length ? el("ul", { class: "call-alerts" }, alerts.map((a, i) => el("li", {},
      el("span", { class: "pill alert" }, `⚠ ${i + 1}`), " ", el("b", {}, fmtClock(a.t)), " ", a.reason || "", " · ",
      el("span", { class: "muted" }, t(`status_${a.status}`), a.acked_by ? ` ${t("acked_by", { who: a.acked_by })}` : "",
        a.barge_in ? ` · ${t("barge_in_note")}` : "")))) : el("p", { class: "empty" }, t("no_alerts"));
    app.replaceChildren(
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
              metric("m_talk", Object.entries(talk).map(([r, v]) => `${roleName(r)} ${secs(v)}`).join(" · ") || "–"),
              metric("m_ratio", Object.entries(s.talk_ratio || {}).map(([r, v]) => `${roleName(r)} ${pct(v)}`).join(" · ") || "–"),
              metric("m_silence", secs(s.silence_s)),
              metric("m_overtalk", secs(s.overtalk_s)),
              metric("m_segments", s.final_segments ?? "–"),
              metric("m_escalations", s.escalations ?? c.escalations ?? 0),
              metric("m_peak", s.peak ? el("span", {}, gradeBadge(s.peak.grade), ` ${Math.round(s.peak.index ?? 0)} · ${fmtClock(s.peak.t)}`) : "–"),
              metric("m_end", s.end_reason || "–")),
            el("h3", {}, t("m_shares")), shares(s.grade_shares)),
          el("section", { class: "panel" }, el("h2", {}, t("call_alerts")), alertsEl),
          el("section", { class: "panel" }, el("h2", {}, t("playback")), el("p", { class: "muted", "data-testid": "no-audio" }, t("no_audio"))))));
    chart = timelineChart(chartEl, emotion, alerts, s.duration_s ?? c.duration_s);
  };
  lastRender = render;
  render();
}

function backLink() {
  return el("p", {}, el("a", { href: "/qa", onclick: (e) => { e.preventDefault(); navigate(""); } }, "← ", t("back")));
}

route();
