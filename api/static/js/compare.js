// Compare runs: several jobs' curves of one metric overlaid by step, and their final figures side by side.

import { api } from "./api.js";
import { PALETTE, StepChart } from "./charts.js";
import { badge, duration, el, jobDuration, num } from "./format.js";

const FIGURES = ["loss", "ce", "kd", "dev_ce", "teacher_dev_ce", "rougeL", "exact_match"];

export async function renderCompare(view, params, ctx) {
  const ids = (params.get("ids") || "").split(",").filter(Boolean).slice(0, 8);
  if (ids.length < 2) {
    view.replaceChildren(el("h1", {}, "Compare runs"), el("div", { class: "card empty", "data-test": "empty" },
      "Select two or more jobs in the ", el("a", { href: "#/" }, "job list"), " and press “Compare selected”."));
    return;
  }
  const runs = await Promise.all(ids.map(async (id) => {
    const [job, history] = await Promise.all([
      api(`/v1/jobs/${id}`, { signal: ctx.signal }),
      api(`/v1/jobs/${id}/metrics`, { signal: ctx.signal, query: { max_points: 1000 } }),
    ]);
    return { job, history, label: `${job.name || id.slice(0, 8)} (${id.slice(0, 6)})` };
  }));

  const metricNames = [...new Set(runs.flatMap((r) => r.history.series.map((s) => `${s.kind}:${s.name}`)))]
    .filter((key) => !/:(elapsed_s|tokens_per_s|epoch)$/.test(key)).sort();
  const preferred = params.get("metric") || (metricNames.includes("train:loss") ? "train:loss" : metricNames[0]);
  const select = el("select", { "data-test": "metric", onchange: (e) => draw(e.target.value) },
    metricNames.map((key) => el("option", { value: key, selected: key === preferred }, key.replace(":", " · "))));
  const chartBox = el("div", { class: "chart", "data-chart": "compare" });
  const table = el("table", { "data-test": "compare-table" });
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/" }, "← All jobs")),
    el("h1", {}, `Compare ${runs.length} runs`),
    el("section", { class: "card" }, el("div", { class: "toolbar" }, el("h2", {}, "Curves"),
      el("span", { class: "spacer" }), el("label", {}, "metric ", select)), chartBox),
    el("section", { class: "card" }, el("h2", {}, "Final figures"), table));

  const chart = new StepChart(chartBox, { height: 320, emptyText: "no points for this metric" });
  ctx.onLeave(() => chart.destroy());

  function draw(key) {
    const [kind, name] = key.split(":");
    chart.series.clear();
    runs.forEach((run) => {
      const s = run.history.series.find((x) => x.kind === kind && x.name === name);
      chart.set(run.label, s ? s.steps : [], s ? s.values : []);
    });
    chart.title = key.replace(":", " · ");
    chart.plotNames = ""; // new title: rebuild the plot
  }
  draw(preferred);

  // Final figures: the last value of each series (the run's final evaluation for dev metrics).
  const last = (run, kind, name) => {
    const s = run.history.series.find((x) => x.kind === kind && x.name === name);
    return s && s.values.length ? s.values[s.values.length - 1] : null;
  };
  const shown = FIGURES.filter((f) => runs.some((r) => last(r, "train", f) != null || last(r, "eval", f) != null));
  table.replaceChildren(
    el("thead", {}, el("tr", {}, el("th", {}, "Run"), el("th", {}, "Method"), el("th", {}, "Student"),
      el("th", {}, "Status"), el("th", { class: "num" }, "Steps"), el("th", { class: "num" }, "Duration"),
      shown.map((f) => el("th", { class: "num" }, f)))),
    el("tbody", {}, runs.map((run, i) => el("tr", { "data-job": run.job.id },
      el("td", {}, el("span", { style: `color:${PALETTE[i % PALETTE.length]}` }, "■ "),
        el("a", { href: `#/jobs/${run.job.id}` }, run.label)),
      el("td", {}, (run.job.spec.distill || {}).method || "–"),
      el("td", { class: "mono" }, (run.job.spec.student || {}).name_or_path || "–"),
      el("td", {}, badge(run.job.status)),
      el("td", { class: "num" }, `${run.job.progress.step || 0}/${run.job.progress.total_steps || "?"}`),
      el("td", { class: "num" }, duration(jobDuration(run.job))),
      shown.map((f) => el("td", { class: "num", "data-metric": f },
        num(last(run, f.includes("dev") || f === "rougeL" || f === "exact_match" ? "eval" : "train", f))))))));
}
