// The view lives in the URL, so that a link reproduces it:
//   /?scope=demo&q=sheep&hideDetails=0&hideSpecial=0&focus=0&process=count-sheep
//   /?view=workers
// The filters' defaults (on) are left out of the URL.

export const DEFAULTS = { q: "", hideDetails: true, hideSpecial: true, focus: true };

export function readView() {
  const p = new URLSearchParams(location.search);
  const flag = (name) => p.get(name) !== "0";
  return {
    view: p.get("view") === "workers" ? "workers" : p.get("scope") ? "scope" : "scopes",
    scope: p.get("scope") || "",
    q: p.get("q") || "",
    hideDetails: flag("hideDetails"),
    hideSpecial: flag("hideSpecial"),
    focus: flag("focus"),
    process: p.get("process") || "",
  };
}

export function viewUrl(view) {
  const p = new URLSearchParams();
  if (view.view === "workers") p.set("view", "workers");
  if (view.view === "scope") {
    p.set("scope", view.scope);
    if (view.q) p.set("q", view.q);
    for (const name of ["hideDetails", "hideSpecial", "focus"]) if (!view[name]) p.set(name, "0");
    if (view.process) p.set("process", view.process);
  }
  const query = p.toString();
  return query ? `/?${query}` : "/";
}
