// Agent desktop: the agent's live call (found by the agent token) or ?call=ID.
import { api, boot, el, t, onLangChange } from "./common.js";
import { CallView } from "./callview.js";

boot("agent_title");
const app = document.getElementById("app");
const params = new URL(location.href).searchParams;
const fixed = params.get("call");
let view = null;
let waitingTimer = null;

function waiting() {
  view?.destroy();
  view = null;
  app.replaceChildren(el("div", { class: "waiting", "data-testid": "waiting" }, el("div", { class: "pulse" }), el("p", {}, t("waiting_call"))));
}
onLangChange(() => { if (!view) waiting(); });

function attach(callId) {
  clearTimeout(waitingTimer);
  view?.destroy();
  const root = el("div", {});
  app.replaceChildren(root);
  view = new CallView(root, callId, {
    onEnded: () => { if (!fixed) waitingTimer = setTimeout(findLive, 2000); }, // look for the next call; the ended one stays shown
  }).start();
  window.calltone = { view, feed: view.feed };
}

async function findLive() {
  try {
    const { calls } = await api("/v1/calls?status=live&limit=5");
    const current = view && !view.state.ended ? view.callId : null;
    if (calls.length && calls[0].call_id !== current) {
      if (!view || view.state.ended || !calls.some((c) => c.call_id === current)) attach(calls[0].call_id);
    } else if (!calls.length && !view) waiting();
  } catch (e) {
    if (!view) app.replaceChildren(el("p", { class: "error" }, t("error", { msg: e.message })));
  }
  if (!view || view.state.ended) waitingTimer = setTimeout(findLive, 2000);
}

if (fixed) attach(fixed);
else { waiting(); findLive(); }
