// The original UI's wording of each state, and the look of its progress bar.

export const ACTIVE = new Set(["scheduled", "running", "stop_requested", "stopping"]);
export const STOPPING = new Set(["stop_requested", "stopping"]);
export const DISMISSABLE = new Set(["failed", "stopped", "lost"]);

export const isActive = (record) => ACTIVE.has(record.state);

const pad = (x) => String(Math.floor(x)).padStart(2, "0");

// Local wall-clock time, HH:MM:SS (as the CLI writes it; one format throughout the page).
export function clockTime(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function formatTime(ms) {
  return ms == null ? "(missing time)" : clockTime(ms);
}

// "attempt 2 of 5" for a process that retries, else "".
export const attemptText = (record) =>
  record.max_attempts && record.attempt ? `attempt ${record.attempt} of ${record.max_attempts}` : "";

// A stop the code ignores (it runs in a thread, so nothing can force it), in the user's words.
export const overdueText = (record) =>
  `stop overdue since ${clockTime(record.stop_overdue_since)} — the code ignores the stop; ` +
  `use isolation="process" to make stops forceful`;

// Active past its time limit: the controller is stopping it for that.
export const overTimeLimit = (record, now) =>
  record.timeout_s != null && record.running_since != null && now - record.running_since >= record.timeout_s * 1000;

const capitalized = (text) => (text ? text[0].toUpperCase() + text.slice(1) : text);

// Seconds as a clock: 80 -> "01:20", 3725 -> "01:02:05".
export function formatDuration(secs) {
  if (secs == null) return "missing time";
  if (secs < 0) secs = 0;
  return secs >= 3600
    ? `${pad(secs / 3600)}:${pad((secs % 3600) / 60)}:${pad(secs % 60)}`
    : `${pad(secs / 60)}:${pad(secs % 60)}`;
}

// The bar's look: active, success, exception or normal (as antd's Progress).
export function barStatus(state) {
  if (ACTIVE.has(state)) return "active";
  if (state === "done") return "success";
  if (state === "failed" || state === "lost") return "exception";
  return "normal";
}

// What the progress cell says: { clock, text, stopping } (clock: the running time, or null;
// stopping: the flag shown after the message, or false).
export function progressMessage(record, now) {
  const p = record.progress || { message: "", rate: 0 };
  const clock = record.running_since != null ? formatDuration((now - record.running_since) / 1000) : null;
  switch (record.state) {
    case "scheduled":
      return { clock: null, text: "Scheduled…", stopping: false };
    case "running":
      return { clock, text: p.message, stopping: false };
    case "stop_requested":
    case "stopping":
      return {
        clock,
        text: p.message,
        stopping: overTimeLimit(record, now) ? `(stopping: over its ${record.timeout_s} s time limit)` : "(stopping)",
      };
    case "stopped":
      return { clock: null, text: `Stopped at ${formatTime(record.stopped_at)}`, stopping: false };
    case "failed":
      return {
        clock: null,
        text: `${capitalized(record.error) || "Failed"} at ${formatTime(record.failed_at)}`,
        stopping: false,
      };
    case "lost":
      return {
        clock: null,
        text: `Lost at ${formatTime(record.failed_at)}${record.error ? `: ${record.error}` : ""}`,
        stopping: false,
      };
    case "done":
      return {
        clock: null,
        text: `Finished at ${formatTime(record.done_at)}, in ${formatDuration(record.duration)}.`,
        stopping: false,
      };
    default:
      return { clock: null, text: "", stopping: false };
  }
}

export const STATE_LABELS = {
  idle: "idle",
  scheduled: "scheduled",
  running: "running",
  stop_requested: "stop requested",
  stopping: "stopping",
  stopped: "stopped",
  failed: "failed",
  done: "done",
  lost: "lost",
};

export function ago(ms, now) {
  if (ms == null) return "never";
  const secs = Math.max(0, Math.round((now - ms) / 1000));
  if (secs < 60) return `${secs} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  return formatTime(ms);
}

// The search box: a case-insensitive regular expression; { regex, error }.
export function searchPattern(text) {
  if (!text) return { regex: null, error: "" };
  try {
    return { regex: new RegExp(text, "i"), error: "" };
  } catch (e) {
    return { regex: null, error: `"${text}" is not a valid search pattern: ${e.message}` };
  }
}
