// Talking to the API: JSON calls with the bearer key, and the job event stream. The stream is read with fetch()
// rather than EventSource because EventSource cannot send the Authorization header (and keys must not go in URLs).

const KEY_STORAGE = "dskd_api_key";

export class ApiError extends Error {
  constructor(status, problem) {
    super(`${problem.title || status}: ${problem.detail || ""}`);
    this.status = status;
    this.problem = problem;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

export async function api(path, { method = "GET", headers = {}, signal, query } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    for (const v of [].concat(value)) if (v != null && v !== "") url.searchParams.append(name, v);
  }
  const response = await fetch(url, { method, signal, headers: { Authorization: `Bearer ${apiKey()}`, ...headers } });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({ detail: response.statusText }));
    throw new ApiError(response.status, problem);
  }
  return response.status === 204 ? null : response.json();
}

// Server-Sent Events over fetch: calls onEvent({seq, type, payload, created_at}) for each event after `afterSeq`,
// reconnects with Last-Event-ID after a dropped connection, and resolves after the job's terminal event.
export async function followEvents(jobId, afterSeq, onEvent, signal) {
  let last = afterSeq;
  let backoff = 500;
  for (;;) {
    let finished = false;
    try {
      const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events?after_seq=${last}`, {
        signal,
        headers: { Authorization: `Bearer ${apiKey()}`, Accept: "text/event-stream", "Last-Event-ID": String(last) },
      });
      if (!response.ok) {
        const problem = await response.json().catch(() => ({ detail: response.statusText }));
        throw new ApiError(response.status, problem);
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (!data) continue; // keep-alive comment
          const event = JSON.parse(data);
          if (event.seq <= last) continue;
          last = event.seq;
          backoff = 500;
          onEvent(event);
          if (event.type === "status" && ["succeeded", "failed", "cancelled"].includes(event.payload.status)) {
            finished = true;
          }
        }
      }
      if (finished) return;
    } catch (error) {
      if (signal && signal.aborted) return;
      if (error instanceof ApiError) throw error;
    }
    if (signal && signal.aborted) return;
    await new Promise((resolve) => setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 10000);
  }
}
