// Doctor: `sidecar doctor`'s report, run by the daemon from the same list of checks (row for row): each
// part the stack needs, its state, and the fix for each missing part. Optional parts that are missing
// (Ollama for Refine, the caption tagger) are named in the summary, not hidden behind "nothing required".
import { api } from "../api.js";
import { h, replace, toast } from "../dom.js";

export function mount(root) {
  const box = h("div", {}, h("p", { class: "muted" }, "checking…"));
  const again = h("button", { type: "button", onclick: run }, "Check again");
  root.append(h("div", { class: "section-head" }, h("h1", {}, "Doctor"), again), box);

  async function run() {
    again.disabled = true;
    try {
      const report = await api("/doctor");
      const missing = report.checks.filter((c) => c.status === "fail" || c.status === "warn");
      const optional = missing.filter((c) => c.status === "warn").map((c) => c.name);
      replace(box,
        h("div", { class: `card check ${report.ok ? (optional.length ? "warn" : "ok") : "bad"}` },
          h("strong", {}, report.ok ? "Nothing required is missing" : "Something required is missing"),
          h("span", { class: "muted small" }, optional.length ? ` · not working yet: ${optional.join(", ")}` : ` · ${missing.length} to look at`)),
        h("div", { class: "card table-wrap doctor" }, h("table", {},
          h("thead", {}, h("tr", {}, ["check", "status", "detail", "fix"].map((c) => h("th", {}, c)))),
          h("tbody", {}, report.checks.map((c) => h("tr", { dataset: { check: c.name, status: c.status } },
            h("td", {}, c.name, c.required ? h("span", { class: "muted small" }, " required") : null),
            h("td", { class: `status ${c.status}` }, c.status),
            h("td", {}, c.detail),
            h("td", {}, c.fix ? h("code", {}, c.fix) : ""))))))); 
    } catch (err) { toast(err, "error"); }
    again.disabled = false;
  }
  run();
}
