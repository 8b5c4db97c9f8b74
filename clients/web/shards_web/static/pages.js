// The scope picker, the workers page and the login form.
import { html, useEffect, useState } from "./html.js";
import { get, post } from "./api.js";
import { STATE_LABELS, ago } from "./format.js";
import { Spinner, StateTag } from "./widgets.js";

function usePolled(path, everyMs) {
  const [data, setData] = useState(null);
  const [error, setError] = useState("");
  useEffect(() => {
    let cancelled = false;
    let timer = null;
    const load = () =>
      get(path)
        .then((d) => !cancelled && (setData(d), setError("")))
        .catch((e) => !cancelled && setError(e.message))
        .finally(() => {
          if (!cancelled) timer = setTimeout(load, everyMs);
        });
    load();
    return () => {
      cancelled = true;
      clearTimeout(timer);
    };
  }, [path]);
  return { data, error };
}

export function ScopesPage({ open }) {
  const { data, error } = usePolled("/api/scopes", 3000);
  const [typed, setTyped] = useState("");
  return html`<section aria-labelledby="scopes-title">
    <h1 id="scopes-title">Scopes</h1>
    ${error ? html`<div class="alert alert-error" role="alert">${error}</div>` : null}
    <form class="open-scope" onSubmit=${(e) => {
        e.preventDefault();
        if (typed.trim()) open(typed.trim());
      }}>
      <label>Open a scope: <input value=${typed} onInput=${(e) => setTyped(e.currentTarget.value)} placeholder="scope id" /></label>
      <button type="submit" class="btn btn-primary">Open</button>
    </form>
    ${data === null && !error ? html`<p><${Spinner} /> Loading…</p>` : null}
    ${data && !data.length ? html`<p class="muted">No scope has any process yet.</p>` : null}
    ${data && data.length
      ? html`<table class="plain" aria-label="Scopes">
          <thead><tr><th scope="col">Scope</th><th scope="col">Processes</th><th scope="col">Active</th><th scope="col">By state</th></tr></thead>
          <tbody>
            ${data.map(
              (s) => html`<tr key=${s.scope_id} data-scope-id=${s.scope_id}>
                <td><a href=${`/?scope=${encodeURIComponent(s.scope_id)}`} onClick=${(e) => {
                    e.preventDefault();
                    open(s.scope_id);
                  }}>${s.scope_id}</a></td>
                <td>${s.processes}</td>
                <td>${s.active}</td>
                <td class="state-counts">${Object.entries(s.counts).map(
                  ([state, n]) => html`<${StateTag} key=${state} state=${state} label=${`${n} ${STATE_LABELS[state] || state}`} />`,
                )}</td>
              </tr>`,
            )}
          </tbody>
        </table>`
      : null}
  </section>`;
}

export function WorkersPage({ openScope }) {
  const { data, error } = usePolled("/api/workers", 2000);
  const now = Date.now();
  return html`<section aria-labelledby="workers-title">
    <h1 id="workers-title">Workers</h1>
    ${error ? html`<div class="alert alert-error" role="alert">${error}</div>` : null}
    ${data === null && !error ? html`<p><${Spinner} /> Loading…</p>` : null}
    ${data && !data.length ? html`<p class="muted">No worker is registered.</p>` : null}
    ${data && data.length
      ? html`<table class="plain" aria-label="Workers">
          <thead><tr>
            <th scope="col">Worker</th><th scope="col">Address</th><th scope="col">Status</th>
            <th scope="col">Busy slots</th><th scope="col">Serves scopes</th><th scope="col">Last heartbeat</th>
            <th scope="col">Runs it holds</th>
          </tr></thead>
          <tbody>
            ${data.map(
              (w) => html`<tr key=${w.worker_id} data-worker-id=${w.worker_id}>
                <td><code>${w.worker_id}</code></td>
                <td><code>${w.address}</code></td>
                <td><${StateTag} state=${w.alive ? "done" : "failed"} label=${w.alive ? "alive" : "silent"} /></td>
                <td>${w.running} of ${w.capacity}</td>
                <td>${w.scopes.join(", ")}</td>
                <td>${ago(w.last_heartbeat_at, now)}</td>
                <td>${w.runs.length
                  ? html`<ul class="held">${w.runs.map(
                      (r) => html`<li key=${r.run_id}><a href=${`/?scope=${encodeURIComponent(r.scope_id)}&process=${encodeURIComponent(r.process_id)}`}
                        onClick=${(e) => {
                          e.preventDefault();
                          openScope(r.scope_id, r.process_id);
                        }}>${r.scope_id} / ${r.name || r.process_id}</a> <${StateTag} state=${r.state} label=${STATE_LABELS[r.state]} /></li>`,
                    )}</ul>`
                  : html`<span class="muted">none</span>`}</td>
              </tr>`,
            )}
          </tbody>
        </table>`
      : null}
  </section>`;
}

export function LoginPage({ onLoggedIn, message }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    try {
      onLoggedIn(await post("/api/login", { token }));
    } catch (err) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<section class="login" aria-labelledby="login-title">
    <h1 id="login-title">Log in</h1>
    <p class="muted">${message || "The controller asks for a token. It is kept in a cookie this page's scripts cannot read."}</p>
    ${error ? html`<div class="alert alert-error" role="alert">${error}</div>` : null}
    <form onSubmit=${submit}>
      <label>Access token <input type="password" autocomplete="current-password" value=${token}
        onInput=${(e) => setToken(e.currentTarget.value)} required /></label>
      <button type="submit" class="btn btn-primary" disabled=${busy || !token}>Log in</button>
    </form>
  </section>`;
}
