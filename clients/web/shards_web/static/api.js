// The GUI server's JSON API and its event stream. Every request goes to this origin.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function answer(response) {
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "ERROR", error.message || `HTTP ${response.status}`);
  }
  return data;
}

async function send(path, options) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (_) {
    throw new ApiError(0, "UNREACHABLE", "the GUI server cannot be reached");
  }
  return answer(response);
}

export function get(path, params = {}) {
  const query = new URLSearchParams(params).toString();
  return send(query ? `${path}?${query}` : path, { headers: { Accept: "application/json" } });
}

// Changing requests: POST, JSON, and the header the server's CSRF check asks for.
export function post(path, body = {}) {
  return send(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Shards-Request": "1", Accept: "application/json" },
    body: JSON.stringify(body),
  });
}

// Follows /api/events for a scope: calls on.snapshot(revision, processes),
// on.changes(revision, processes, removed), on.connection(state, message), on.error(error).
// EventSource reconnects by itself with Last-Event-ID; when the server refuses
// (the stream closed for good), this opens a new one from the last revision seen.
export function followScope(scope, on) {
  let source = null;
  let last = null;
  let stopped = false;
  let retry = null;
  let upstream = "connecting";

  const open = () => {
    const params = new URLSearchParams({ scope });
    if (last !== null) params.set("last_event_id", String(last));
    source = new EventSource(`/api/events?${params}`);
    source.addEventListener("open", () => on.connection(upstream === "live" ? "live" : upstream, ""));
    source.addEventListener("status", (event) => {
      const status = JSON.parse(event.data);
      upstream = status.upstream;
      on.connection(upstream, status.message || "");
    });
    source.addEventListener("snapshot", (event) => {
      const data = JSON.parse(event.data);
      last = data.revision;
      on.snapshot(data.revision, data.processes);
    });
    source.addEventListener("changes", (event) => {
      const data = JSON.parse(event.data);
      last = data.revision;
      on.changes(data.revision, data.processes, data.removed);
    });
    source.addEventListener("refused", (event) => {
      // The controller refused the watch (the stream ends): say why; it is tried again later.
      on.error(JSON.parse(event.data).error);
    });
    source.addEventListener("error", () => {
      if (stopped) return;
      on.connection("reconnecting", "the connection to the GUI server broke");
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        retry = setTimeout(open, 2000);
      }
    });
  };
  open();
  return () => {
    stopped = true;
    clearTimeout(retry);
    if (source) source.close();
  };
}
