// What the engine's metric names mean to the dashboard: which chart a series belongs on (quantities of one scale
// share an axis), and the generation-based dev scores a job with `evaluation.select_best` exports its best step by.

// Training figures that are no curve (throughput, clock, sequence-KD generation progress).
const NOT_CHARTED = new Set(["tokens_per_s", "elapsed_s", "epoch", "seqkd_generated", "seqkd_total"]);
// Fractions in [0, 1]: token accuracies, teacher-student agreement, aligned and mapped-label ratios, on-policy share.
const FRACTION = /(^|_)(acc|agreement|ratio)$|^on_policy$/;
// The loss and its parts: ce, kd, kd_divergence, kd_student_space, ce_t2s, uld, sample_ce, ...
const LOSS_TERM = /^(loss|ce|kd|uld)$|^(ce|kd)_|_(ce|kd|loss)$/;
// Dev scores from generated responses (0-100); their `*_std` twins are the spread over decoding seeds.
const GENERATION = /(^|_)(rougeL|exact_match)$/;

export const SCORE_LABELS = { rougeL: "Rouge-L", exact_match: "exact match" };

// Chart of a training (`progress`) metric: "loss", "fractions", "lr", "other" (gradient norms, attention
// entropy, names this page does not know), or null for figures that are not drawn.
export function trainChart(name) {
  if (name === "lr") return "lr";
  if (NOT_CHARTED.has(name)) return null;
  if (FRACTION.test(name)) return "fractions";
  if (LOSS_TERM.test(name)) return "loss";
  return "other";
}

// Chart of a dev (`eval`) metric: "dev-generation" (Rouge-L, exact match), "dev-loss" (dev_ce, dev_loss,
// teacher_dev_ce), or null for the `*_std` spreads (0 under greedy decoding; shown as ± where they are not).
export function evalChart(name) {
  if (name.endsWith("_std")) return null;
  return GENERATION.test(name) ? "dev-generation" : "dev-loss";
}

// How a job picks its exported checkpoint: null without generation-based dev evaluation (`evaluation.interval`
// unset), else the metric and whether the best step of it is exported (`select_best`, on by default).
export function selection(spec) {
  const ev = (spec && spec.evaluation) || {};
  if (ev.interval == null) return null;
  const metric = ev.metric || "rougeL";
  return { metric, key: `dev_${metric}`, label: `dev ${SCORE_LABELS[metric] || metric}`,
    selectBest: ev.select_best !== false };
}

// The best (highest) value of a score series and its step; ties keep the earlier step, as the engine does.
export function bestScore(steps, values) {
  let best = null;
  values.forEach((value, i) => {
    if (typeof value === "number" && (!best || value > best.value)) best = { step: steps[i], value };
  });
  return best;
}

// A metrics object without the `*_std` entries that are 0 (one greedy pass has no spread over seeds).
export function withoutZeroSpread(metrics) {
  return Object.fromEntries(Object.entries(metrics || {}).filter(([k, v]) => !(k.endsWith("_std") && v === 0)));
}
