// The job list: status filter, cursor pagination, progress, duration, final dev loss and dev Rouge-L; select jobs to
// compare.

import { api } from "./api.js";
import { badge, duration, el, jobDuration, num, progressBar, when, TERMINAL } from "./format.js";

const FILTERS = ["all", "queued", "running", "succeeded", "failed", "cancelled"];
const REFRESH_MS = 5000;

export async function renderJobs(view, params, ctx) {
  const status = FILTERS.includes(params.get("status")) ? params.get("status") : "all";
  const cursors = (params.get("cursors") || "").split(",").filter(Boolean); // the pages before this one
  const cursor = cursors.length ? cursors[cursors.length - 1] : null;
  const limit = Math.min(200, Math.max(1, parseInt(params.get("limit"), 10) || 20));
  const selected = new Set();

  const compareButton = el("button", { class: "primary", disabled: true, "data-test": "compare", onclick: () => {
    location.hash = `#/compare?ids=${[...selected].join(",")}`;
  } }, "Compare selected");
  const filters = el("div", { class: "filters toolbar" }, FILTERS.map((f) => el("button", {
    class: f === status ? "active" : null, "data-filter": f,
    onclick: () => { location.hash = f === "all" ? "#/" : `#/?status=${f}`; },
  }, f)));
  const body = el("tbody", { id: "jobs" });
  const pager = el("div", { class: "toolbar" });
  const table = el("table", {}, el("thead", {}, el("tr", {},
    el("th", {}, ""), el("th", {}, "Job"), el("th", {}, "Method"), el("th", {}, "Student"), el("th", {}, "Status"),
    el("th", {}, "Progress"), el("th", { class: "num" }, "Duration"), el("th", { class: "num" }, "Dev CE"),
    el("th", { class: "num", title: "Greedy dev Rouge-L of the exported weights (evaluation.interval)" }, "Dev Rouge-L"),
    el("th", {}, "Created"))), body);
  const card = el("div", { class: "card" }, table, pager);
  view.replaceChildren(
    el("div", { class: "toolbar" }, el("h1", {}, "Jobs"), el("span", { class: "spacer" }), compareButton),
    filters, card);

  function row(job) {
    const check = el("input", { type: "checkbox", "aria-label": `select ${job.id}`, onchange: (e) => {
      if (e.target.checked) selected.add(job.id); else selected.delete(job.id);
      compareButton.disabled = selected.size < 2;
      compareButton.textContent = `Compare selected (${selected.size})`;
    } });
    check.checked = selected.has(job.id);
    const { step, total_steps: total, metrics } = job.progress;
    const eta = job.progress.eta_seconds != null && !TERMINAL.includes(job.status)
      ? ` · ETA ${duration(job.progress.eta_seconds)}` : "";
    return el("tr", { "data-job": job.id },
      el("td", {}, check),
      el("td", {}, el("a", { href: `#/jobs/${job.id}` }, job.name || job.id.slice(0, 12)),
        el("div", { class: "sub mono" }, job.id.slice(0, 12))),
      el("td", {}, (job.spec.distill || {}).method || "–"),
      el("td", { class: "mono" }, (job.spec.student || {}).name_or_path || "–"),
      el("td", {}, badge(job.status)),
      el("td", {}, total ? [progressBar(step, total), el("span", { class: "sub" }, ` ${step || 0}/${total}${eta}`)] : "–"),
      el("td", { class: "num" }, duration(jobDuration(job))),
      el("td", { class: "num", "data-metric": "dev_ce" }, num((metrics || {}).dev_ce)),
      el("td", { class: "num", "data-metric": "dev_rougeL" }, num((metrics || {}).dev_rougeL)),
      el("td", { class: "sub" }, when(job.created_at)));
  }

  function empty() {
    if (status !== "all") {
      return el("div", { class: "empty" }, `No ${status} jobs. `, el("a", { href: "#/" }, "Show all jobs"));
    }
    return el("div", { class: "empty", "data-test": "empty" },
      el("p", {}, "No jobs yet. Submit one from the command line or the API:"),
      el("pre", {}, "export DSKD_API_URL=" + location.origin + " DSKD_API_KEY=<your key>\n" +
        "dskd jobs submit job.yaml --data train.jsonl --watch"),
      el("p", {}, "The job spec is the engine's (", el("code", {}, "dskd spec-schema"), "); try requests in the ",
        el("a", { href: "/docs", target: "_blank" }, "API docs"), "."));
  }

  async function load() {
    const page = await api("/v1/jobs", { query: { status: status === "all" ? null : status, cursor, limit },
      signal: ctx.signal });
    if (!page.items.length && !cursor) {
      card.replaceChildren(empty());
      return;
    }
    if (!card.contains(table)) card.replaceChildren(table, pager);
    body.replaceChildren(...page.items.map(row));
    const base = (status === "all" ? "" : `status=${status}&`) + (params.get("limit") ? `limit=${limit}&` : "");
    pager.replaceChildren(
      cursors.length ? el("a", { href: `#/?${base}cursors=${cursors.slice(0, -1).join(",")}`,
        "data-test": "previous-page" }, "← Newer") : "",
      el("span", { class: "spacer" }),
      page.next_cursor ? el("a", { href: `#/?${base}cursors=${[...cursors, page.next_cursor].join(",")}`,
        "data-test": "next-page" }, "Older →") : "");
  }

  await load();
  ctx.every(REFRESH_MS, load);
}
