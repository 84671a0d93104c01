// One job: summary, live curves (history from /metrics, then the event stream), error, artifacts, spec, events.

import { api, followEvents } from "./api.js";
import { StepChart } from "./charts.js";
import { badge, bytes, duration, el, jobDuration, num, progressBar, when, TERMINAL } from "./format.js";

// Training metrics that are not parts of the loss: lr has its own chart, the rest are shown as figures.
const NOT_LOSS = new Set(["lr", "grad_norm", "tokens_per_s", "elapsed_s", "on_policy", "epoch"]);
const MAX_LOG_LINES = 300;

export async function renderJob(view, jobId, ctx, showError) {
  let job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal: ctx.signal });
  const state = { lastCheckpoint: null, best: null, finalMetrics: null, throughput: null };

  const title = el("div", { class: "title-row" });
  const errorPanel = el("section", { class: "card error-panel", "data-test": "error-panel", hidden: true });
  const summary = el("div", { class: "summary", "data-test": "summary" });
  const lossBox = el("div", { class: "chart", "data-chart": "loss" });
  const lrBox = el("div", { class: "chart", "data-chart": "lr" });
  const evalBox = el("div", { class: "chart", "data-chart": "eval" });
  const artifactsBox = el("div", { "data-test": "artifacts" }, el("p", { class: "sub" }, "loading…"));
  const log = el("div", { class: "events mono", "data-test": "events" });
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/" }, "← All jobs")),
    title,
    errorPanel,
    el("section", { class: "card" }, el("h2", {}, "Summary"), summary),
    el("div", { class: "grid" },
      el("section", { class: "card" }, el("h2", {}, "Training loss"), lossBox),
      el("section", { class: "card" }, el("h2", {}, "Dev metrics"), evalBox),
      el("section", { class: "card" }, el("h2", {}, "Learning rate"), lrBox)),
    el("section", { class: "card" }, el("h2", {}, "Artifacts"), artifactsBox),
    el("div", { class: "grid" },
      el("section", { class: "card" }, el("h2", {}, "Spec"), el("pre", { class: "spec", "data-test": "spec" },
        JSON.stringify(job.spec, null, 2))),
      el("section", { class: "card" }, el("h2", {}, "Events"), log)));

  const lossChart = new StepChart(lossBox, { emptyText: "waiting for the first training step" });
  const lrChart = new StepChart(lrBox, { height: 180, emptyText: "waiting for the first training step" });
  const evalChart = new StepChart(evalBox, { emptyText: "no evaluation yet (training.eval_interval)" });
  ctx.onLeave(() => [lossChart, lrChart, evalChart].forEach((c) => c.destroy()));

  function chartFor(kind, name) {
    if (kind === "eval") return evalChart;
    if (name === "lr") return lrChart;
    return NOT_LOSS.has(name) ? null : lossChart;
  }

  function renderTitle() {
    const cancel = TERMINAL.includes(job.status) ? "" : el("button", {
      class: "danger", "data-test": "cancel", disabled: job.status === "cancel_requested",
      onclick: () => cancelJob().catch(showError),
    }, job.status === "cancel_requested" ? "Cancelling…" : "Cancel job");
    title.replaceChildren(el("h1", {}, job.name || "Job"), badge(job.status),
      el("span", { class: "sub mono" }, job.id), cancel);
  }

  function item(label, ...value) {
    return el("div", {}, el("div", { class: "k" }, label), el("div", { class: "v" }, ...value));
  }

  function renderSummary() {
    const p = job.progress;
    const running = !TERMINAL.includes(job.status);
    const final = state.finalMetrics || (job.status === "succeeded" ? p.metrics : null);
    summary.replaceChildren(
      item("Status", badge(job.status)),
      item("Attempt", `${job.attempt} of ${job.max_attempts}`),
      item("Step", p.total_steps ? [`${p.step || 0} / ${p.total_steps} `, progressBar(p.step, p.total_steps)] : "–"),
      item("Elapsed", duration(jobDuration(job))),
      item("ETA", running && p.eta_seconds != null ? duration(p.eta_seconds) : "–"),
      item("Throughput", state.throughput ? `${num(state.throughput, 3)} tokens/s` : "–"),
      item("Method", `${(job.spec.distill || {}).method || "–"}`),
      item("Last checkpoint", state.lastCheckpoint != null ? `step ${state.lastCheckpoint}` : "–"),
      item("Best dev CE", state.best ? `${num(state.best.value)} @ step ${state.best.step}` : "–"),
      item("Created", when(job.created_at)),
      item("Finished", when(job.finished_at)),
      el("div", { style: "grid-column: 1 / -1", "data-test": "final-metrics" },
        el("div", { class: "k" }, "Final metrics"),
        el("div", { class: "v" }, final && Object.keys(final).length
          ? Object.entries(final).filter(([, v]) => typeof v === "number")
            .map(([k, v]) => `${k} ${num(v)}`).join(" · ")
          : "–")));
  }

  function renderError() {
    errorPanel.hidden = !job.error;
    if (!job.error) return;
    errorPanel.replaceChildren(el("h2", {}, "Why it failed"),
      el("div", {}, el("span", { class: "code" }, job.error.code), ` after attempt ${job.attempt}`),
      el("pre", {}, job.error.message));
  }

  async function loadArtifacts() {
    const list = await api(`/v1/jobs/${jobId}/artifacts`, { signal: ctx.signal });
    if (!list.items.length) {
      const why = { succeeded: "No files were registered.", failed: "None: the job failed before its export.",
        cancelled: "None: the job was cancelled before its export." }[job.status];
      artifactsBox.replaceChildren(el("p", { class: "sub" },
        why || "The distilled student appears here when the job succeeds."));
      return;
    }
    // link_url is a short-lived signed URL: a plain link, so the browser streams the file to disk.
    artifactsBox.replaceChildren(el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "File"), el("th", { class: "num" }, "Size"), el("th", {}, "sha256"),
        el("th", {}, ""))),
      el("tbody", {}, list.items.map((a) => el("tr", { "data-artifact": a.name },
        el("td", { class: "mono" }, a.name),
        el("td", { class: "num" }, bytes(a.size_bytes)),
        el("td", {}, el("span", { class: "sha mono", title: a.sha256 }, a.sha256)),
        el("td", {}, el("a", { href: a.link_url, download: a.name.split("/").pop() }, "Download")))))));
  }

  function logLine(event) {
    const p = event.payload;
    let text;
    if (event.type === "progress") {
      const m = Object.entries(p.metrics || {}).filter(([k]) => k !== "elapsed_s").map(([k, v]) => `${k} ${num(v)}`);
      text = `step ${p.step}/${p.total_steps}  ${m.join("  ")}`;
    } else if (event.type === "eval") {
      text = `eval @ step ${p.step}: ` + Object.entries(p.metrics || {}).map(([k, v]) => `${k} ${num(v)}`).join(", ");
    } else if (event.type === "status") {
      text = `status → ${p.status}` + (p.error ? ` [${p.error.code}] ${p.error.message}` : "");
    } else if (event.type === "artifact") {
      text = `artifacts: ${(p.artifacts || []).join(", ")}`;
    } else {
      text = p.message || JSON.stringify(p);
    }
    const line = el("div", { "data-type": event.type },
      el("span", { class: "t" }, new Date(event.created_at).toLocaleTimeString()), `${event.type}  ${text}`);
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(line);
    while (log.childElementCount > MAX_LOG_LINES) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function noteEval(step, metrics) {
    const dev = metrics.dev_ce;
    if (typeof dev === "number" && (!state.best || dev < state.best.value)) state.best = { step, value: dev };
  }

  async function refreshJob() {
    job = await api(`/v1/jobs/${jobId}`, { signal: ctx.signal });
    renderTitle();
    renderSummary();
    renderError();
    if (TERMINAL.includes(job.status)) await loadArtifacts();
  }

  function onEvent(event) {
    const p = event.payload;
    logLine(event);
    if (event.type === "progress") {
      for (const [name, value] of Object.entries(p.metrics || {})) {
        const chart = chartFor("train", name);
        if (chart) chart.append(name, p.step, value);
      }
      if (typeof (p.metrics || {}).tokens_per_s === "number") state.throughput = p.metrics.tokens_per_s;
      job.progress = { ...job.progress, step: p.step, total_steps: p.total_steps, eta_seconds: p.eta_seconds,
        elapsed_seconds: p.elapsed_seconds };
      renderSummary();
    } else if (event.type === "eval") {
      for (const [name, value] of Object.entries(p.metrics || {})) evalChart.append(name, p.step, value);
      noteEval(p.step, p.metrics || {});
      renderSummary();
    } else if (event.type === "checkpoint") {
      state.lastCheckpoint = p.step;
      renderSummary();
    } else if (event.type === "artifact") {
      state.finalMetrics = p.metrics || null;
    } else if (event.type === "status") {
      refreshJob().catch(showError);
    }
  }

  async function cancelJob() {
    const question = job.status === "queued"
      ? `Cancel job ${job.name || job.id}? It has not started yet.`
      : `Cancel job ${job.name || job.id}? It stops at its next step and keeps a checkpoint.`;
    if (!window.confirm(question)) return;
    job = await api(`/v1/jobs/${jobId}/cancel`, { method: "POST", signal: ctx.signal });
    renderTitle();
    renderSummary();
  }

  renderTitle();
  renderSummary();
  renderError();
  const history = await api(`/v1/jobs/${jobId}/metrics`, { signal: ctx.signal, query: { max_points: 2000 } });
  for (const s of history.series) {
    const chart = chartFor(s.kind, s.name);
    if (chart) chart.set(s.name, s.steps, s.values);
    if (s.kind === "eval") s.steps.forEach((step, i) => noteEval(step, { [s.name]: s.values[i] }));
  }
  // The log shows the last events; checkpoints and final metrics come from the whole history.
  const page = await api(`/v1/jobs/${jobId}/events`, { signal: ctx.signal,
    query: { after_seq: Math.max(0, history.last_seq - 60), limit: 60 } });
  // Up to the history's last event: the stream below continues from there, so nothing shows twice.
  const earlier = page.items.filter((event) => event.seq <= history.last_seq);
  earlier.forEach(logLine);
  for (const event of earlier) {
    if (event.type === "checkpoint") state.lastCheckpoint = event.payload.step;
    if (event.type === "artifact") state.finalMetrics = event.payload.metrics || null;
    if (event.type === "progress" && typeof (event.payload.metrics || {}).tokens_per_s === "number") {
      state.throughput = event.payload.metrics.tokens_per_s;
    }
  }
  renderSummary();
  await loadArtifacts();
  if (job.status === "succeeded") ctx.every(10 * 60 * 1000, loadArtifacts); // renew the signed links
  if (!TERMINAL.includes(job.status)) {
    followEvents(jobId, history.last_seq, onEvent, ctx.signal).catch(showError);
  }
}
