// A process's run history: each run's state, times, error and log tail; children under their parent run.
import { html, useEffect, useRef, useState } from "./html.js";
import { get } from "./api.js";
import { STATE_LABELS, formatDuration, formatTime } from "./format.js";
import { Spinner, StateTag } from "./widgets.js";

function RunItem({ run }) {
  const took = run.started_at != null && run.ended_at != null ? formatDuration((run.ended_at - run.started_at) / 1000) : null;
  return html`<li class="run" data-run-id=${run.run_id}>
    <div class="run-head">
      <${StateTag} state=${run.state} label=${STATE_LABELS[run.state] || run.state} />
      <span class="run-process">${run.process_id}</span>
      <code class="run-id">${run.run_id}</code>
    </div>
    <dl class="run-times">
      <dt>created</dt><dd>${formatTime(run.created_at)}</dd>
      ${run.started_at != null ? html`<dt>started</dt><dd>${formatTime(run.started_at)}</dd>` : null}
      ${run.ended_at != null ? html`<dt>ended</dt><dd>${formatTime(run.ended_at)}${took ? `, in ${took}` : ""}</dd>` : null}
      ${run.worker_id ? html`<dt>worker</dt><dd>${run.worker_id}</dd>` : null}
      ${run.attempt > 1 ? html`<dt>attempt</dt><dd>${run.attempt}</dd>` : null}
      ${run.timeout_s != null
        ? html`<dt>time limit</dt><dd>${run.timeout_s} s${run.timed_out ? " (timed out)" : ""}</dd>`
        : null}
      ${run.stop_overdue_since != null
        ? html`<dt>stop overdue</dt><dd>since ${formatTime(run.stop_overdue_since)}</dd>`
        : null}
    </dl>
    ${run.error ? html`<p class="run-error">${run.error}</p>` : null}
    ${run.progress && run.progress.message ? html`<p class="run-progress">${run.progress.message}</p>` : null}
    ${run.log_tail.length
      ? html`<details class="run-log"><summary>Log tail (${run.log_tail.length} lines)</summary>
          <pre>${run.log_tail.join("\n")}</pre></details>`
      : null}
    ${run.children.length
      ? html`<ul class="runs children" aria-label=${`Runs launched by ${run.run_id}`}>
          ${run.children.map((child) => html`<${RunItem} key=${child.run_id} run=${child} />`)}
        </ul>`
      : null}
  </li>`;
}

export function RunsPanel({ scope, processId, record, onClose }) {
  const [runs, setRuns] = useState(null);
  const [error, setError] = useState("");
  const closeRef = useRef(null);
  const key = record ? `${record.run_id}|${record.state}` : "";
  useEffect(() => {
    let cancelled = false;
    get("/api/runs", { scope, process_id: processId, limit: "20" })
      .then((r) => !cancelled && (setRuns(r), setError("")))
      .catch((e) => !cancelled && setError(e.message));
    return () => {
      cancelled = true;
    };
  }, [scope, processId, key]);
  useEffect(() => {
    if (closeRef.current) closeRef.current.focus();
    const onKey = (e) => e.key === "Escape" && onClose();
    document.addEventListener("keydown", onKey);
    return () => document.removeEventListener("keydown", onKey);
  }, [processId]);
  const title = record ? record.name || processId : processId;
  return html`<aside class="drawer" role="dialog" aria-label=${`Runs of ${title}`}>
    <div class="drawer-head">
      <h2>Runs of ${title}</h2>
      <button type="button" class="btn btn-default" ref=${closeRef} onClick=${onClose} aria-label="Close the runs">Close</button>
    </div>
    ${error ? html`<div class="alert alert-error" role="alert">${error}</div>` : null}
    ${runs === null && !error ? html`<p><${Spinner} label="Loading the runs" /> Loading…</p>` : null}
    ${runs && !runs.length ? html`<p class="muted">This process has not run yet.</p>` : null}
    ${runs && runs.length
      ? html`<ul class="runs" aria-label="Runs, newest first">${runs.map((run) => html`<${RunItem} key=${run.run_id} run=${run} />`)}</ul>`
      : null}
  </aside>`;
}
