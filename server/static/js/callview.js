// The live view of one call, used by the agent desktop and by the supervisor's "follow call".
import { CallFeed, GRADES, api, el, fill, fmtClock, fmtIndex, fmtTrend, gradeBadge, gradeIcon, lang, onLangChange, reasonText, roleName,
  t } from "./common.js";
import { cueLabel, unitLabel } from "./i18n.js";
import { Sparkline } from "./charts.js";

const ACK_POLL_MS = 3000;

export class CallView {
  /** root: an empty element; opts.onEnded(ev) after call.ended. */
  constructor(root, callId, opts = {}) {
    this.root = root;
    this.callId = callId;
    this.opts = opts;
    this.state = {
      status: "connecting", info: null, grade: null, emotion: null, guidance: null, alerts: new Map(),
      lastT: 0, ended: null,
    };
    this.finalEnd = { customer: -1, agent: -1 };
    this.partials = new Map(); // channel -> element
    this.build();
    this.feed = new CallFeed(callId, (ev) => this.handle(ev), (s) => this.setStatus(s));
    this.unlang = () => this.renderAll();
    onLangChange(this.unlang);
  }

  start() {
    api(`/v1/calls/${encodeURIComponent(this.callId)}`).then((info) => {
      this.state.info = info;
      for (const a of info.alerts || []) this.mergeAlert(a);
      this.renderHead();
      this.renderNotices();
    }).catch(() => {});
    this.feed.start();
    this.tick = setInterval(() => this.renderClock(), 1000);
    this.poll = setInterval(() => this.pollAlerts(), ACK_POLL_MS);
    return this;
  }

  destroy() {
    this.feed.stop();
    clearInterval(this.tick);
    clearInterval(this.poll);
    this.spark?.destroy();
    this.root.replaceChildren();
  }

  // ---------------------------------------------------------------- layout

  build() {
    const $ = (cls, ...kids) => el("div", { class: cls }, ...kids);
    this.headEl = $("callhead");
    this.noticesEl = el("div", { class: "notices", "aria-live": "assertive" });
    this.gradeEl = el("section", { class: "grade-card grade-unknown", "data-testid": "grade", "aria-live": "polite" });
    this.sparkEl = $("spark");
    this.indexEl = $("index-row");
    this.cuesEl = el("section", { class: "panel cues", "data-testid": "cues" });
    this.guideEl = el("section", { class: "panel guidance", "data-testid": "guidance" });
    this.lines = el("div", { class: "lines", "data-testid": "transcript" });
    this.transcriptEl = el("section", { class: "panel transcript" }, el("h2", { "data-i18n": "transcript" }, t("transcript")), this.lines);
    const moodPanel = el("section", { class: "panel mood" }, this.gradeEl, this.indexEl, this.sparkEl);
    this.root.replaceChildren(
      this.headEl, this.noticesEl,
      $("callgrid", this.transcriptEl, $("side", moodPanel, this.cuesEl, this.guideEl)));
    this.root.classList.add("callview");
    this.spark = new Sparkline(this.sparkEl);
    this.renderAll();
  }

  renderAll() {
    this.renderHead();
    this.renderGrade();
    this.renderCues();
    this.renderGuidance();
    this.renderNotices();
    this.transcriptEl.querySelector("h2").textContent = t("transcript");
    for (const who of this.lines.querySelectorAll(".who")) who.textContent = roleName(who.dataset.role);
    this.renderEmpty();
  }

  renderEmpty() {
    const empty = this.lines.querySelector(".empty");
    if (this.lines.querySelector(".line")) empty?.remove();
    else if (!empty) this.lines.append(el("p", { class: "empty" }, t("no_transcript")));
    else empty.textContent = t("no_transcript");
  }

  setStatus(s) {
    this.state.status = s;
    this.renderHead();
  }

  renderHead() {
    const info = this.state.info || {};
    const st = this.state.status;
    const label = { connecting: t("connecting"), live: t("live"), reconnecting: t("reconnecting"), ended: t("ended"),
      not_found: t("not_found"), forbidden: t("forbidden") }[st] || st;
    fill(this.headEl,
      el("span", { class: `conn conn-${st}`, "data-testid": "conn", "data-state": st }, el("span", { class: "dot" }), label),
      el("span", { class: "kv" }, el("b", {}, t("call")), " ", el("code", {}, this.callId)),
      info.agent_id ? el("span", { class: "kv" }, el("b", {}, t("agent")), " ", info.agent_id) : null,
      info.language ? el("span", { class: "kv" }, el("b", {}, t("language")), " ", info.language) : null,
      el("span", { class: "kv" }, el("b", {}, t("duration")), " ", el("span", { class: "clock" }, this.clockText())));
  }

  clockText() {
    if (this.state.ended) return fmtClock(this.state.ended.summary?.duration_s ?? this.state.lastT);
    const started = this.state.info?.started_at;
    if (started && this.state.status !== "not_found") return fmtClock(Date.now() / 1000 - started);
    return fmtClock(this.state.lastT);
  }

  renderClock() {
    const c = this.headEl.querySelector(".clock");
    if (c) c.textContent = this.clockText();
  }

  // ---------------------------------------------------------------- events

  handle(ev) {
    if (ev.t != null) this.state.lastT = Math.max(this.state.lastT, ev.t);
    switch (ev.type) {
      case "call.started":
        this.state.info = { ...(this.state.info || {}), agent_id: ev.agent_id ?? this.state.info?.agent_id,
          language: ev.language, started_at: this.state.info?.started_at ?? (ev.server_time ? ev.server_time - ev.t : null) };
        this.renderHead();
        break;
      case "transcript.partial": this.partial(ev); break;
      case "transcript.final": this.final(ev); break;
      case "emotion.update": this.emotion(ev); break;
      case "guidance":
        if (ev.channel === "customer" || !ev.channel) { this.state.guidance = ev.card; this.renderGuidance(); }
        break;
      case "escalation.raised":
        this.mergeAlert({ alert_id: ev.alert_id, reason: ev.reason, reason_code: ev.reason_code, reason_figures: ev.reason_figures,
          status: "open", t: ev.t, evidence: ev.evidence });
        this.renderNotices();
        this.pollAlerts();
        break;
      case "escalation.cleared":
        this.mergeAlert({ alert_id: ev.alert_id, status: "cleared",
          cleared: { reason: ev.reason, reason_code: ev.reason_code, reason_figures: ev.reason_figures } });
        this.renderNotices();
        break;
      case "call.ended":
        this.state.ended = ev;
        for (const p of this.partials.values()) p.remove();
        this.partials.clear();
        this.renderHead();
        this.renderNotices();
        this.pollAlerts();
        this.opts.onEnded?.(ev);
        break;
      default: break; // unknown types are ignored
    }
  }

  line(ev, partial) {
    const role = ev.channel === "agent" ? "agent" : ev.channel === "customer" ? "customer" : "other";
    const row = el("div", { class: `line ${role}${partial ? " partial" : ""}`, "data-channel": ev.channel, "data-start": ev.start,
      "data-end": ev.end, "data-seq": ev.seq ?? "" },
      el("div", { class: "meta" }, el("span", { class: "who", "data-role": ev.channel }, roleName(ev.channel)),
        el("span", { class: "ts" }, fmtClock(ev.start))),
      el("div", { class: "text" }, ev.text || "…"));
    if (!partial && role === "customer" && this.state.grade) row.querySelector(".meta").append(gradeBadge(this.state.grade));
    return row;
  }

  stickToBottom(fn) {
    const box = this.lines;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
    fn();
    this.renderEmpty();
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  partial(ev) {
    if (ev.end <= (this.finalEnd[ev.channel] ?? -1) + 1e-6) return; // a late partial of an utterance already final
    this.stickToBottom(() => {
      const old = this.partials.get(ev.channel);
      const row = this.line(ev, true);
      if (old) old.replaceWith(row);
      else this.lines.append(row);
      this.partials.set(ev.channel, row);
    });
  }

  final(ev) {
    this.finalEnd[ev.channel] = Math.max(this.finalEnd[ev.channel] ?? -1, ev.end);
    this.stickToBottom(() => {
      this.partials.get(ev.channel)?.remove();
      this.partials.delete(ev.channel);
      const row = this.line(ev, false);
      // keep finals in call-time order (both speakers interleave); partials stay at the end
      const later = [...this.lines.querySelectorAll(".line:not(.partial)")].find((n) => +n.dataset.start > ev.start);
      this.lines.insertBefore(row, later || this.lines.querySelector(".line.partial"));
    });
  }

  emotion(ev) {
    if (ev.channel !== "customer") return;
    // the grade of a whole utterance comes just after its transcript (it is scored once decoded):
    // a line that ended within the last second takes it (as batch reports grade a segment by its end)
    const rows = this.lines.querySelectorAll(".line.customer:not(.partial)");
    for (let i = rows.length - 1; i >= 0; i--) {  // newest first; older lines ended too long ago
      const row = rows[i], end = +row.dataset.end;
      if (end <= ev.t - 1.0) break;
      if (end > ev.t + 0.05) continue;
      const badge = row.querySelector(".meta .badge");
      if (badge) badge.replaceWith(gradeBadge(ev.grade));
      else row.querySelector(".meta").append(gradeBadge(ev.grade));
    }
    this.state.grade = ev.grade;
    this.state.emotion = ev;
    this.spark.push(ev.t, ev.index);
    this.renderGrade();
    this.renderCues();
  }

  // ---------------------------------------------------------------- panels

  renderGrade() {
    const g = GRADES.includes(this.state.grade) ? this.state.grade : "unknown";
    const e = this.state.emotion;
    this.gradeEl.className = `grade-card grade-${g}`;
    this.gradeEl.dataset.grade = g;
    fill(this.gradeEl,
      el("div", { class: "grade-label" }, t("customer_mood")),
      el("div", { class: "grade-main" }, gradeIcon(g, 64), el("span", { class: "grade-word", "data-testid": "grade-word" }, t(g))),
      e ? el("div", { class: "probs" }, ...GRADES.map((k) => el("span", { class: `prob grade-${k}` },
        `${t(k)} ${Math.round((e.probs?.[k] ?? 0) * 100)}%`))) : null);
    if (!e) { this.indexEl.replaceChildren(); return; }
    const tr = fmtTrend(e.trend);
    this.indexEl.replaceChildren(
      el("div", { class: "index" }, el("span", { class: "k" }, t("index")), el("span", { class: "v", "data-testid": "index" }, fmtIndex(e.index)),
        el("span", { class: "of" }, "/100")),
      el("div", { class: `trend ${tr.cls}` }, el("span", { class: "k" }, t("trend")), el("span", { class: "v" }, `${tr.arrow} ${tr.word}`),
        el("span", { class: "of" }, tr.text)));
  }

  renderCues() {
    const cues = (this.state.emotion?.cues || []).slice().sort((a, b) => Math.abs(b.z ?? 0) - Math.abs(a.z ?? 0)).slice(0, 5);
    const items = cues.map((c) => {
      const strength = Math.min(1, Math.abs(c.z ?? (c.text ? 2 : 1)) / 3);
      const detail = c.text ? `“${c.text}”` : t(strengthKey(c.z));
      return el("li", { title: cueFigures(c) },
        el("span", { class: "cue-label" }, plainCue(c)), el("span", { class: "cue-detail" }, detail),
        el("span", { class: "cue-bar" }, el("span", { style: `width:${Math.round(strength * 100)}%` })));
    });
    this.cuesEl.replaceChildren(el("h2", {}, t("why")), items.length ? el("ul", {}, items) : el("p", { class: "empty" }, t("no_cues")));
  }

  renderGuidance() {
    const c = this.state.guidance;
    if (!c) {
      this.guideEl.className = "panel guidance";
      this.guideEl.replaceChildren(el("h2", {}, t("guidance")), el("p", { class: "empty" }, t("no_guidance")));
      return;
    }
    this.guideEl.className = `panel guidance grade-${c.grade}`;
    fill(this.guideEl,
      el("h2", {}, t("guidance"), " ", gradeBadge(c.grade)),
      el("h3", { "data-testid": "guidance-title" }, c.title),
      el("ol", {}, (c.steps || []).map((s) => el("li", {}, s))),
      c.phrases?.length ? el("div", { class: "phrases" }, el("b", {}, t("say")), (c.phrases || []).map((p) => el("q", {}, p))) : null);
  }

  // ---------------------------------------------------------------- alerts and supervisor acks

  mergeAlert(a) {
    const old = this.state.alerts.get(a.alert_id) || {};
    const merged = { ...old, ...Object.fromEntries(Object.entries(a).filter(([, v]) => v != null)) };
    if (old.status === "acked" && a.status === "open") merged.status = "acked";
    this.state.alerts.set(a.alert_id, merged);
  }

  async pollAlerts() {
    // alert.acked is published on the supervisors' alert feed only, so the call view reads the call's alerts
    const pending = [...this.state.alerts.values()].some((a) => !a.acked_by);
    if (!pending || this.polling) return;
    this.polling = true;
    try {
      const info = await api(`/v1/calls/${encodeURIComponent(this.callId)}`);
      for (const a of info.alerts || []) this.mergeAlert(a);
      this.renderNotices();
    } catch { /* transient */ } finally { this.polling = false; }
  }

  renderNotices() {
    const out = [];
    for (const a of this.state.alerts.values()) {
      const who = (a.acked_by || "").replace(/^supervisor:/, "");
      if (a.acked_by) {
        out.push(el("div", { class: `notice ${a.barge_in ? "barge" : "acked"}`, "data-testid": a.barge_in ? "notice-barge" : "notice-acked" },
          el("span", { class: "nicon" }, a.barge_in ? "☎" : "✔"),
          el("b", {}, t(a.barge_in ? "alert_barge" : "alert_acked", { who })),
          a.note ? el("span", {}, ` — ${a.note}`) : null));
      }
      if (a.status === "cleared") {
        const why = [a.cleared ? reasonText(a.cleared) : "", reasonText(a) ? t("raised_for", { reason: reasonText(a) }) : ""];
        out.push(el("div", { class: "notice cleared", "data-testid": "notice-cleared" }, el("span", { class: "nicon" }, "↘"),
          el("b", {}, t("alert_cleared")), el("span", {}, ` — ${why.filter(Boolean).join(" · ")}`)));
      } else if (!a.acked_by) {
        out.push(el("div", { class: "notice raised", "data-testid": "notice-raised", role: "alert" }, el("span", { class: "nicon" }, "⚠"),
          el("b", {}, t("alert_raised")), el("span", {}, ` — ${reasonText(a)}`),
          a.t != null ? el("span", { class: "muted" }, ` (${fmtClock(a.t)})`) : null));
      }
    }
    if (this.state.ended) {
      const s = this.state.ended.summary || {};
      out.push(el("div", { class: "notice ended", "data-testid": "notice-ended" }, el("span", { class: "nicon" }, "■"),
        t("summary_line", { dur: fmtClock(s.duration_s ?? this.state.lastT), grade: s.peak_grade ? t(s.peak_grade) : "–" })));
    }
    this.noticesEl.replaceChildren(...out);
  }
}

/** A cue's label in plain words: a voice feature's label (it has a unit) without the technical name in brackets
 * ("tenser voice (Hammarberg)" -> "tenser voice"); phrase cues as they are. */
function plainCue(c) {
  const label = cueLabel(c.label, lang);
  return c.text || !c.unit ? label : label.replace(/\s*[(（][^()（）]*[)）]/g, "");
}

/** How far from this caller's usual a voice cue is, as words (the σ figure is in the tooltip). */
function strengthKey(z) {
  const a = Math.abs(z ?? 0);
  return a >= 2 ? "cue_strong" : a >= 1 ? "cue_clear" : "cue_slight";
}

function cueFigures(c) {
  if (c.text || c.value == null) return "";
  const unit = unitLabel(c.unit, lang);
  return `${(+c.value).toFixed(1)}${unit ? ` ${unit}` : ""}${c.z != null ? ` · z ${c.z > 0 ? "+" : ""}${c.z.toFixed(1)}` : ""}`;
}
