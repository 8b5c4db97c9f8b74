// The process table: the original's columns, rendering only the rows in view
// (rows have one height, so 10,000 processes cost what the visible ones do).
import { html, useEffect, useRef, useState } from "./html.js";
import { Button, ProgressBar, Spinner, StateTag } from "./widgets.js";
import {
  ACTIVE,
  DISMISSABLE,
  STATE_LABELS,
  STOPPING,
  attemptText,
  barStatus,
  clockTime,
  overdueText,
  progressMessage,
} from "./format.js";

export const ROW_HEIGHT = 64;
const OVERSCAN = 8;

function Highlighted({ text, regex }) {
  if (!regex || !text) return text;
  const parts = [];
  const global = new RegExp(regex.source, "gi");
  let at = 0;
  for (const match of text.matchAll(global)) {
    if (!match[0]) continue;
    if (match.index > at) parts.push(text.slice(at, match.index));
    parts.push(html`<mark>${match[0]}</mark>`);
    at = match.index + match[0].length;
  }
  if (!parts.length) return text;
  if (at < text.length) parts.push(text.slice(at));
  return parts;
}

function Actions({ record, may, pending, onRun, onStop, onDismiss, onHistory }) {
  const active = ACTIVE.has(record.state);
  const stopping = STOPPING.has(record.state) || pending === "stop";
  const retrying = !active && record.next_attempt_at != null; // a stop cancels the attempts to come
  // Stop and Dismiss never show together (one is for an active process, the other for an ended one):
  // they share the middle slot, so that Runs lines up on every row.
  const canDismiss =
    may.dismiss && !retrying && DISMISSABLE.has(record.state) && (record.error || (record.progress && record.progress.message));
  const name = record.name || record.process_id;
  // As the original (antd): a warning makes a danger button, and a confirmation; a special process a plain one.
  const runKind = record.special && !record.warning ? "default" : "primary";
  return html`<div class="actions">
    ${may.launch
      ? html`<${Button} kind=${runKind} danger=${!!record.warning} disabled=${active || pending === "launch"}
          busy=${pending === "launch"} label=${`Run ${name}`} title=${record.warning ? `Run ${name} (asks first)` : ""}
          onClick=${() => onRun(record)}>Run</${Button}>`
      : null}
    ${(active || retrying) && may.stop
      ? html`<${Button} disabled=${stopping} busy=${stopping} label=${`Stop ${name}`}
          title=${retrying ? `Stop ${name}: cancel the attempts still to come` : ""}
          onClick=${() => onStop(record)}>Stop</${Button}>`
      : canDismiss
        ? html`<${Button} disabled=${pending === "dismiss"} label=${`Dismiss the messages of ${name}`}
            onClick=${() => onDismiss(record)}>Dismiss</${Button}>`
        : html`<span class="slot" aria-hidden="true"></span>`}
    <${Button} kind="link" label=${`Runs of ${name}`} onClick=${() => onHistory(record)}>Runs</${Button}>
  </div>`;
}

function ProgressCell({ record, now }) {
  const { clock, text, stopping } = progressMessage(record, now);
  const active = ACTIVE.has(record.state);
  const name = record.name || record.process_id;
  const overdue = active && record.stop_overdue_since != null;
  return html`<div class="progress-cell">
    <div class="progress-line">
      ${active ? html`<span class="sync" aria-hidden="true"></span>` : null}
      ${clock !== null ? html`<span class="clock">${clock}</span>` : null}
      <span class="message" title=${text}>${text}</span>
      ${stopping ? html`<span class="stopping-flag">${stopping}</span>` : null}
    </div>
    ${overdue
      ? html`<div class="overdue" role="note" title=${overdueText(record)}>⚠ ${overdueText(record)}</div>`
      : html`<div class="progress-row">
          <${ProgressBar} rate=${record.progress ? record.progress.rate : 0} status=${barStatus(record.state)}
            label=${`Progress of ${name}`} />
        </div>`}
  </div>`;
}

function StateCell({ record }) {
  const attempts = attemptText(record);
  const limit = ACTIVE.has(record.state) && record.timeout_s != null ? `time limit ${record.timeout_s} s` : "";
  return html`<${StateTag} state=${record.state} label=${STATE_LABELS[record.state] || record.state} />
    ${attempts ? html`<div class="state-note">${attempts}</div>` : null}
    ${record.next_attempt_at != null
      ? html`<div class="state-note next-attempt" title=${`the next attempt starts at ${clockTime(record.next_attempt_at)}`}>
          next at ${clockTime(record.next_attempt_at)}</div>`
      : null}
    ${limit ? html`<div class="state-note">${limit}</div>` : null}`;
}

function Row({ record, regex, now, may, pending, handlers }) {
  const indent = Math.max(0, (record.detail_level || 1) - 1);
  return html`<tr class=${`row state-${record.state}`} data-process-id=${record.process_id} style=${{ height: `${ROW_HEIGHT}px` }}>
    <td class="col-actions"><${Actions} record=${record} may=${may} pending=${pending} ...${handlers} /></td>
    <td class="col-topic">
      <div class=${`topic indent-${indent}`}>
        <span class="topic-name"><${Highlighted} text=${record.name || record.process_id} regex=${regex} /></span>
        <span class="topic-id"><${Highlighted} text=${record.process_id} regex=${regex} /></span>
      </div>
    </td>
    <td class="col-special">${record.special ? html`<span aria-label="special" title="special">✓</span>` : null}</td>
    <td class="col-level">${record.detail_level}</td>
    <td class="col-state"><${StateCell} record=${record} /></td>
    <td class="col-progress"><${ProgressCell} record=${record} now=${now} /></td>
  </tr>`;
}

export function ProcessTable({ rows, regex, now, may, pending, handlers, loading }) {
  const scroller = useRef(null);
  const [top, setTop] = useState(0);
  const [height, setHeight] = useState(800);
  useEffect(() => {
    const element = scroller.current;
    if (!element) return undefined;
    let frame = 0;
    const onScroll = () => {
      if (frame) return;
      frame = requestAnimationFrame(() => {
        frame = 0;
        setTop(element.scrollTop);
      });
    };
    const observer = new ResizeObserver(() => setHeight(element.clientHeight || 800));
    observer.observe(element);
    element.addEventListener("scroll", onScroll, { passive: true });
    return () => {
      element.removeEventListener("scroll", onScroll);
      observer.disconnect();
      cancelAnimationFrame(frame);
    };
  }, []);
  const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
  const last = Math.min(rows.length, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
  const visible = rows.slice(first, last);
  return html`<div class="table-scroll" ref=${scroller} tabindex="-1">
    <table class="processes" aria-label="Processes" aria-rowcount=${rows.length} data-ready=${loading ? "0" : "1"}>
      <colgroup>
        <col class="c-actions" /><col class="c-topic" /><col class="c-special" /><col class="c-level" />
        <col class="c-state" /><col class="c-progress" />
      </colgroup>
      <thead>
        <tr>
          <th scope="col"><span class="sr-only">Actions</span></th>
          <th scope="col">Topic</th>
          <th scope="col">Special?</th>
          <th scope="col">Detail level</th>
          <th scope="col">State</th>
          <th scope="col">Progress</th>
        </tr>
      </thead>
      <tbody>
        ${first > 0 ? html`<tr class="spacer" aria-hidden="true" style=${{ height: `${first * ROW_HEIGHT}px` }}><td colspan="6"></td></tr>` : null}
        ${visible.map(
          (record) => html`<${Row} key=${record.process_id} record=${record} regex=${regex} now=${now} may=${may}
            pending=${pending[record.process_id]} handlers=${handlers} />`,
        )}
        ${last < rows.length
          ? html`<tr class="spacer" aria-hidden="true" style=${{ height: `${(rows.length - last) * ROW_HEIGHT}px` }}><td colspan="6"></td></tr>`
          : null}
        ${!rows.length && !loading
          ? html`<tr class="empty"><td colspan="6">No process matches these filters.</td></tr>`
          : null}
        ${loading ? html`<tr class="empty"><td colspan="6"><${Spinner} label="Loading the processes" /> Loading…</td></tr>` : null}
      </tbody>
    </table>
  </div>`;
}
