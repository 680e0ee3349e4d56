// Thin wrappers over uPlot (vendored: /static/vendor/uPlot.iife.min.js, global `uPlot`).
import { GRADE_COLOR, fmtClock, t } from "./common.js";

const U = () => window.uPlot;

function widthOf(node, fallback = 300) {
  return Math.max(120, Math.floor(node.clientWidth || node.getBoundingClientRect().width || fallback));
}

/** A small index-over-time line (0-100) with calm/anxious/angry bands; update with set(xs, ys). */
export class Sparkline {
  constructor(node, { height = 70 } = {}) {
    this.node = node;
    this.xs = [];
    this.ys = [];
    const opts = {
      width: widthOf(node), height,
      legend: { show: false }, cursor: { show: false }, select: { show: false },
      scales: { x: { time: false }, y: { range: [0, 100] } },
      axes: [{ show: false }, { show: false }],
      series: [{}, { stroke: "#1f2937", width: 2, fill: "rgba(31,41,55,0.08)", points: { show: false }, spanGaps: true }],
      hooks: { drawClear: [(u) => bands(u)] },
    };
    this.plot = new (U())(opts, [[], []], node);
    this.ro = new ResizeObserver(() => this.plot.setSize({ width: widthOf(node), height }));
    this.ro.observe(node);
  }

  push(x, y) {
    if (this.xs.length && x < this.xs[this.xs.length - 1]) return;
    this.xs.push(x);
    this.ys.push(y);
    this.plot.setData([this.xs, this.ys]);
  }

  destroy() { this.ro.disconnect(); this.plot.destroy(); }
}

function bands(u) {
  // background bands: calm (<40), anxious (40-70), angry (>70) on the index scale, faint
  const { ctx } = u;
  const { left, top, width, height } = u.bbox;
  const y = (v) => u.valToPos(v, "y", true);
  ctx.save();
  for (const [lo, hi, c] of [[0, 40, "rgba(26,127,55,0.07)"], [40, 70, "rgba(179,92,0,0.08)"], [70, 100, "rgba(198,40,40,0.08)"]]) {
    ctx.fillStyle = c;
    ctx.fillRect(left, y(hi), width, y(lo) - y(hi));
  }
  ctx.restore();
  void top; void height;
}

/**
 * QA timeline: both speakers' emotion index over call time, escalation alerts as red vertical lines.
 * emotion: [{t, channel, index, grade}], alerts: [{t, alert_id, reason}]
 */
export function timelineChart(node, emotion, alerts, duration, { height = 260 } = {}) {
  const xsSet = new Set(emotion.map((e) => +e.t));
  const xs = [...xsSet].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const cust = new Array(xs.length).fill(null);
  const agent = new Array(xs.length).fill(null);
  for (const e of emotion) (e.channel === "agent" ? agent : cust)[at.get(+e.t)] = e.index;
  if (duration && (!xs.length || xs[xs.length - 1] < duration)) { xs.push(duration); cust.push(null); agent.push(null); }
  const marks = alerts.filter((a) => a.t != null);
  const opts = {
    width: widthOf(node, 800), height,
    scales: { x: { time: false }, y: { range: [0, 100] } },
    axes: [
      { values: (u, vals) => vals.map((v) => fmtClock(v)), grid: { stroke: "#eee" } },
      { values: (u, vals) => vals.map((v) => String(v)), grid: { stroke: "#eee" }, size: 40 },
    ],
    series: [
      { label: "t", value: (u, v) => (v == null ? "–" : fmtClock(v)) },
      { label: t("customer"), stroke: "#c62828", width: 2.5, spanGaps: true, points: { show: true, size: 4 } },
      { label: t("agent"), stroke: "#1d4ed8", width: 2, dash: [6, 4], spanGaps: true, points: { show: true, size: 3 } },
    ],
    hooks: {
      drawClear: [(u) => bands(u)],
      draw: [(u) => {
        const { ctx } = u;
        const { top, height: h } = u.bbox;
        ctx.save();
        ctx.strokeStyle = GRADE_COLOR.angry;
        ctx.fillStyle = GRADE_COLOR.angry;
        ctx.lineWidth = 2 * devicePixelRatio;
        ctx.setLineDash([5 * devicePixelRatio, 4 * devicePixelRatio]);
        ctx.font = `${12 * devicePixelRatio}px sans-serif`;
        marks.forEach((a, i) => {
          const x = u.valToPos(a.t, "x", true);
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + h);
          ctx.stroke();
          ctx.fillText(`⚠ ${i + 1}`, x + 4 * devicePixelRatio, top + 14 * devicePixelRatio);
        });
        ctx.restore();
      }],
    },
  };
  const data = [xs, cust, agent];
  if (!agent.some((v) => v != null)) { opts.series.pop(); data.pop(); } // agent channel not scored
  const plot = new (U())(opts, data, node);
  const ro = new ResizeObserver(() => plot.setSize({ width: widthOf(node, 800), height }));
  ro.observe(node);
  return { plot, destroy: () => { ro.disconnect(); plot.destroy(); } };
}
