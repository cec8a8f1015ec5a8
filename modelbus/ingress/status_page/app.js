// The modelbus status page: models (live over SSE), queues, workers and recent work.
// No framework, no build step. All data is written with textContent / DOM nodes, never as HTML.

const KEY_NAME = "modelbus.apiKey";
const SVG_NS = "http://www.w3.org/2000/svg";
const POLL_MS = 5000;
const HISTORY_MS = 10000;
const MAX_BACKOFF_MS = 10000;

const $ = (id) => document.getElementById(id);

const state = {
  gen: 0, // bumped on every stop: stale responses and loops of an older generation do nothing
  abort: null,
  timers: new Set(),
  models: new Map(), // id → ModelView (plus `counts` from a newer status event)
  eventRev: new Map(), // id → revision of the last status/removed event
  loads: new Map(), // `${worker_id}\u0000${model}` → in_flight
};

class AuthError extends Error {}

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_NAME) || "";
  } catch {
    return "";
  }
}

function setKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_NAME, key);
    else sessionStorage.removeItem(KEY_NAME);
  } catch {
    // storage unavailable: the key lives only as long as this page
  }
  $("sign-out").hidden = !key;
}

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function row(cells, attrs = {}) {
  const tr = el("tr", null, attrs);
  for (const cell of cells) tr.append(cell instanceof Node ? cell : el("td", cell ?? "—"));
  return tr;
}

function emptyRow(tbody, columns, text) {
  tbody.replaceChildren(row([el("td", text, { colspan: String(columns), class: "empty" })]));
}

function note(id, text) {
  $(id).textContent = text || "";
}

function errorText(err) {
  return err instanceof Error ? err.message : String(err);
}

async function bodyMessage(response) {
  try {
    const body = await response.json();
    return body?.error?.message || response.statusText;
  } catch {
    return response.statusText;
  }
}

// ---- requests ---------------------------------------------------------------------------------

async function api(path, accept = "application/json") {
  const gen = state.gen;
  const headers = { Accept: accept };
  const key = storedKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { headers, signal: state.abort?.signal, cache: "no-store" });
  if (gen !== state.gen) throw new AuthError("stopped");
  if (response.status === 401) {
    unauthorized(await bodyMessage(response), Boolean(key));
    throw new AuthError("unauthorized");
  }
  if (!response.ok) throw new Error(`${path} answered ${response.status}: ${await bodyMessage(response)}`);
  return response;
}

function unauthorized(message, hadKey) {
  if (!state.abort) return; // already stopped by another request's 401
  stop();
  setKey("");
  $("auth-error").textContent = hadKey
    ? `The API key was refused (401): ${message}`
    : `An API key is required (401): ${message}`;
  showAuth(true);
}

function poll(fn, every) {
  const gen = state.gen;
  const tick = async () => {
    try {
      await fn();
    } catch (err) {
      if (err instanceof AuthError || err?.name === "AbortError") return;
      console.warn(err);
    }
    if (gen === state.gen) later(tick, every);
  };
  tick();
}

// ---- server-sent events ---------------------------------------------------------------------

function setLive(text, stateName) {
  const node = $("live-state");
  node.textContent = text;
  node.dataset.state = stateName;
}

function later(fn, ms) {
  const timer = setTimeout(() => {
    state.timers.delete(timer);
    fn();
  }, ms);
  state.timers.add(timer);
}

function sleep(ms) {
  return new Promise((resolve) => later(resolve, ms));
}

async function streamLoop() {
  const gen = state.gen;
  let backoff = 1000;
  while (gen === state.gen) {
    try {
      const response = await api("/v1/models/events", "text/event-stream");
      setLive("live", "live");
      note("stream-note", "");
      backoff = 1000;
      await readEvents(response, gen);
    } catch (err) {
      if (err instanceof AuthError || gen !== state.gen) return;
      if (err?.name !== "AbortError") note("stream-note", `Live updates interrupted: ${errorText(err)}`);
    }
    if (gen !== state.gen) return;
    if (navigator.onLine === false) setLive("offline", "offline");
    else setLive("reconnecting…", "reconnecting");
    await sleep(backoff);
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
  }
}

async function readEvents(response, gen) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = { type: "", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done || gen !== state.gen) break;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) dispatch(event.type || "message", event.data.join("\n"));
        event = { type: "", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let data = colon === -1 ? "" : line.slice(colon + 1);
      if (data.startsWith(" ")) data = data.slice(1);
      if (field === "event") event.type = data;
      else if (field === "data") event.data.push(data);
      // `id:` needs no handling: a reconnect starts with a fresh snapshot
    }
  }
}

function dispatch(type, raw) {
  let data;
  try {
    data = JSON.parse(raw);
  } catch {
    return;
  }
  if (type === "model") {
    state.models.set(data.id, data);
    renderModels();
  } else if (type === "snapshot_complete") {
    renderModels();
  } else if (type === "status") {
    applyStatus(data);
    refreshSnapshot().catch(() => {}); // refreshSnapshot has shown the failure already
  } else if (type === "removed") {
    state.eventRev.set(data.model, data.revision);
    state.models.delete(data.model);
    renderModels();
  } else if (type === "error") {
    note("stream-note", `Live updates interrupted: ${data?.error?.message || "stream error"}`);
  }
}

function applyStatus(ev) {
  const old = state.models.get(ev.model);
  const model = old ? { ...old } : { id: ev.model, owned_by: "", datasets: [], workers: [] };
  Object.assign(model, {
    status: ev.status,
    error: ev.error,
    error_message: ev.error_message,
    counts: { ready: ev.ready_workers, total: ev.workers },
  });
  state.eventRev.set(ev.model, ev.revision);
  state.models.set(ev.model, model);
  renderModels();
}

async function refreshSnapshot() {
  let snapshot;
  try {
    snapshot = await (await api("/v1/models/events")).json();
  } catch (err) {
    if (!(err instanceof AuthError)) note("models-note", `Model list unavailable: ${errorText(err)}`);
    throw err;
  }
  const next = new Map();
  for (const view of snapshot.data || []) {
    const newer = (state.eventRev.get(view.id) ?? -1) > snapshot.revision;
    const current = state.models.get(view.id);
    // An event newer than this snapshot wins: its status, or its removal.
    if (newer && !current) continue;
    next.set(view.id, newer ? { ...view, ...pick(current) } : view);
  }
  for (const [id, model] of state.models) {
    if (!next.has(id) && (state.eventRev.get(id) ?? -1) > snapshot.revision) next.set(id, model);
  }
  state.models = next;
  note("models-note", "");
  renderModels();
}

function pick(model) {
  const { status, error, error_message: errorMessage, counts } = model;
  return { status, error, error_message: errorMessage, counts };
}

// ---- models -------------------------------------------------------------------------------------

function statusText(model) {
  if (model.status !== "error") return model.status || "unknown";
  const code = model.error?.code || model.error?.type || model.error?.category;
  return code ? `error: ${code}` : "error";
}

function workerList(model) {
  const workers = model.workers || [];
  if (!workers.length) return el("span", "none", { class: "muted" });
  const list = el("ul", null, { class: "workers" });
  for (const w of workers) {
    const inFlight = state.loads.get(`${w.worker_id}\u0000${model.id}`);
    const item = el("li");
    item.append(el("code", w.worker_id), " ");
    item.append(el("span", w.status, { class: "status", "data-status": w.status }));
    let details = `, capacity ${w.capacity}, in flight ${inFlight ?? "—"}`;
    if (w.error_code) details += `, ${w.error_code}`;
    item.append(details);
    list.append(item);
  }
  return list;
}

function renderModels() {
  const tbody = $("models-body");
  const models = [...state.models.values()].sort((a, b) => a.id.localeCompare(b.id));
  if (!models.length) return emptyRow(tbody, 7, "No models registered.");
  tbody.replaceChildren(
    ...models.map((m) => {
      const workers = m.workers || [];
      const ready = m.counts?.ready ?? workers.filter((w) => w.status === "ready").length;
      const total = m.counts?.total ?? workers.length;
      const cells = [
        el("th", m.id, { scope: "row" }),
        el("td", statusText(m), { class: "status", "data-status": m.status || "unknown" }),
        m.error_message || "",
        m.owned_by || "",
        (m.datasets || []).join(", "),
        `${ready}/${total}`,
        el("td"),
      ];
      cells[6].append(workerList(m));
      return row(cells, { "data-model": m.id });
    }),
  );
}

// ---- workers & queues ---------------------------------------------------------------------------

async function refreshWorkers() {
  try {
    const body = await (await api("/metrics/workers")).json();
    const loads = new Map();
    const nsql = [];
    for (const worker of body.data || []) {
      for (const [model, m] of Object.entries(worker.models || {})) {
        loads.set(`${worker.worker_id}\u0000${model}`, m.in_flight);
      }
      if (worker.nsql) nsql.push(worker);
    }
    state.loads = loads;
    renderModels();
    const tbody = $("nsql-body");
    if (!nsql.length) emptyRow(tbody, 4, "No NSQL workers answered.");
    else {
      tbody.replaceChildren(
        ...nsql.map((w) => row([el("th", w.worker_id, { scope: "row" }), w.kind, w.nsql.capacity, w.nsql.in_flight])),
      );
    }
    note("workers-note", "");
  } catch (err) {
    if (!(err instanceof AuthError)) note("workers-note", `Workers unavailable: ${errorText(err)}`);
    throw err;
  }
}

function sparkline(samples, windowS) {
  const width = 120;
  const height = 24;
  const end = samples.length ? samples[samples.length - 1][0] : 0;
  const max = Math.max(0, ...samples.map((s) => s[1] ?? 0));
  const minutes = Math.round(windowS / 60);
  const label = `depth over the last ${minutes} min, max ${max}`;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": label, class: "spark" });
  const title = svg("title");
  title.textContent = label;
  chart.append(title);
  const points = samples.map(([t, depth]) => {
    const x = width - ((end - t) / windowS) * width;
    const y = height - 2 - ((depth ?? 0) / (max || 1)) * (height - 4);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  if (points.length) chart.append(svg("polyline", { points: points.join(" "), class: "line" }));
  return chart;
}

async function refreshQueues() {
  try {
    const body = await (await api("/metrics/queues")).json();
    const tbody = $("queues-body");
    const queues = body.queues || [];
    if (!queues.length) emptyRow(tbody, 5, "No queues.");
    else {
      tbody.replaceChildren(
        ...queues.map((q) => {
          const chart = el("td");
          chart.append(sparkline(q.samples || [], body.window_s || 600));
          return row([el("th", q.queue, { scope: "row" }), q.model || "—", q.depth, q.waiting, chart]);
        }),
      );
    }
    note("queues-note", "");
  } catch (err) {
    if (!(err instanceof AuthError)) note("queues-note", `Queues unavailable: ${errorText(err)}`);
    throw err;
  }
}

// ---- history -------------------------------------------------------------------------------------

function fmtTime(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

function fmtMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

function loadPlot(series, bucketS, end) {
  const buckets = Array.from({ length: 60 }, () => ({ requests: 0, errors: 0, tokens_out: 0 }));
  for (const b of series.buckets) {
    const index = 59 - Math.round((end - b.start) / bucketS); // missing buckets stay 0
    if (index >= 0 && index < 60) buckets[index] = b;
  }
  const rates = buckets.map((b) => b.tokens_out / bucketS);
  const errs = buckets.map((b) => (b.requests ? (b.errors / b.requests) * 100 : 0));
  const peak = Math.max(0, ...rates);
  const requests = buckets.reduce((n, b) => n + b.requests, 0);
  const errors = buckets.reduce((n, b) => n + b.errors, 0);
  const errPct = requests ? (errors / requests) * 100 : 0;
  const summary = `last hour: ${peak.toFixed(1)} tok/s peak, ${errPct < 10 ? errPct.toFixed(1).replace(/\.0$/, "") : Math.round(errPct)}% errors, ${requests} requests`;
  const [width, height] = [240, 60];
  const line = (values, top, cls) =>
    svg("polyline", {
      class: cls,
      points: values.map((v, i) => `${((i / 59) * width).toFixed(1)},${(height - 2 - (v / (top || 1)) * (height - 4)).toFixed(1)}`).join(" "),
    });
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": `${series.model}: ${summary}`, class: "plot" });
  const title = svg("title");
  title.textContent = `${series.model}: tokens/s (solid) and error rate in % (dashed); ${summary}`;
  chart.append(title, line(rates, peak, "line"), line(errs, 100, "line err"));
  const item = el("li", null, { "data-model": series.model });
  const figure = el("figure");
  const caption = el("figcaption");
  caption.append(el("strong", series.model), ` — ${summary}`);
  figure.append(chart, caption);
  item.append(figure);
  return item;
}

async function refreshHistory() {
  try {
    const body = await (await api("/metrics/history?limit=30")).json();
    $("history").hidden = !body.available;
    if (!body.available) {
      note("recent-note", body.reason || "The task history is not available.");
      return;
    }
    note("recent-note", "");
    const tbody = $("recent-body");
    const recent = body.recent || [];
    if (!recent.length) emptyRow(tbody, 8, "No requests yet.");
    else {
      tbody.replaceChildren(
        ...recent.map((r) => {
          const outcome = el("td", r.outcome, { class: "outcome", "data-outcome": r.outcome });
          const cells = [fmtTime(r.started_at), r.task, r.model, outcome];
          cells.push(r.error_code ? `${r.status_code ?? "—"} ${r.error_code}` : r.status_code, fmtMs(r.duration_ms));
          cells.push(r.tokens_in, r.tokens_out);
          return row(cells, { "data-trace": r.trace_id });
        }),
      );
    }
    const bucketS = body.bucket_s || 60;
    const series = body.series || [];
    const latest = Math.max(Math.floor(Date.now() / 1000 / bucketS) * bucketS, ...series.flatMap((s) => s.buckets.map((b) => b.start)));
    const plots = $("plots");
    if (!series.length) plots.replaceChildren(el("li", "No load in the last hour.", { class: "muted" }));
    else plots.replaceChildren(...series.map((s) => loadPlot(s, bucketS, latest)));
  } catch (err) {
    if (!(err instanceof AuthError)) note("recent-note", `Recent work unavailable: ${errorText(err)}`);
    throw err;
  }
}

// ---- start / stop --------------------------------------------------------------------------------

function stop() {
  state.gen += 1;
  state.abort?.abort();
  state.abort = null;
  for (const timer of state.timers) clearTimeout(timer);
  state.timers.clear();
  state.models.clear();
  state.eventRev.clear();
  state.loads.clear();
  setLive("offline", "offline");
}

function showAuth(show) {
  $("auth").hidden = !show;
  $("dashboard").hidden = show;
  if (show) $("api-key").focus();
}

function start() {
  stop();
  state.abort = new AbortController();
  showAuth(false);
  $("sign-out").hidden = !storedKey();
  renderModels();
  streamLoop();
  poll(refreshSnapshot, POLL_MS);
  poll(refreshWorkers, POLL_MS);
  poll(refreshQueues, POLL_MS);
  poll(refreshHistory, HISTORY_MS);
}

$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("api-key");
  setKey(input.value.trim());
  input.value = "";
  $("auth-error").textContent = "";
  start();
});

$("sign-out").addEventListener("click", () => {
  stop();
  setKey("");
  $("auth-error").textContent = "";
  showAuth(true);
});

start();
