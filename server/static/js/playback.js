// Playing a call back on /qa: an <audio> element on GET /v1/calls/{id}/playback (range requests, a ticket from
// POST /v1/calls/{id}/playback-ticket since <audio> sends no bearer header), stereo or one speaker; the transcript
// line and a playhead on the emotion chart follow the audio; a click on a line or on the chart seeks there.
import { HttpError, api, el, fill, roleName, t } from "./common.js";

const resumeAt = new Map(); // call id -> seconds, so a re-render (language switch) does not restart the audio

export class Playback {
  /**
   * @param {Element} panel    the recording panel (its [data-testid=no-audio] paragraph is replaced by the player)
   * @param {string} callId
   * @param {{start:number,end:number}[]} segments  transcript segments, in order
   * @param {Element[]} lines  their line elements, in the same order
   * @param {{plot: object}|null} chart  the timeline chart (timelineChart's result)
   */
  constructor(panel, callId, segments, lines, chart) {
    Object.assign(this, { panel, callId, segments, lines, chart, current: -1, audio: null, kind: "stereo", ticket: null });
    this.playhead = null;
  }

  async start() {
    const slot = this.panel.querySelector("[data-testid=no-audio]");
    let offer;
    try {
      offer = await api(`/v1/calls/${encodeURIComponent(this.callId)}/playback-ticket`, { method: "POST" });
    } catch (e) {
      if (slot && e instanceof HttpError) slot.textContent = e.status === 409 ? t("audio_live") : t("no_audio");
      return this;
    }
    this.ticket = offer.ticket;
    this.kind = offer.kinds[0];
    this.audio = el("audio", { controls: true, preload: "metadata", "data-testid": "player", class: "player" });
    this.audio.addEventListener("timeupdate", () => this.follow(this.audio.currentTime));
    this.audio.addEventListener("seeked", () => this.follow(this.audio.currentTime));
    this.audio.addEventListener("error", () => this.renew());
    this.audio.addEventListener("loadedmetadata", () => {
      const at = resumeAt.get(this.callId);
      if (at) this.audio.currentTime = at;
    }, { once: true });
    const kinds = el("select", { "data-testid": "audio-kind", "aria-label": t("play_kind"), onchange: (e) => this.switchTo(e.target.value) },
      offer.kinds.map((k) => el("option", { value: k }, k === "stereo" ? t("play_stereo") : roleName(k))));
    const player = el("div", { class: "playback" }, this.audio,
      el("label", { class: "row" }, t("play_kind"), " ", kinds),
      el("p", { class: "muted" }, t("audio_logged")));
    if (slot) slot.replaceWith(player); else this.panel.append(player);
    this.audio.src = this.url();
    this.wire();
    return this;
  }

  url() {
    const q = new URLSearchParams({ kind: this.kind, ticket: this.ticket });
    return `/v1/calls/${encodeURIComponent(this.callId)}/playback?${q}`;
  }

  /** Lines and the chart seek on click (and a line on Enter). */
  wire() {
    this.lines.forEach((line, i) => {
      line.classList.add("seekable");
      line.tabIndex = 0;
      line.title = t("seek_here");
      line.addEventListener("click", () => this.seek(this.segments[i].start));
      line.addEventListener("keydown", (e) => { if (e.key === "Enter") this.seek(this.segments[i].start); });
    });
    const plot = this.chart?.plot;
    if (!plot) return;
    this.playhead = el("div", { class: "playhead", "data-testid": "playhead", hidden: true });
    plot.over.append(this.playhead);
    plot.over.classList.add("seekable");
    plot.over.addEventListener("click", (e) => this.seek(Math.max(0, plot.posToVal(e.offsetX, "x"))));
  }

  seek(seconds) {
    if (!this.audio) return;
    this.audio.currentTime = seconds;
    this.follow(seconds);
  }

  /** Highlight the line being heard (the last one started at or before `seconds`) and move the playhead. */
  follow(seconds) {
    resumeAt.set(this.callId, seconds);
    let i = -1;
    for (let k = 0; k < this.segments.length && this.segments[k].start <= seconds + 0.05; k++) i = k;
    if (i !== this.current) {
      this.lines[this.current]?.classList.remove("playing");
      this.lines[this.current]?.removeAttribute("aria-current");
      this.current = i;
      const line = this.lines[i];
      if (line) {
        line.classList.add("playing");
        line.setAttribute("aria-current", "true");
        if (!this.audio.paused) line.scrollIntoView({ block: "nearest" });
      }
    }
    const plot = this.chart?.plot;
    if (plot && this.playhead) {
      this.playhead.hidden = false;
      this.playhead.style.left = `${plot.valToPos(seconds, "x")}px`;
      this.playhead.dataset.t = seconds.toFixed(2);
    }
  }

  async switchTo(kind) {
    const at = this.audio.currentTime;
    const playing = !this.audio.paused;
    this.kind = kind;
    this.audio.src = this.url();
    this.audio.addEventListener("loadedmetadata", () => {
      this.audio.currentTime = at;
      if (playing) this.audio.play().catch(() => {});
    }, { once: true });
  }

  /** The ticket ran out (or the network failed): a new ticket, same place. */
  async renew() {
    if (this.renewing || !this.audio) return;
    this.renewing = true;
    try {
      const offer = await api(`/v1/calls/${encodeURIComponent(this.callId)}/playback-ticket`, { method: "POST" });
      this.ticket = offer.ticket;
      await this.switchTo(this.kind);
    } catch (e) {
      fill(this.panel.querySelector(".playback"), el("p", { class: "error" }, t("error", { msg: e.message })));
    } finally {
      setTimeout(() => { this.renewing = false; }, 5000);
    }
  }

  destroy() {
    const audio = this.audio;
    this.audio = null; // its "error" on losing the source must not fetch a new ticket
    audio?.pause();
    audio?.removeAttribute("src");
  }
}
