// The dashboard's entry point: the API key, a hash router (#/, #/jobs/ID, #/compare?ids=a,b) and error banners.
// Each view gets a context whose AbortSignal, timers and clean-ups end when the user navigates away.

import { ApiError, apiKey, setApiKey } from "./api.js";
import { renderCompare } from "./compare.js";
import { el } from "./format.js";
import { renderJob } from "./job.js";
import { renderJobs } from "./list.js";

const view = document.getElementById("view");
const banner = document.getElementById("banner");
let current = null;

function showError(error) {
  if (error && error.name === "AbortError") return;
  if (error instanceof ApiError && error.status === 401) {
    banner.textContent = `The API key was refused (${error.problem.detail}). Paste a valid key above.`;
  } else {
    banner.textContent = error instanceof Error ? error.message : String(error);
  }
  banner.hidden = false;
}

function newContext() {
  const controller = new AbortController();
  const leaving = [];
  return {
    signal: controller.signal,
    every(ms, fn) {
      const timer = setInterval(() => {
        if (document.visibilityState === "visible") fn().catch(showError);
      }, ms);
      leaving.push(() => clearInterval(timer));
    },
    onLeave(fn) { leaving.push(fn); },
    leave() { controller.abort(); leaving.forEach((fn) => fn()); },
  };
}

function noKey() {
  view.replaceChildren(el("div", { class: "card empty", "data-test": "no-key" },
    el("h1", {}, "Welcome to dskd"),
    el("p", {}, "Paste an API key above to see your distillation jobs. Whoever runs the service creates keys with:"),
    el("pre", {}, "dskd keys create <your name>"),
    el("p", {}, "Then submit jobs with ", el("code", {}, "dskd jobs submit"), ", the Python client or the ",
      el("a", { href: "/docs", target: "_blank" }, "REST API"), ".")));
}

async function route() {
  if (current) current.leave();
  current = newContext();
  banner.hidden = true;
  const [path, query] = (location.hash.replace(/^#/, "") || "/").split("?");
  const params = new URLSearchParams(query || "");
  document.querySelectorAll("[data-nav]").forEach((a) => {
    a.classList.toggle("active", a.dataset.nav === (path.startsWith("/compare") ? "compare" : "jobs"));
  });
  if (!apiKey()) return noKey();
  try {
    const job = path.match(/^\/jobs\/([A-Za-z0-9_-]+)$/);
    if (job) await renderJob(view, job[1], current, showError);
    else if (path.startsWith("/compare")) await renderCompare(view, params, current);
    else await renderJobs(view, params, current);
  } catch (error) {
    showError(error);
  }
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("api-key");
  setApiKey(input.value.trim());
  input.value = "";
  route();
});
document.getElementById("forget-key").addEventListener("click", () => { setApiKey(""); route(); });
window.addEventListener("hashchange", route);
route();
