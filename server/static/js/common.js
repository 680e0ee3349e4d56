// Shared by every page: language, token, REST and websocket helpers, grade badges, formatting.
// The bearer token never goes into a URL the server sees: it arrives in the fragment (#token=, which browsers do
// not send) or the sign-in dialog, lives in sessionStorage, goes out as the Authorization header, and websockets
// open with a single-use ticket (POST /v1/ws-ticket).
import { STRINGS, cueLabel } from "./i18n.js";

// ------------------------------------------------------------------ language

const LANG_KEY = "calltone.lang";

function initialLang() {
  const q = new URL(location.href).searchParams.get("lang");
  if (q === "zh" || q === "en") return q;
  const saved = localStorage.getItem(LANG_KEY);
  if (saved === "zh" || saved === "en") return saved;
  const langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
  return langs.some((l) => /^zh\b/i.test(l)) && /^zh/i.test(langs[0]) ? "zh" : "en";
}

export let lang = initialLang();
const langListeners = [];

export function t(key, vars) {
  let s = (STRINGS[lang] && STRINGS[lang][key]) ?? STRINGS.en[key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}

export function onLangChange(fn) { langListeners.push(fn); }

export function setLang(l) {
  lang = l;
  localStorage.setItem(LANG_KEY, l);
  document.documentElement.lang = l === "zh" ? "zh-CN" : "en";
  applyStatic();
  for (const fn of langListeners) fn(l);
}

/** Fill every [data-i18n] element with its string (and [data-i18n-placeholder]). */
export function applyStatic(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  const title = document.body?.dataset.title;
  if (title) document.title = `${t(title)} · calltone`;
}

// ------------------------------------------------------------------ token

const TOKEN_KEY = "calltone.token";

/** A token given as `#token=...` (the URLs `calltone serve --demo` prints) moves into sessionStorage. */
export function takeTokenFromUrl() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const tok = fragment.get("token");
  if (tok) {
    sessionStorage.setItem(TOKEN_KEY, tok);
    fragment.delete("token");
    const rest = fragment.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : "")); // out of history and screenshots
  }
}

export const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
export function signOut() { sessionStorage.removeItem(TOKEN_KEY); location.reload(); }

export class AuthError extends Error {}
export class HttpError extends Error {
  constructor(status, detail) { super(`${status}: ${detail}`); this.status = status; this.detail = detail; }
}

/** Show the sign-in dialog; resolves once a token was entered (caller retries). */
export function askToken(bad = false) {
  return new Promise((resolve) => {
    let dlg = document.getElementById("token-dialog");
    if (!dlg) {
      dlg = el("div", { id: "token-dialog", class: "modal", role: "dialog", "aria-modal": "true" },
        el("form", { class: "card" },
          el("h2", { "data-i18n": "token_title" }),
          el("p", { "data-i18n": "token_help" }),
          el("p", { class: "error", id: "token-bad", hidden: true, "data-i18n": "token_bad" }),
          el("input", { id: "token-input", type: "password", autocomplete: "off", "data-i18n-placeholder": "token_placeholder" }),
          el("button", { type: "submit", class: "primary", "data-i18n": "token_submit" })));
      document.body.append(dlg);
      applyStatic(dlg);
    }
    dlg.hidden = false;
    dlg.querySelector("#token-bad").hidden = !bad;
    const form = dlg.querySelector("form");
    const input = dlg.querySelector("#token-input");
    input.value = "";
    input.focus();
    form.onsubmit = (e) => {
      e.preventDefault();
      const v = input.value.trim();
      if (!v) return;
      sessionStorage.setItem(TOKEN_KEY, v);
      dlg.hidden = true;
      resolve(v);
    };
  });
}

/** fetch JSON from the API with the bearer token; on 401 asks for a token and retries. */
export async function api(path, { method = "GET", body } = {}) {
  for (let attempt = 0; attempt < 5; attempt++) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (r.status === 401) {
      await askToken(Boolean(token()));
      continue;
    }
    const data = await r.json().catch(() => null);
    if (!r.ok) throw new HttpError(r.status, (data && data.detail) || r.statusText);
    return data;
  }
  throw new AuthError("not signed in");
}

/** Open a websocket on this server with a fresh single-use ticket (asks for a token on 401, like api()). */
export async function openSocket(path, params = {}) {
  const { ticket } = await api("/v1/ws-ticket", { method: "POST" });
  const u = new URL(path, location.href);
  u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  u.searchParams.set("ticket", ticket);
  return new WebSocket(u);
}

// ------------------------------------------------------------------ live call events

/**
 * One call's event feed.  Reconnects after a drop with ?after=<last seq>, and skips any
 * event whose seq it has already seen, so nothing is lost or shown twice.
 * onEvent(ev); onState("connecting"|"live"|"reconnecting"|"ended"|"not_found"|"forbidden").
 */
export class CallFeed {
  constructor(callId, onEvent, onState = () => {}) {
    this.callId = callId;
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastSeq = 0;
    this.ended = false;
    this.stopped = false;
    this.retries = 0;
    this.connects = 0;
    this.ws = null;
    this.lastError = null;
  }

  start() { this.connect(); return this; }

  async connect() {
    if (this.stopped) return;
    this.onState(this.connects ? "reconnecting" : "connecting");
    this.connects++;
    this.lastError = null;
    let ws;
    try {
      ws = await openSocket(`/v1/calls/${encodeURIComponent(this.callId)}/events`, { after: this.lastSeq });
    } catch (e) {
      if (e instanceof HttpError && e.status === 403) { this.onState("forbidden"); return; }
      this.retryLater();
      return;
    }
    if (this.stopped) { ws.close(1000); return; }
    this.ws = ws;
    ws.onopen = () => { this.retries = 0; if (!this.ended) this.onState("live"); };
    ws.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch { return; }
      if (ev.type === "error") { this.lastError = ev.code; return; }
      if (ev.seq != null) {
        if (ev.seq <= this.lastSeq) return; // already shown
        this.lastSeq = ev.seq;
      }
      if (ev.type === "call.ended") this.ended = true;
      try { this.onEvent(ev); } catch (e) { console.error(e); }
    };
    ws.onclose = (e) => {
      if (this.ws !== ws || this.stopped) return;
      this.ws = null;
      if (this.ended) { this.onState("ended"); return; }
      if (e.code === 4404 || this.lastError === "not_found") { this.onState("not_found"); return; }
      if (e.code === 1008 && this.lastError !== "unauthorized") { this.onState("forbidden"); return; }
      this.retryLater(); // dropped, or a ticket that expired on the way: a new ticket next time
    };
  }

  retryLater() {
    this.onState("reconnecting");
    const delay = Math.min(5000, 300 * 2 ** this.retries++);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Drop the connection as a network failure would (used by tests); the feed reconnects. */
  drop() { if (this.ws) this.ws.close(4000, "client drop"); }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
  }
}

// ------------------------------------------------------------------ DOM and formatting

/** node.replaceChildren(...children) without the nulls and falses of conditional children (which it would print). */
export function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c != null && c !== false));
  return node;
}

export function el(tag, attrs = {}, ...children) {
  const node = tag === "svg" || attrs.xmlns ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v == null) continue;
    if (k === "class") node.setAttribute("class", v);
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "hidden") node.hidden = Boolean(v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c != null && c !== false) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

export const GRADES = ["calm", "anxious", "angry"];
export const GRADE_RANK = { calm: 0, anxious: 1, angry: 2 };
export const GRADE_COLOR = { calm: "#1a7f37", anxious: "#b35c00", angry: "#c62828", unknown: "#6b7280" };

const FACE = {
  calm: '<circle cx="12" cy="12" r="10"/><path d="M8 14.5c1.1 1.4 2.4 2 4 2s2.9-.6 4-2"/><circle cx="9" cy="9.5" r="1.1" fill="currentColor" stroke="none"/><circle cx="15" cy="9.5" r="1.1" fill="currentColor" stroke="none"/>',
  anxious: '<circle cx="12" cy="12" r="10"/><path d="M8 16c1.3-1 2.7-1 4 0s2.7 1 4 0"/><circle cx="9" cy="9.5" r="1.1" fill="currentColor" stroke="none"/><circle cx="15" cy="9.5" r="1.1" fill="currentColor" stroke="none"/><path d="M7 6.5l3 1M17 6.5l-3 1"/>',
  angry: '<circle cx="12" cy="12" r="10"/><path d="M8 17c1.1-1.4 2.4-2 4-2s2.9.6 4 2"/><path d="M6.8 7.2l3.6 2M17.2 7.2l-3.6 2"/><circle cx="9" cy="11" r="1.1" fill="currentColor" stroke="none"/><circle cx="15" cy="11" r="1.1" fill="currentColor" stroke="none"/>',
  unknown: '<circle cx="12" cy="12" r="10" stroke-dasharray="3 3"/><path d="M9.5 9.5a2.5 2.5 0 1 1 3.5 2.3c-.7.3-1 .8-1 1.5v.7"/><circle cx="12" cy="17" r=".9" fill="currentColor" stroke="none"/>',
};

export function gradeIcon(grade, size = 24) {
  const span = document.createElement("span");
  span.className = "icon";
  span.setAttribute("aria-hidden", "true");
  span.innerHTML = `<svg viewBox="0 0 24 24" width="${size}" height="${size}" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round">${FACE[grade] || FACE.unknown}</svg>`;
  return span;
}

/** Small badge: icon + word, colour-coded (colour is never the only signal). */
export function gradeBadge(grade, extra = "") {
  const g = GRADES.includes(grade) ? grade : "unknown";
  return el("span", { class: `badge grade-${g}`, "data-grade": g }, gradeIcon(g, 16), el("span", {}, t(g) + extra));
}

export function fmtClock(s) {
  if (s == null || !isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`) + `:${String(sec).padStart(2, "0")}`;
}

/** The one locale of the viewer's language for dates and numbers: zh-CN, or for English the browser's own English
 * locale (its date pickers use it too), en-US when the browser's language is not English. */
export function locale() {
  if (lang === "zh") return "zh-CN";
  return /^en\b/i.test(navigator.language || "") ? navigator.language : "en-US";
}

export function fmtDateTime(unix) {
  if (!unix) return "–";
  return new Date(unix * 1000).toLocaleString(locale(), { dateStyle: "short", timeStyle: "medium" });
}

export function fmtTime(unix) {
  if (!unix) return "–";
  return new Date(unix * 1000).toLocaleTimeString(locale());
}

/** An emotion index (0-100) as shown everywhere: a whole number, halves up (as the server's reason sentences). */
export function fmtIndex(x) { return x == null || !isFinite(x) ? "–" : String(Math.round(x)); }

/** A share (0-1) as a percentage: ``digits`` decimals (0: a whole number, halves up); "–" when unknown. */
export function fmtShare(x, digits = 1) {
  if (x == null || !isFinite(x)) return "–";
  return `${digits === 0 ? Math.round(x * 100) : (x * 100).toFixed(digits)}%`;
}

const REASON_FIELDS = {
  angry_confirmed: ["p_angry"], angry_sustained: ["angry_s"], index_rise: ["rise", "window_s", "index"], phrase: ["phrase", "label", "grade"],
  calm: ["grade", "calm_s"], call_ended: [],
};

/** An alert's reason in the viewer's language, from its code and figures (an escalation event's reason_code /
 * reason_figures, or an alert's evidence: rule and rules[0]); the server's English sentence when neither is known. */
export function reasonText(a) {
  if (!a) return "";
  const code = a.reason_code ?? a.evidence?.rule;
  const figures = a.reason_code ? a.reason_figures || {} : a.evidence?.rules?.[0] || {};
  const need = REASON_FIELDS[code];
  if (!need || need.some((k) => figures[k] == null)) return a.reason || "";
  const shown = Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, typeof v === "number" ? fmtIndex(v) : v]));
  if (figures.grade) shown.grade = t(figures.grade).toLowerCase();
  if (figures.label) shown.label = cueLabel(figures.label, lang);
  if (code === "angry_confirmed") {  // one confident update (p_angry, 0-1), or angry_updates within window_s
    shown.p_angry = fmtIndex(100 * figures.p_angry);
    return t(figures.angry_updates != null ? "reason_angry_confirmed_count" : "reason_angry_confirmed_p", shown);
  }
  return t(`reason_${code}`, shown);
}

export function fmtTrend(trend) {
  const v = Number(trend) || 0;
  const arrow = v > 1 ? "▲" : v < -1 ? "▼" : "▶";
  const word = v > 1 ? t("rising") : v < -1 ? t("falling") : t("steady");
  return { arrow, word, text: `${v > 0 ? "+" : ""}${v.toFixed(1)}${t("per_min")}`, cls: v > 1 ? "up" : v < -1 ? "down" : "flat" };
}

export function roleName(ch) { return ch === "customer" || ch === "agent" ? t(ch) : ch || ""; }

/** Page header with title, language toggle and sign-out; returns the header element. */
export function header(titleKey, nav = true) {
  const toggle = el("button", { class: "lang", type: "button", id: "lang-toggle", "data-i18n": "lang_toggle",
    onclick: () => setLang(lang === "zh" ? "en" : "zh") });
  const links = nav ? el("nav", {},
    el("a", { href: "/agent", "data-i18n": "agent_title" }),
    el("a", { href: "/supervisor", "data-i18n": "supervisor_title" }),
    el("a", { href: "/qa", "data-i18n": "qa_title" }),
    el("a", { href: "/ops", "data-i18n": "ops_title" })) : null;
  const h = el("header", { class: "top" },
    el("a", { class: "brand", href: "/" }, "calltone"),
    el("h1", { "data-i18n": titleKey }),
    links,
    el("span", { class: "spacer" }),
    toggle,
    el("button", { class: "link", type: "button", "data-i18n": "sign_out", onclick: signOut }));
  if (links) for (const a of links.querySelectorAll("a")) if (a.getAttribute("href") === location.pathname) a.classList.add("current");
  return h;
}

export function boot(titleKey) {
  takeTokenFromUrl();
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.body.dataset.title = titleKey;
  document.body.prepend(header(titleKey));
  applyStatic();
}
