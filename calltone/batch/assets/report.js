/* calltone offline QA report: the emotion timeline on call pages (vendored uPlot, global `uPlot`)
 * and column sorting on the index.  A classic script (pages open from file://, no ES modules). */
(function () {
  "use strict";

  var GRADE_COLOR = { calm: "#1a7f37", anxious: "#b35c00", angry: "#c62828" };
  var LINE = { customer: "#111827", agent: "#1d4ed8" };
  var BANDS = [[0, 40, "rgba(26,127,55,0.07)"], [40, 70, "rgba(245,158,11,0.12)"], [70, 100, "rgba(198,40,40,0.08)"]];
  var HEIGHT = 260;

  function clock(s) {
    if (s == null || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + String(sec).padStart(2, "0");
  }

  function num(v) { return typeof v === "number" && isFinite(v); }

  function readReport() {
    var el = document.getElementById("report-data");
    if (!el) return null;
    try { return JSON.parse(el.textContent || "null"); } catch (e) { console.warn("calltone: bad report data", e); return null; }
  }

  /* Scroll the transcript to the segment at (or nearest to) call time t and flash it. */
  function seek(t) {
    var best = null, bestD = Infinity;
    document.querySelectorAll("tr.seg").forEach(function (row) {
      var s = parseFloat(row.dataset.start), e = parseFloat(row.dataset.end);
      var d = t < s ? s - t : t > e ? t - e : 0;
      if (d < bestD) { best = row; bestD = d; }
    });
    if (!best) return;
    best.scrollIntoView({ block: "center", behavior: "smooth" });
    best.classList.remove("flash");
    void best.offsetWidth; // restart the animation
    best.classList.add("flash");
  }

  function widthOf(node) { return Math.max(200, Math.floor(node.clientWidth || 800)); }

  function drawBands(u) {
    var ctx = u.ctx, b = u.bbox;
    ctx.save();
    BANDS.forEach(function (band) {
      var y1 = u.valToPos(band[1], "y", true), y0 = u.valToPos(band[0], "y", true);
      ctx.fillStyle = band[2];
      ctx.fillRect(b.left, y1, b.width, y0 - y1);
    });
    ctx.restore();
  }

  function timeline(node, report) {
    var points = (Array.isArray(report.timeline) ? report.timeline : [])
      .filter(function (p) { return p && num(p.t) && num(p.index); });
    var alerts = (Array.isArray(report.alerts) ? report.alerts : []).filter(function (a) { return a && num(a.t); });
    var chans = [];
    points.forEach(function (p) { if (chans.indexOf(p.channel) < 0) chans.push(p.channel); });
    chans.sort(function (a, b) { return (a !== "customer") - (b !== "customer") || (a !== "agent") - (b !== "agent") || (a < b ? -1 : 1); });

    var xs = Array.from(new Set(points.map(function (p) { return p.t; }))).sort(function (a, b) { return a - b; });
    var at = new Map(xs.map(function (x, i) { return [x, i]; }));
    var ys = chans.map(function () { return xs.map(function () { return null; }); });
    var grades = chans.map(function () { return xs.map(function () { return null; }); });
    points.forEach(function (p) {
      var c = chans.indexOf(p.channel), i = at.get(p.t);
      ys[c][i] = p.index;
      grades[c][i] = p.grade;
    });
    var end = Math.max(num(report.duration_s) ? report.duration_s : 0, xs.length ? xs[xs.length - 1] : 0,
      Math.max.apply(null, alerts.map(function (a) { return a.t; }).concat([0]))) || 1;

    var dpr = window.devicePixelRatio || 1;
    var series = [{ label: "time", value: function (u, v) { return clock(v); } }].concat(chans.map(function (ch) {
      return {
        label: ch, stroke: LINE[ch] || "#7c3aed", width: ch === "customer" ? 2 : 1.5, dash: ch === "customer" ? undefined : [6, 4],
        spanGaps: true, points: { show: false },
        value: function (u, v) { return v == null ? "–" : v.toFixed(1); },
      };
    }));

    function drawPoints(u) {
      var ctx = u.ctx;
      ctx.save();
      ctx.lineWidth = 1.5 * dpr;
      ctx.strokeStyle = "#fff";
      ys.forEach(function (col, c) {
        if (!u.series[c + 1] || !u.series[c + 1].show) return;
        col.forEach(function (v, i) {
          if (v == null) return;
          ctx.beginPath();
          ctx.arc(u.valToPos(xs[i], "x", true), u.valToPos(v, "y", true), (chans[c] === "customer" ? 4 : 3.2) * dpr, 0, 2 * Math.PI);
          ctx.fillStyle = GRADE_COLOR[grades[c][i]] || "#6b7280";
          ctx.fill();
          ctx.stroke();
        });
      });
      ctx.restore();
    }

    function drawAlerts(u) {
      var ctx = u.ctx, b = u.bbox;
      ctx.save();
      ctx.font = "600 " + 12 * dpr + "px system-ui, sans-serif";
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      alerts.forEach(function (a, i) {
        var x = u.valToPos(a.t, "x", true);
        if (x < b.left - 1 || x > b.left + b.width + 1) return;
        ctx.strokeStyle = GRADE_COLOR.angry;
        ctx.lineWidth = 2 * dpr;
        ctx.setLineDash([5 * dpr, 4 * dpr]);
        ctx.beginPath();
        ctx.moveTo(x, b.top);
        ctx.lineTo(x, b.top + b.height);
        ctx.stroke();
        var label = "⚠ " + (i + 1) + " " + clock(a.t) + (a.channel && a.channel !== "customer" ? " " + a.channel : "");
        var w = ctx.measureText(label).width, pad = 4 * dpr;
        var lx = x + pad + w + 2 * pad > b.left + b.width ? x - w - 3 * pad : x + pad;
        var ly = b.top + 4 * dpr + (i % 2) * 18 * dpr;
        ctx.fillStyle = "rgba(255,255,255,0.9)";
        ctx.fillRect(lx, ly, w + 2 * pad, 16 * dpr);
        ctx.fillStyle = GRADE_COLOR.angry;
        ctx.fillText(label, lx + pad, ly + 2 * dpr);
      });
      ctx.restore();
    }

    var opts = {
      width: widthOf(node), height: HEIGHT,
      scales: { x: { time: false, range: [0, end] }, y: { range: [0, 100] } },
      axes: [
        { values: function (u, vals) { return vals.map(clock); }, grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" } },
        { values: function (u, vals) { return vals.map(String); }, grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" }, size: 40 },
      ],
      series: series,
      cursor: { drag: { x: false, y: false } },
      hooks: { drawClear: [drawBands], draw: [drawPoints, drawAlerts] },
    };
    var plot = new window.uPlot(opts, [xs].concat(ys), node);
    plot.over.addEventListener("click", function () {
      if (plot.cursor.left != null && plot.cursor.left >= 0) seek(plot.posToVal(plot.cursor.left, "x"));
    });
    plot.over.style.cursor = "pointer";
    if (!points.length) {
      var msg = document.createElement("div");
      msg.className = "nodata";
      msg.textContent = "No emotion scores in this call.";
      node.appendChild(msg);
    }
    if (window.ResizeObserver) {
      new ResizeObserver(function () {
        var w = widthOf(node);
        if (w !== plot.width) plot.setSize({ width: w, height: HEIGHT });
      }).observe(node);
    }
    return plot;
  }

  function callPage() {
    var node = document.getElementById("timeline");
    if (!node) return;
    var report = readReport() || {};
    if (typeof window.uPlot !== "function") {
      node.textContent = "Chart unavailable (assets/uPlot.iife.min.js did not load).";
      return;
    }
    try {
      timeline(node, report);
      node.classList.add("rendered");
    } catch (e) {
      console.error("calltone: timeline failed", e);
      node.textContent = "Chart unavailable: " + e;
    }
  }

  /* Index: click a heading of table.sortable to sort by its cells' data-v (numeric for data-sort="num"). */
  function sortable(table) {
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, col) {
      if (!th.dataset.sort) return;
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.from(body.rows).filter(function (r) { return r.cells.length > col; });
        var key = function (r) {
          var c = r.cells[col], v = c.dataset.v != null ? c.dataset.v : c.textContent.trim();
          return th.dataset.sort === "num" ? (parseFloat(v) || 0) : v.toLowerCase();
        };
        rows.sort(function (a, b) {
          var ka = key(a), kb = key(b);
          return (ka < kb ? -1 : ka > kb ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  function init() {
    callPage();
    document.querySelectorAll("table.sortable").forEach(sortable);
    document.addEventListener("click", function (e) {
      var b = e.target.closest && e.target.closest("[data-seek]");
      if (b) seek(parseFloat(b.dataset.seek));
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
