// Operations: KPIs over time (GET /v1/kpis) in the viewer's time zone, a chart per KPI, a table with CSV export,
// and the ops.anomaly alerts raised on them (GET /v1/anomalies).  Definitions and units: docs/ops.md.
import { api, boot, el, fmtClock, fmtShare, onLangChange, t } from "./common.js";

boot("ops_title");
const app = document.getElementById("app");

// KPI key -> how a value is shown (its unit is in the column header)
const PCT = (v) => fmtShare(v);
const KPIS = {
  calls: (v) => String(v),
  handle_time_s: (v) => fmtClock(v),
  escalation_rate: PCT,
  alerts: (v) => String(v),
  barge_in_rate: PCT,
  ack_time_s: (v) => `${v.toFixed(1)} s`,
  angry_call_share: PCT,
  angry_min_per_100_min: (v) => v.toFixed(1),
  peak_index: (v) => v.toFixed(1),
  customer_talk_share: PCT,
  silence_share: PCT,
  overtalk_s_per_call: (v) => `${v.toFixed(1)} s`,
  interruptions_per_call: (v) => v.toFixed(2),
  agent_speech_rate: (v) => `${Math.round(v)}/min`,
};
const TILES = ["calls", "handle_time_s", "escalation_rate", "angry_call_share", "angry_min_per_100_min", "peak_index",
  "barge_in_rate", "ack_time_s"];
const GROUPS = ["queue", "agent", "language", "direction"];
const MAX_TICKS = 12;
const COLORS = ["#1d4ed8", "#c62828", "#1a7f37", "#b35c00", "#7c3aed", "#0891b2", "#be185d", "#4b5563"];
const fmt = (key, v) => (v == null ? "–" : KPIS[key](v));

let chart = null;
let last = null; // {report, anomalies, f}

function params() { return new URL(location.href).searchParams; }

function viewerZone() { return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; }

/** YYYY-MM-DD of today in `tz`, `days` days back. */
function dayIn(tz, days = 0) {
  const today = new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date());
  const d = new Date(`${today}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() - days);
  return d.toISOString().slice(0, 10);
}

function filters() {
  const p = params();
  const tz = p.get("tz") || viewerZone();
  const f = { tz, from: p.get("from") || dayIn(tz, 6), to: p.get("to") || dayIn(tz), bucket: p.get("bucket") || "day",
    group_by: p.get("group_by") || "", kpi: p.get("kpi") || "angry_call_share" };
  for (const g of GROUPS) f[g] = p.get(g) || "";
  return f;
}

/** A bucket's start as the viewer reads it: its label is ISO 8601 in the report's time zone. */
function bucketName(label, bucket) {
  if (bucket === "hour") return label.slice(0, 16).replace("T", " ");
  return bucket === "week" ? t("ops_week_of", { d: label.slice(0, 10) }) : label.slice(0, 10);
}

/** Unix time `ts` in `tz` as numbers, the table's way: {y, m, d, hm} ("2026", "11", "23", "09:00"). */
function localParts(ts, tz) {
  const p = Object.fromEntries(new Intl.DateTimeFormat("en-GB", { timeZone: tz, year: "numeric", month: "2-digit",
    day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).formatToParts(new Date(ts * 1000)).map((x) => [x.type, x.value]));
  return { y: p.year, m: p.month, d: p.day, hm: `${p.hour}:${p.minute}` };
}

/** A chart tick: MM-DD, with HH:mm for hours. */
function tick(ts, tz, bucket) {
  const p = localParts(ts, tz);
  return bucket === "hour" ? `${p.m}-${p.d} ${p.hm}` : `${p.m}-${p.d}`;
}

/** A moment in `tz`: YYYY-MM-DD HH:mm. */
function localTime(ts, tz) {
  const p = localParts(ts, tz);
  return `${p.y}-${p.m}-${p.d} ${p.hm}`;
}

/** The name of the bucket starting at Unix time `start` of the report (the chart's cursor). */
function bucketLabel(report, start) {
  const b = report.series[0]?.buckets.find((x) => x.start === start);
  return b ? bucketName(b.label, report.bucket) : "–";
}

function groupName(g, groupBy) { return g == null ? (groupBy ? t("ops_none") : t("ops_all")) : g; }

function select(name, options, value) {
  return el("select", { name, id: `f-${name}` }, options.map(([v, label]) => el("option", { value: v, selected: v === value }, label)));
}

function form(f) {
  const node = el("form", { class: "filters", "data-testid": "ops-filters" },
    el("label", {}, t("f_from"), el("input", { type: "date", name: "from", value: f.from })),
    el("label", {}, t("f_to"), el("input", { type: "date", name: "to", value: f.to })),
    el("label", {}, t("ops_bucket"), select("bucket", ["hour", "day", "week"].map((b) => [b, t(`ops_${b}`)]), f.bucket)),
    el("label", {}, t("ops_group_by"), select("group_by", [["", t("ops_no_group")], ...GROUPS.map((g) => [g, t(`ops_g_${g}`)])], f.group_by)),
    ...GROUPS.map((g) => el("label", {}, t(`ops_g_${g}`), el("input", { type: "text", name: g, value: f[g], size: 8 }))),
    el("label", {}, t("ops_tz"), el("input", { type: "text", name: "tz", value: f.tz, size: 16 })),
    el("button", { type: "submit", class: "primary" }, t("apply")));
  node.onsubmit = (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(node)) if (v && !(k === "tz" && v === viewerZone())) q.set(k, v);
    if (f.kpi !== "angry_call_share") q.set("kpi", f.kpi);
    history.pushState(null, "", `/ops?${q}`);
    load();
  };
  return node;
}

function tiles(total) {
  return el("div", { class: "metrics", "data-testid": "ops-totals" }, TILES.map((k) =>
    el("div", { class: "metric", "data-kpi": k }, el("div", { class: "k" }, t(`kpi_${k}`)), el("div", { class: "v" }, fmt(k, total[k])))));
}

function table(report) {
  const keys = Object.keys(KPIS);
  const rows = report.series.flatMap((s) => s.buckets.map((b) => el("tr", { "data-bucket": b.label, "data-group": s.group ?? "" },
    el("td", {}, bucketName(b.label, report.bucket)),
    report.group_by ? el("td", {}, groupName(s.group, report.group_by)) : null,
    keys.map((k) => el("td", { class: "num", "data-kpi": k }, fmt(k, b[k]))))));
  return el("table", { class: "grid", "data-testid": "ops-table" },
    el("thead", {}, el("tr", {}, el("th", {}, t("ops_bucket")), report.group_by ? el("th", {}, t(`ops_g_${report.group_by}`)) : null,
      keys.map((k) => el("th", { title: report.units[k] }, t(`kpi_${k}`))))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: keys.length + 2, class: "empty" }, t("ops_no_calls")))));
}

/** The table as CSV: raw numbers (shares 0-1, seconds), bucket starts as ISO 8601 with the offset, units in row 2. */
export function csv(report) {
  const keys = Object.keys(KPIS);
  const quote = (v) => (v == null ? "" : /[",\n]/.test(String(v)) ? `"${String(v).replaceAll('"', '""')}"` : String(v));
  const lines = [["bucket_start", "group", ...keys], ["", report.group_by || "", ...keys.map((k) => report.units[k])]];
  for (const s of report.series) for (const b of s.buckets) lines.push([b.label, s.group ?? "", ...keys.map((k) => b[k])]);
  return lines.map((l) => l.map(quote).join(",")).join("\r\n") + "\r\n";
}

function download(report, f) {
  const blob = new Blob(["\ufeff" + csv(report)], { type: "text/csv;charset=utf-8" });
  const a = el("a", { href: URL.createObjectURL(blob), download: `kpis_${f.from}_${f.to}_${f.bucket}.csv` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function drawChart(node, report, kpi) {
  chart?.destroy();
  const xs = report.series[0]?.buckets.map((b) => b.start) ?? [];
  const tz = report.tz;
  const step = Math.max(1, Math.ceil(xs.length / MAX_TICKS)); // ticks on bucket starts, at most MAX_TICKS of them
  const series = report.series.map((s, i) => ({ label: groupName(s.group, report.group_by), stroke: COLORS[i % COLORS.length],
    width: 2, spanGaps: false, points: { show: true, size: 5 }, value: (u, v) => fmt(kpi, v) }));
  const opts = {
    width: Math.max(320, node.clientWidth || 900), height: 260, tzDate: (ts) => window.uPlot.tzDate(new Date(ts * 1000), tz),
    scales: { x: { time: true } },
    axes: [{ grid: { stroke: "#eee" }, splits: () => xs.filter((_, i) => i % step === 0),
      values: (u, ticks) => ticks.map((ts) => tick(ts, tz, report.bucket)) },
      { grid: { stroke: "#eee" }, size: 60, values: (u, vals) => vals.map((v) => fmt(kpi, v)) }],
    series: [{ label: t("ops_bucket"), value: (u, v) => (v == null ? "–" : bucketLabel(report, v)) }, ...series],
  };
  const plot = new window.uPlot(opts, [xs, ...report.series.map((s) => s.buckets.map((b) => b[kpi]))], node);
  const ro = new ResizeObserver(() => plot.setSize({ width: Math.max(320, node.clientWidth || 900), height: 260 }));
  ro.observe(node);
  chart = { destroy: () => { ro.disconnect(); plot.destroy(); } };
}

function anomalyList(rows, tz) {
  if (!rows.length) return el("p", { class: "empty", "data-testid": "ops-anomalies" }, t("ops_no_anomalies"));
  return el("table", { class: "grid", "data-testid": "ops-anomalies" },
    el("thead", {}, el("tr", {}, ["ops_a_raised", "ops_a_kpi", "ops_a_scope", "ops_a_hour", "ops_a_value", "ops_a_baseline", "ops_a_calls"]
      .map((k) => el("th", {}, t(k))))),
    el("tbody", {}, rows.map((a) => el("tr", { "data-anomaly": a.alert_id },
      el("td", {}, localTime(a.raised_at, tz)), el("td", {}, t(`kpi_${a.kpi}`)),
      el("td", {}, `${t(`ops_g_${a.scope}`)} ${a.scope_value}`), el("td", {}, localTime(a.window_start, tz)),
      el("td", { class: "num" }, PCT(a.figures.value)),
      el("td", { class: "num" }, `${PCT(a.figures.baseline_value)} (${t("ops_weeks", { n: a.figures.baseline_weeks })})`),
      el("td", { class: "num" }, `${a.figures.calls} / ${a.figures.baseline_calls}`)))));
}

function render() {
  if (!last) return;
  const { report, anomalies, f } = last;
  const chartNode = el("div", { class: "timeline", "data-testid": "ops-chart" });
  const pick = select("kpi", Object.keys(KPIS).map((k) => [k, t(`kpi_${k}`)]), f.kpi);
  pick.onchange = () => {
    f.kpi = pick.value;
    const u = new URL(location.href);
    u.searchParams.set("kpi", f.kpi);
    history.replaceState(null, "", u);
    drawChart(chartNode, report, f.kpi);
  };
  const exportBtn = el("button", { type: "button", class: "secondary", "data-testid": "ops-csv", onclick: () => download(report, f) }, t("ops_csv"));
  app.replaceChildren(
    el("section", { class: "panel" }, form(f), el("p", { class: "muted", "data-testid": "ops-zone" }, t("ops_zone_note", { tz: report.tz })),
      tiles(report.total)),
    el("section", { class: "panel" }, el("div", { class: "row" }, el("h2", {}, t("ops_chart")), pick), chartNode),
    el("section", { class: "panel" }, el("div", { class: "row" }, el("h2", {}, t("ops_table")), el("span", { class: "spacer" }), exportBtn),
      table(report)),
    el("section", { class: "panel" }, el("h2", {}, t("ops_anomalies")), anomalyList(anomalies, report.tz)));
  drawChart(chartNode, report, f.kpi);
}

async function load() {
  const f = filters();
  app.replaceChildren(el("p", { class: "empty" }, t("loading")));
  const q = new URLSearchParams({ from: f.from, to: f.to, tz: f.tz, bucket: f.bucket });
  if (f.group_by) q.set("group_by", f.group_by);
  for (const g of GROUPS) if (f[g]) q.set(g, f[g]);
  try {
    const [report, anomalies] = await Promise.all([api(`/v1/kpis?${q}`), api("/v1/anomalies?hours=168")]);
    last = { report, anomalies, f };
  } catch (e) {
    last = null;
    chart?.destroy();
    chart = null;
    app.replaceChildren(el("section", { class: "panel" }, form(f), el("p", { class: "error", "data-testid": "ops-error" },
      t("error", { msg: typeof e.detail === "string" ? e.detail : e.message }))));
    return;
  }
  render();
}

window.addEventListener("popstate", load);
onLangChange(render);
load();
