// One job: summary, live curves (history from /metrics, then the event stream), error, artifacts, spec, events.

import { api, followEvents } from "./api.js";
import { StepChart } from "./charts.js";
import { badge, bytes, duration, el, jobDuration, num, progressBar, when, TERMINAL } from "./format.js";
import { evalChart, selection, trainChart, withoutZeroSpread } from "./metrics.js";

const MAX_LOG_LINES = 300;

// The curves, one chart per scale: [data-chart name, card title, text before the first point, height].
const CHARTS = [
  ["loss", "Training loss", "waiting for the first training step"],
  ["dev-loss", "Dev loss", "no evaluation yet (training.eval_interval)"],
  ["dev-generation", "Dev Rouge-L and exact match", "no generation-based evaluation yet (evaluation.interval)"],
  ["fractions", "Accuracy, agreement and ratios", "no accuracy or agreement figures yet"],
  ["other", "Gradient norm and other figures", "no gradient norms yet (training.max_grad_norm)"],
  ["lr", "Learning rate", "waiting for the first training step", 180],
];

export async function renderJob(view, jobId, ctx, showError) {
  let job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal: ctx.signal });
  const select = selection(job.spec);
  // best: lowest dev CE; bestScore: highest dev score of the selection metric; spread: its *_std by step.
  const state = { lastCheckpoint: null, best: null, bestScore: null, spread: new Map(), finalMetrics: null,
    throughput: null };

  const title = el("div", { class: "title-row" });
  const errorPanel = el("section", { class: "card error-panel", "data-test": "error-panel", hidden: true });
  const summary = el("div", { class: "summary", "data-test": "summary" });
  const boxes = CHARTS.map(([name]) => el("div", { class: "chart", "data-chart": name }));
  const artifactsBox = el("div", { "data-test": "artifacts" }, el("p", { class: "sub" }, "loading…"));
  const log = el("div", { class: "events mono", "data-test": "events" });
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/" }, "← All jobs")),
    title,
    errorPanel,
    el("section", { class: "card" }, el("h2", {}, "Summary"), summary),
    el("div", { class: "grid charts" },
      CHARTS.map(([, heading], i) => el("section", { class: "card" }, el("h2", {}, heading), boxes[i]))),
    el("section", { class: "card" }, el("h2", {}, "Artifacts"), artifactsBox),
    el("div", { class: "grid" },
      el("section", { class: "card" }, el("h2", {}, "Spec"), el("pre", { class: "spec", "data-test": "spec" },
        JSON.stringify(job.spec, null, 2))),
      el("section", { class: "card" }, el("h2", {}, "Events"), log)));

  // Without evaluation.interval no Rouge-L ever comes: the chart says it is off rather than "not yet".
  const off = { "dev-generation": select ? null : "off: evaluation.interval is not set" };
  const charts = new Map(CHARTS.map(([name, , emptyText, height], i) =>
    [name, new StepChart(boxes[i], { emptyText: off[name] || emptyText, height })]));
  ctx.onLeave(() => charts.forEach((c) => c.destroy()));

  function chartFor(kind, name) {
    return charts.get(kind === "eval" ? evalChart(name) : trainChart(name)) || null;
  }

  function renderTitle() {
    const cancel = TERMINAL.includes(job.status) ? "" : el("button", {
      class: "danger", "data-test": "cancel", disabled: job.status === "cancel_requested",
      onclick: () => cancelJob().catch(showError),
    }, job.status === "cancel_requested" ? "Cancelling…" : "Cancel job");
    title.replaceChildren(el("h1", {}, job.name || "Job"), badge(job.status),
      el("span", { class: "sub mono" }, job.id), cancel);
  }

  function item(label, value, test) {
    return el("div", { "data-test": test }, el("div", { class: "k" }, label), el("div", { class: "v" }, value));
  }

  // The best dev figure: the selection score (highest) when the job exports its best step, else dev CE (lowest).
  function bestItem() {
    if (!select || !select.selectBest) {
      return item("Best dev CE", state.best ? `${num(state.best.value)} @ step ${state.best.step}` : "–", "best-dev");
    }
    const best = state.bestScore;
    const spread = best && state.spread.get(best.step);
    return item(`Best ${select.label}`,
      best ? `${num(best.value)}${spread ? ` ± ${num(spread)}` : ""} @ step ${best.step}` : "–", "best-dev");
  }

  // With generation-based dev evaluation the export names the step whose weights it carries (exported_step).
  function exportedItem(final) {
    if (!select) return null;
    const step = final && final.exported_step;
    if (typeof step === "number") return item("Exported weights", `step ${step}`, "exported");
    const pending = TERMINAL.includes(job.status) ? "–"
      : el("span", { class: "sub" }, select.selectBest ? `the best ${select.label} step` : "the last step");
    return item("Exported weights", pending, "exported");
  }

  function renderSummary() {
    const p = job.progress;
    const running = !TERMINAL.includes(job.status);
    const final = state.finalMetrics || (job.status === "succeeded" ? p.metrics : null);
    const items = [
      item("Status", badge(job.status)),
      item("Attempt", `${job.attempt} of ${job.max_attempts}`),
      item("Step", p.total_steps ? [`${p.step || 0} / ${p.total_steps} `, progressBar(p.step, p.total_steps)] : "–"),
      item("Elapsed", duration(jobDuration(job))),
      item("ETA", running && p.eta_seconds != null ? duration(p.eta_seconds) : "–"),
      item("Throughput", state.throughput ? `${num(state.throughput, 3)} tokens/s` : "–"),
      item("Method", `${(job.spec.distill || {}).method || "–"}`),
      item("Last checkpoint", state.lastCheckpoint != null ? `step ${state.lastCheckpoint}` : "–"),
      bestItem(),
      exportedItem(final),
      item("Created", when(job.created_at)),
      item("Finished", when(job.finished_at)),
      el("div", { style: "grid-column: 1 / -1", "data-test": "final-metrics" },
        el("div", { class: "k" }, "Final metrics"),
        el("div", { class: "v" }, final && Object.keys(final).length
          ? Object.entries(withoutZeroSpread(final)).filter(([, v]) => typeof v === "number")
            .map(([k, v]) => `${k} ${num(v)}`).join(" · ")
          : "–")),
    ];
    summary.replaceChildren(...items.filter(Boolean));
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
      text = `eval @ step ${p.step}: ` +
        Object.entries(withoutZeroSpread(p.metrics)).map(([k, v]) => `${k} ${num(v)}`).join(", ");
    } else if (event.type === "status") {
      text = `status → ${p.status}` + (p.error ? ` [${p.error.code}] ${p.error.message}` : "");
    } else if (event.type === "artifact") {
      text = `artifacts: ${(p.artifacts || []).join(", ")}`;
    } else {
      text = p.message || JSON.stringify(p);
      const exported = (p.metrics || {}).exported_step;
      if (typeof exported === "number" && exported !== p.step) {
        text += ` (the weights of step ${exported}${select && select.selectBest ? `, the best ${select.label}` : ""})`;
      }
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
    if (!select) return;
    const score = metrics[select.key];
    // Strictly higher: ties keep the earlier step, as the engine's selection does.
    if (typeof score === "number" && (!state.bestScore || score > state.bestScore.value)) {
      state.bestScore = { step, value: score };
    }
    const spread = metrics[`${select.key}_std`];
    if (typeof spread === "number" && spread !== 0) state.spread.set(step, spread);
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
      for (const [name, value] of Object.entries(p.metrics || {})) {
        const chart = chartFor("eval", name);
        if (chart) chart.append(name, p.step, value);
      }
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
