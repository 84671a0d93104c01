// Compare runs: several jobs' curves of one metric overlaid by step, and their figures side by side.

import { api } from "./api.js";
import { PALETTE, StepChart } from "./charts.js";
import { badge, duration, el, jobDuration, num } from "./format.js";
import { bestScore, selection } from "./metrics.js";

// Figures read at their last value: [series kind, metric name, column header, what the value is].
const LAST = [
  ["train", "loss", "loss", "last"], ["train", "ce", "CE", "last"], ["train", "kd", "KD", "last"],
  ["eval", "dev_ce", "dev CE", "last eval"], ["eval", "teacher_dev_ce", "teacher dev CE", "the teacher's"],
];
// Generation-based dev scores, read at their best evaluation: the step a select_best job exports.
const BEST = [["dev_rougeL", "dev Rouge-L"], ["dev_exact_match", "dev exact match"]];

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
    // A succeeded job's progress snapshot holds its export's metrics (exported_step among them).
    const exported = job.status === "succeeded" ? job.progress.metrics || {} : null;
    return { job, history, exported, label: `${job.name || id.slice(0, 8)} (${id.slice(0, 6)})` };
  }));

  // Every metric but clocks and the *_std spreads that are 0 in every run (greedy decoding has no spread).
  const metricNames = [...new Set(runs.flatMap((r) => r.history.series
    .filter((s) => !(s.name.endsWith("_std") && s.values.every((v) => v === 0)))
    .map((s) => `${s.kind}:${s.name}`)))]
    .filter((key) => !/:(elapsed_s|tokens_per_s|epoch)$/.test(key)).sort();
  const preferred = params.get("metric")
    || ["eval:dev_rougeL", "train:loss"].find((key) => metricNames.includes(key)) || metricNames[0];
  const select = el("select", { "data-test": "metric", onchange: (e) => draw(e.target.value) },
    metricNames.map((key) => el("option", { value: key, selected: key === preferred }, key.replace(":", " · "))));
  const chartBox = el("div", { class: "chart", "data-chart": "compare" });
  const table = el("table", { "data-test": "compare-table" });
  const note = el("p", { class: "sub" });
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/" }, "← All jobs")),
    el("h1", {}, `Compare ${runs.length} runs`),
    el("section", { class: "card" }, el("div", { class: "toolbar" }, el("h2", {}, "Curves"),
      el("span", { class: "spacer" }), el("label", {}, "metric ", select)), chartBox),
    el("section", { class: "card" }, el("h2", {}, "Final figures"), note, table));

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

  const series = (run, kind, name) => run.history.series.find((x) => x.kind === kind && x.name === name);
  const last = (run, kind, name) => {
    const s = series(run, kind, name);
    return s && s.values.length ? s.values[s.values.length - 1] : null;
  };
  const best = (run, name) => {
    const s = series(run, "eval", name);
    return s ? bestScore(s.steps, s.values) : null;
  };
  // The step of the exported weights: exported_step when the run evaluated by generation, else its last step.
  const exportedStep = (run) => {
    if (!run.exported) return null;
    const step = run.exported.exported_step;
    return typeof step === "number" ? step : run.job.progress.step;
  };
  const lastShown = LAST.filter(([kind, name]) => runs.some((r) => last(r, kind, name) != null));
  const bestShown = BEST.filter(([name]) => runs.some((r) => best(r, name)));
  note.replaceChildren("Training figures and dev CE: the last value logged. ",
    bestShown.length ? "Dev Rouge-L and exact match: the best evaluation, with its step. " : "",
    "Exported: the step whose weights the student carries (the best ", el("code", {}, "evaluation.metric"),
    " step when ", el("code", {}, "evaluation.select_best"), " is on, else the last).");
  const header = (label, what, title) =>
    el("th", { class: "num", title }, label, el("br"), el("span", { class: "qual" }, what));
  table.replaceChildren(
    el("thead", {}, el("tr", {}, el("th", {}, "Run"), el("th", {}, "Method"), el("th", {}, "Student"),
      el("th", {}, "Status"), el("th", { class: "num" }, "Steps"), el("th", { class: "num" }, "Duration"),
      lastShown.map(([, name, label, what]) => header(label, what, `${name}: the last value the run reported`)),
      bestShown.map(([name, label]) => header(label, "best @ step",
        `${name}: the highest value over the run's evaluations (ties keep the earlier step)`)),
      header("Exported", "step", "the step whose weights the exported student carries"))),
    el("tbody", {}, runs.map((run, i) => el("tr", { "data-job": run.job.id },
      el("td", {}, el("span", { style: `color:${PALETTE[i % PALETTE.length]}` }, "■ "),
        el("a", { href: `#/jobs/${run.job.id}` }, run.label)),
      el("td", {}, (run.job.spec.distill || {}).method || "–"),
      el("td", { class: "mono" }, (run.job.spec.student || {}).name_or_path || "–"),
      el("td", {}, badge(run.job.status)),
      el("td", { class: "num" }, `${run.job.progress.step || 0}/${run.job.progress.total_steps || "?"}`),
      el("td", { class: "num" }, duration(jobDuration(run.job))),
      lastShown.map(([kind, name]) => el("td", { class: "num", "data-metric": name }, num(last(run, kind, name)))),
      bestShown.map(([name]) => bestCell(run, name, best(run, name))),
      el("td", { class: "num", "data-metric": "exported_step" }, exportedCell(run, exportedStep(run)))))));
}

function bestCell(run, name, best) {
  if (!best) return el("td", { class: "num", "data-metric": name }, "–");
  const select = selection(run.job.spec);
  const selects = select && select.selectBest && select.key === name;
  return el("td", { class: "num", "data-metric": name, "data-step": best.step,
    title: selects ? "the run's selection metric: its exported student has this score" : null },
  selects ? el("strong", {}, num(best.value)) : num(best.value), el("span", { class: "sub" }, ` @ ${best.step}`));
}

function exportedCell(run, step) {
  if (step == null) return "–";
  const select = selection(run.job.spec);
  const best = run.exported.exported_step != null && select && select.selectBest;
  return el("span", { title: best ? `the best ${select.label} step` : "the last step" },
    String(step), el("span", { class: "sub" }, best ? " best" : " last"));
}
