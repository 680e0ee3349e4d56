// Landing page: links to the three pages (a token given as #token= is kept for them in sessionStorage).
import { boot, el, t, onLangChange } from "./common.js";

boot("app");
const app = document.getElementById("app");
function render() {
  app.replaceChildren(el("section", { class: "landing" },
    el("p", { class: "intro" }, t("index_intro")),
    el("div", { class: "cards" }, [["agent", "agent_title", "index_agent"], ["supervisor", "supervisor_title", "index_supervisor"],
      ["qa", "qa_title", "index_qa"], ["ops", "ops_title", "index_ops"]].map(([p, title, text]) =>
      el("a", { class: "card link-card", href: `/${p}` }, el("h2", {}, t(title)), el("p", {}, t(text)))))));
}
onLangChange(render);
render();
