// The page: a header (views, who is logged in, the connection), and the view the URL names.
import { html, render, useEffect, useState } from "./html.js";
import { get, post } from "./api.js";
import { readView, viewUrl } from "./url.js";
import { ScopePage } from "./scope.js";
import { LoginPage, ScopesPage, WorkersPage } from "./pages.js";
import { Spinner } from "./widgets.js";

const CONNECTION_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
};

function Connection({ state, message }) {
  return html`<span class=${`connection connection-${state}`} role="status" aria-live="polite" title=${message || ""}>
    <span class="dot" aria-hidden="true"></span>${CONNECTION_TEXT[state] || state}
  </span>`;
}

function App() {
  const [view, setViewState] = useState(readView());
  const [session, setSession] = useState(null); // null: asking; {login: true}: log in; else who
  const [connection, setConnection] = useState({ state: "connecting", message: "" });

  const setView = (next, replace = false) => {
    const url = viewUrl(next);
    if (url !== location.pathname + location.search) {
      if (replace) history.replaceState(null, "", url);
      else history.pushState(null, "", url);
    }
    setViewState(next);
  };
  useEffect(() => {
    const onPop = () => setViewState(readView());
    window.addEventListener("popstate", onPop);
    return () => window.removeEventListener("popstate", onPop);
  }, []);
  const ask = () =>
    get("/api/session")
      .then(setSession)
      .catch((e) => setSession(e.status === 401 ? { login: true } : { error: e.message }));
  useEffect(() => {
    ask();
  }, []);
  useEffect(() => {
    document.title = view.view === "scope" ? `${view.scope} · Shards` : "Shards Process Manager";
  }, [view.view, view.scope]);

  const logout = async () => {
    await post("/api/logout").catch(() => null);
    setSession({ login: true });
  };
  const openScope = (scope, process = "") =>
    setView({ view: "scope", scope, q: "", hideDetails: true, hideSpecial: true, focus: true, process });

  let body;
  if (session === null) body = html`<p><${Spinner} /> Loading…</p>`;
  else if (session.login) body = html`<${LoginPage} onLoggedIn=${setSession} />`;
  else if (session.error) body = html`<div class="alert alert-error" role="alert">${session.error}</div>`;
  else if (view.view === "workers") body = html`<${WorkersPage} openScope=${openScope} />`;
  else if (view.view === "scope")
    body = html`<${ScopePage} key=${view.scope} view=${view} setView=${setView}
      setConnection=${(state, message) => setConnection({ state, message })} />`;
  else body = html`<${ScopesPage} open=${openScope} />`;

  const nav = (name, target) => html`<a href=${viewUrl(target)} aria-current=${view.view === name ? "page" : null}
    onClick=${(e) => {
      e.preventDefault();
      setView(target);
    }}>${name === "scopes" ? "Scopes" : "Workers"}</a>`;
  return html`<div class="app">
    <header class="top">
      <a class="brand" href="/" onClick=${(e) => {
          e.preventDefault();
          setView({ view: "scopes" });
        }}><img src="/static/favicon.svg" alt="" width="22" height="22" /> Shards Process Manager</a>
      <nav aria-label="Views">${nav("scopes", { view: "scopes" })}${nav("workers", { view: "workers" })}</nav>
      <span class="spacer"></span>
      ${view.view === "scope" ? html`<${Connection} state=${connection.state} message=${connection.message} />` : null}
      ${session && session.auth_enabled
        ? html`<span class="who">${session.principal}</span>
            <button type="button" class="btn btn-link" onClick=${logout}>Log out</button>`
        : null}
    </header>
    <main>${body}</main>
  </div>`;
}

const root = document.getElementById("root");
root.textContent = "";
render(html`<${App} />`, root);
