// The dashboard: lists jobs and follows one job's events. Events are read with fetch() streaming rather than
// EventSource, because EventSource cannot send the Authorization header and keys must not go in URLs.
"use strict";

const $ = (id) => document.getElementById(id);
let apiKey = localStorage.getItem("dskd_api_key") || "";
let streamAbort = null;
let selectedJob = null;
const TERMINAL = ["succeeded", "failed", "cancelled"];

function headers(extra = {}) {
  return { Authorization: `Bearer ${apiKey}`, ...extra };
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({ detail: response.statusText }));
    throw new Error(`${problem.title || response.status}: ${problem.detail || ""}`);
  }
  return response.status === 204 ? null : response.json();
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  return td;
}

function progressCell(job) {
  const td = document.createElement("td");
  const { step, total_steps: total, eta_seconds: eta } = job.progress;
  if (total) {
    const bar = document.createElement("progress");
    bar.max = total;
    bar.value = step || 0;
    td.append(bar, ` ${step || 0}/${total}`);
    if (eta != null && !TERMINAL.includes(job.status)) td.append(` · ETA ${Math.round(eta)} s`);
  }
  return td;
}

async function refreshJobs() {
  if (!apiKey) return;
  try {
    const page = await api("/v1/jobs?limit=50");
    const rows = page.items.map((job) => {
      const tr = document.createElement("tr");
      tr.className = "job";
      const status = cell(job.status);
      status.className = `status-${job.status}`;
      tr.append(cell(job.id.slice(0, 8)), cell(job.name), cell(job.spec.distill?.method), status, progressCell(job),
        cell(new Date(job.created_at).toLocaleString()));
      tr.onclick = () => selectJob(job);
      return tr;
    });
    $("jobs").replaceChildren(...rows);
    $("message").textContent = "";
  } catch (err) {
    $("message").textContent = err.message;
  }
}

function showEvent(event) {
  const line = document.createElement("div");
  const payload = JSON.stringify(event.payload);
  line.textContent = `#${event.seq} ${event.type} ${payload}`;
  $("events").append(line);
  $("events").scrollTop = $("events").scrollHeight;
}

// Parses the text/event-stream wire format: blank-line separated blocks of "field: value" lines.
async function followEvents(jobId) {
  if (streamAbort) streamAbort.abort();
  streamAbort = new AbortController();
  $("events").replaceChildren();
  const response = await fetch(`/v1/jobs/${jobId}/events`, {
    headers: headers({ Accept: "text/event-stream" }),
    signal: streamAbort.signal,
  });
  if (!response.ok) throw new Error(`events: ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) showEvent(JSON.parse(data));
    }
  }
  refreshJobs();
}

async function showArtifacts(jobId) {
  const list = await api(`/v1/jobs/${jobId}/artifacts`);
  const links = list.items.map((a) => {
    const button = document.createElement("button");
    button.textContent = `${a.name} (${(a.size_bytes / 1e6).toFixed(1)} MB)`;
    button.onclick = () => download(a.download_url, a.name);
    return button;
  });
  $("artifacts").replaceChildren(...links);
}

// Downloads go through fetch so the key travels in a header, then are saved from a blob.
async function download(url, name) {
  const response = await fetch(url, { headers: headers() });
  const blob = await response.blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name.split("/").pop();
  link.click();
  URL.revokeObjectURL(link.href);
}

function selectJob(job) {
  selectedJob = job.id;
  $("detail").hidden = false;
  $("detail-title").textContent = `${job.name || job.id} — ${job.status}`;
  $("cancel").hidden = TERMINAL.includes(job.status);  // a finished job has nothing to cancel
  showArtifacts(job.id).catch((err) => ($("message").textContent = err.message));
  followEvents(job.id).catch((err) => {
    if (err.name !== "AbortError") $("message").textContent = err.message;
  });
}

$("cancel").onclick = async () => {
  if (!selectedJob) return;
  try {
    await api(`/v1/jobs/${selectedJob}/cancel`, { method: "POST" });
    refreshJobs();
  } catch (err) {
    $("message").textContent = err.message;
  }
};

$("key-form").onsubmit = (e) => {
  e.preventDefault();
  apiKey = $("api-key").value.trim();
  localStorage.setItem("dskd_api_key", apiKey);
  refreshJobs();
};

$("api-key").value = apiKey;
refreshJobs();
setInterval(() => $("auto").checked && refreshJobs(), 5000);
