// Small pieces in the antd look: buttons, spinner, progress bar, alerts, the confirmation dialog.
import { html, useEffect, useRef } from "./html.js";

export function Spinner({ label = "Loading" }) {
  return html`<span class="spinner" role="status" aria-label=${label}></span>`;
}

export function Button({ kind = "default", danger = false, disabled, onClick, label, busy, children, title }) {
  const cls = `btn btn-${kind}${danger ? " btn-danger" : ""}`;
  return html`<button type="button" class=${cls} disabled=${disabled} onClick=${onClick}
    aria-label=${label} title=${title || label} aria-busy=${busy ? "true" : "false"}>
    ${children}${busy ? html`<${Spinner} label="working" />` : null}
  </button>`;
}

export function ProgressBar({ rate, status, label }) {
  const percent = Math.max(0, Math.min(100, Math.round((rate || 0) * 100)));
  return html`<div class=${`progress progress-${status}`}>
    <div class="progress-track" role="progressbar" aria-label=${label}
      aria-valuemin="0" aria-valuemax="100" aria-valuenow=${percent}>
      <div class="progress-fill" style=${{ width: `${percent}%` }}></div>
    </div>
    <span class="progress-text">${status === "success" && percent === 100 ? "✓" : `${percent}%`}</span>
  </div>`;
}

export function Alerts({ alerts, onClose }) {
  if (!alerts.length) return null;
  return html`<div class="alerts">
    ${alerts.map(
      (a) => html`<div class=${`alert alert-${a.type}`} role="alert" key=${a.id}>
        <span class="alert-message">${a.message}</span>
        <button type="button" class="alert-close" aria-label="Close this message" onClick=${() => onClose(a.id)}>×</button>
      </div>`,
    )}
  </div>`;
}

// A modal dialog (the platform's <dialog>: focus moves in, Escape closes).
export function Confirm({ title, text, okLabel = "Yes", cancelLabel = "No", danger = true, onOk, onCancel }) {
  const ref = useRef(null);
  useEffect(() => {
    const dialog = ref.current;
    const opener = document.activeElement; // the button that asked for the dialog
    if (dialog && !dialog.open) dialog.showModal();
    return () => {
      if (dialog && dialog.open) dialog.close();
      // Removed by a render, the dialog gave the focus back to nobody: a keyboard user
      // was left on the page's body. Back to the button that opened it.
      if (opener && opener.isConnected && typeof opener.focus === "function") opener.focus();
    };
  }, []);
  return html`<dialog ref=${ref} class="confirm" aria-labelledby="confirm-title" onCancel=${(e) => {
      e.preventDefault();
      onCancel();
    }}>
    <h2 id="confirm-title"><span class="warn-icon" aria-hidden="true">!</span>${title}</h2>
    ${text ? html`<p class="confirm-text">${text}</p>` : null}
    <div class="confirm-buttons">
      <button type="button" class="btn btn-default" onClick=${onCancel}>${cancelLabel}</button>
      <button type="button" class=${`btn btn-primary${danger ? " btn-danger" : ""}`} autofocus onClick=${onOk}>${okLabel}</button>
    </div>
  </dialog>`;
}

export function StateTag({ state, label }) {
  return html`<span class=${`tag tag-${state}`}>${label}</span>`;
}
