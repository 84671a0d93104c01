// Small formatting helpers and a DOM builder.

export const TERMINAL = ["succeeded", "failed", "cancelled"];

// el("td", {class: "num", title: "x"}, "text", childNode, ...): attributes, then text or nodes.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

export function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

export function num(value, digits = 4) {
  if (typeof value !== "number" || !isFinite(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

export function when(iso) {
  if (!iso) return "–";
  return new Date(iso).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function badge(status) {
  return el("span", { class: `badge ${status}`, "data-status": status }, status.replace("_", " "));
}

export function progressBar(step, total) {
  const fraction = total ? Math.min(1, (step || 0) / total) : 0;
  return el("span", { class: "bar", title: `${step || 0}/${total || "?"}` },
    el("span", { style: `width:${(fraction * 100).toFixed(1)}%` }));
}

export function jobDuration(job) {
  if (job.progress && job.progress.elapsed_seconds != null) return job.progress.elapsed_seconds;
  if (!job.started_at) return null;
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  return (end - new Date(job.started_at)) / 1000;
}
