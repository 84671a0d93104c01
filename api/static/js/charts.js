// Line charts by step on uPlot (vendored: vendor/uplot, see vendor/README.md). A chart holds named series of
// (step, value) points, aligns them on the union of their steps and redraws at most once per animation frame.
// The container's data-points (longest series) and data-series (a JSON list of names) say what is drawn.

export const PALETTE = ["#2f5fd0", "#d0542f", "#17803d", "#8a3fd1", "#c29100", "#0f8b8d", "#b3261e", "#5f6b7a"];

// Axis labels with enough digits to tell ticks apart (uPlot's default rounds 0.00098 and 0.00096 alike).
function tick(value) {
  if (value == null) return "";
  const abs = Math.abs(value);
  return abs !== 0 && (abs < 1e-2 || abs >= 1e5) ? value.toExponential(1) : String(Number(value.toPrecision(4)));
}

export class StepChart {
  constructor(container, { title, emptyText = "no points yet", height = 240 } = {}) {
    this.container = container;
    this.title = title;
    this.height = height;
    this.series = new Map(); // name -> {steps: [], values: []}
    this.plot = null;
    this.plotNames = "";
    this.pending = false;
    this.placeholder = document.createElement("div");
    this.placeholder.className = "placeholder";
    this.placeholder.textContent = emptyText;
    container.replaceChildren(this.placeholder);
    container.dataset.points = "0";
    container.dataset.series = "[]";
    this.onResize = () => this.plot && this.plot.setSize(this.size());
    window.addEventListener("resize", this.onResize);
  }

  set(name, steps, values) {
    this.series.set(name, { steps: [...steps], values: [...values] });
    this.schedule();
  }

  append(name, step, value) {
    if (typeof value !== "number" || !isFinite(value)) return;
    const s = this.series.get(name) || { steps: [], values: [] };
    const last = s.steps.length ? s.steps[s.steps.length - 1] : -Infinity;
    if (step < last) return;
    if (step === last) s.values[s.values.length - 1] = value; // a repeated step keeps the newest value
    else { s.steps.push(step); s.values.push(value); }
    this.series.set(name, s);
    this.schedule();
  }

  pointCount() {
    let n = 0;
    for (const s of this.series.values()) n = Math.max(n, s.steps.length);
    return n;
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  size() {
    return { width: Math.max(280, this.container.clientWidth - 4), height: this.height };
  }

  aligned() {
    const names = [...this.series.keys()];
    const xs = [...new Set(names.flatMap((n) => this.series.get(n).steps))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const columns = names.map((n) => {
      const column = new Array(xs.length).fill(null);
      const s = this.series.get(n);
      s.steps.forEach((step, i) => { column[index.get(step)] = s.values[i]; });
      return column;
    });
    return { names, data: [xs, ...columns] };
  }

  draw() {
    const { names, data } = this.aligned();
    this.container.dataset.points = String(this.pointCount());
    this.container.dataset.series = JSON.stringify(names);
    if (data[0].length === 0) return;
    const key = names.join("\u0000");
    if (this.plot && key === this.plotNames) {
      this.plot.setData(data);
      return;
    }
    if (this.plot) this.plot.destroy();
    this.plotNames = key;
    const options = {
      title: this.title,
      ...this.size(),
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { size: 64, values: (u, ticks) => ticks.map(tick) }],
      legend: { live: true },
      series: [
        { label: "step" },
        ...names.map((name, i) => ({
          label: name, stroke: PALETTE[i % PALETTE.length], width: 1.6, spanGaps: true,
          points: { show: data[0].length < 40 },
        })),
      ],
    };
    this.container.replaceChildren();
    this.plot = new window.uPlot(options, data, this.container);
  }

  destroy() {
    window.removeEventListener("resize", this.onResize);
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}
