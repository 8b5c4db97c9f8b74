// The scope page: the original's ProcessManagerUI, live from /api/events.
import { html, useEffect, useMemo, useRef, useState } from "./html.js";
import { followScope, get, post } from "./api.js";
import { ProcessTable } from "./table.js";
import { RunsPanel } from "./runs.js";
import { Alerts, Button, Confirm, Spinner } from "./widgets.js";
import { isActive, searchPattern } from "./format.js";

// The controller's order: by detail level, then name (case-insensitive), then id. Plain
// comparisons of keys made once (localeCompare costs seconds on 10,000 rows).
const sortKey = (r) => [r.detail_level || 1, (r.name || "").toLowerCase(), r.process_id];
const compare = (x, y) => (x < y ? -1 : x > y ? 1 : 0);
const order = (a, b) => a.key[0] - b.key[0] || compare(a.key[1], b.key[1]) || compare(a.key[2], b.key[2]);
const sortedIds = (records) =>
  [...records.values()]
    .map((r) => ({ key: sortKey(r), id: r.process_id }))
    .sort(order)
    .map((e) => e.id);

// The records of a scope: a Map kept current by the event stream, and the sorted order
// (recomputed only when processes come or go, not on every progress report).
function useScopeRecords(scope, onConnection, onRefused) {
  const [state, setState] = useState({ version: 0, loading: true });
  const store = useRef({ records: new Map(), sorted: [], orderDirty: true });
  useEffect(() => {
    store.current = { records: new Map(), sorted: [], orderDirty: true };
    setState({ version: 0, loading: true });
    let frame = 0;
    const bump = (loading = false) => {
      if (frame) return;
      frame = requestAnimationFrame(() => {
        frame = 0;
        setState((s) => ({ version: s.version + 1, loading }));
      });
    };
    const stop = followScope(scope, {
      snapshot(revision, processes) {
        const records = new Map();
        for (const record of processes) records.set(record.process_id, record);
        store.current = { records, sorted: [], orderDirty: true };
        bump(false);
      },
      changes(revision, processes, removed) {
        const s = store.current;
        for (const record of processes) {
          if (!s.records.has(record.process_id)) s.orderDirty = true;
          s.records.set(record.process_id, record);
        }
        for (const id of removed) if (s.records.delete(id)) s.orderDirty = true;
        bump(false);
      },
      connection: onConnection,
      error: onRefused,
    });
    return () => {
      stop();
      cancelAnimationFrame(frame);
    };
  }, [scope]);
  const s = store.current;
  if (s.orderDirty) {
    s.sorted = sortedIds(s.records);
    s.orderDirty = false;
  }
  return { ...state, records: s.records, sorted: s.sorted };
}

function useNow(enabled) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!enabled) return undefined;
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, [enabled]);
  return enabled ? now : Date.now();
}

let alertIds = 0;

// The user's rights in the scope (WhoAmI) are asked while the stream opens: the buttons
// follow them, and a scope the user may not list is said so (its stream is refused).
export function ScopePage({ view, setView, setConnection }) {
  const { scope } = view;
  const [may, setMay] = useState(null);
  const [error, setError] = useState("");
  useEffect(() => {
    let cancelled = false;
    get("/api/me", { scope })
      .then((me) => {
        if (cancelled) return;
        setMay(Object.fromEntries(me.actions.map((a) => [a, true])));
        if (!me.actions.includes("list")) setError(`${me.principal} may not list in scope ${scope}.`);
      })
      .catch((e) => !cancelled && setError(e.message));
    return () => {
      cancelled = true;
    };
  }, [scope]);
  if (error) {
    return html`<section class="scope-page" aria-labelledby="scope-title">
      <h1 id="scope-title">Processes of <span class="scope-name">${scope}</span></h1>
      <div class="alert alert-error" role="alert">${error}</div>
    </section>`;
  }
  return html`<${ScopeView} view=${view} setView=${setView} setConnection=${setConnection} may=${may || {}} />`;
}

function ScopeView({ view, setView, setConnection, may }) {
  const { scope } = view;
  const [alerts, setAlerts] = useState([]);
  const [pending, setPending] = useState({});
  const [confirm, setConfirm] = useState(null);
  const [search, setSearch] = useState(view.q);
  const alert = (message, type = "error") => setAlerts((list) => [...list.slice(-4), { id: ++alertIds, type, message }]);

  useEffect(() => setSearch(view.q), [view.q]);

  const data = useScopeRecords(scope, setConnection, (error) => alert(error.message));
  const all = data.sorted.map((id) => data.records.get(id));
  const pattern = useMemo(() => searchPattern(search), [search]);
  const hasActive = all.some(isActive);
  const rows = all.filter((r) => {
    if (pattern.error) return true;
    if (pattern.regex && !(pattern.regex.test(r.name) || pattern.regex.test(r.process_id))) return false;
    if (isActive(r)) return true; // active processes always show
    return (
      (!view.hideDetails || r.detail_level === 1) &&
      (!view.hideSpecial || !r.special) &&
      (!view.focus || !hasActive)
    );
  });
  const now = useNow(hasActive);
  useEffect(() => {
    // When the first full table is on screen (bench/web.py reads it).
    if (!data.loading && !performance.getEntriesByName("shards:first-table").length) {
      performance.mark("shards:first-table");
    }
  }, [data.loading]);

  const act = async (record, action, path) => {
    setPending((p) => ({ ...p, [record.process_id]: action }));
    try {
      await post(path, { scope_id: scope, process_id: record.process_id });
    } catch (e) {
      alert(e.message);
    } finally {
      setPending((p) => {
        const next = { ...p };
        delete next[record.process_id];
        return next;
      });
    }
  };
  const run = (record) =>
    record.warning
      ? setConfirm({
          title: `Run ${record.name || record.process_id}?`,
          text: record.warning,
          onOk: () => act(record, "launch", "/api/launch"),
        })
      : act(record, "launch", "/api/launch");
  const handlers = {
    onRun: run,
    onStop: (record) => act(record, "stop", "/api/stop"),
    onDismiss: (record) => act(record, "dismiss", "/api/dismiss"),
    onHistory: (record) => setView({ ...view, process: record.process_id }),
  };
  const reset = () =>
    setConfirm({
      title: `Reset the processes of ${scope}?`,
      text: "Every record of this scope and its messages are removed, and the scope is defined again from its workers.",
      onOk: async () => {
        try {
          await post("/api/reset", { scope_id: scope });
          alert(`The processes of ${scope} were reset.`, "success");
        } catch (e) {
          alert(`Can't reset processes: ${e.message}`);
        }
      },
    });
  const define = async () => {
    try {
      const answer = await post("/api/define", { scope_id: scope });
      alert(`${answer.processes.length} processes defined in ${scope}.`, "success");
    } catch (e) {
      alert(`Can't define processes: ${e.message}`);
    }
  };
  const toggle = (name) => (event) => setView({ ...view, [name]: event.currentTarget.checked });
  const onSearch = (event) => {
    const q = event.currentTarget.value;
    setSearch(q);
    setView({ ...view, q }, true);
  };
  const selected = view.process ? data.records.get(view.process) : null;
  const mayAll = may;

  return html`<section class="scope-page" aria-labelledby="scope-title">
    <div class="page-head">
      <h1 id="scope-title">Processes of <span class="scope-name">${scope}</span></h1>
      <span class="counts">${data.loading ? "" : `Showing ${rows.length} of ${all.length} processes`}</span>
    </div>
    <${Alerts} alerts=${alerts} onClose=${(id) => setAlerts((list) => list.filter((a) => a.id !== id))} />
    <form class="filters" role="search" onSubmit=${(e) => e.preventDefault()}>
      <label class="search">
        <span>Search for process:</span>
        <input type="search" value=${search} onInput=${onSearch} placeholder="name or id (regular expression)"
          aria-invalid=${pattern.error ? "true" : "false"} aria-describedby="search-error" />
      </label>
      ${data.loading ? html`<${Spinner} label="Loading the processes" />` : null}
      <label class="check"><input type="checkbox" checked=${view.focus} onChange=${toggle("focus")} /> Focus on active</label>
      <label class="check"><input type="checkbox" checked=${view.hideDetails} onChange=${toggle("hideDetails")} /> Hide details</label>
      <label class="check"><input type="checkbox" checked=${view.hideSpecial} onChange=${toggle("hideSpecial")} /> Hide special</label>
    </form>
    <p id="search-error" class="search-error" role=${pattern.error ? "alert" : null}>${pattern.error}</p>
    <${ProcessTable} rows=${rows} regex=${pattern.regex} now=${now} may=${mayAll} pending=${pending}
      handlers=${handlers} loading=${data.loading} />
    <div class="page-foot">
      ${mayAll.purge && mayAll.define
        ? html`<${Button} danger=${true} label="Reset processes" onClick=${reset}>Reset processes</${Button}>`
        : null}
      ${mayAll.define && !data.loading && !all.length
        ? html`<${Button} kind="primary" label="Define processes" onClick=${define}>Define processes</${Button}>`
        : null}
    </div>
    ${view.process
      ? html`<${RunsPanel} scope=${scope} processId=${view.process} record=${selected}
          onClose=${() => setView({ ...view, process: "" })} />`
      : null}
    ${confirm
      ? html`<${Confirm} title=${confirm.title} text=${confirm.text} onCancel=${() => setConfirm(null)}
          onOk=${() => {
            const ok = confirm.onOk;
            setConfirm(null);
            ok();
          }} />`
      : null}
  </section>`;
}
