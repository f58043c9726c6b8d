// What every view of the page shares: the service's API, names, messages, tables.
// No framework, no network beyond this service.

export const $ = (id) => document.getElementById(id);

export const names = {
  datasets: new Map(),  // id -> dataset summary, for names (the first 1,000 datasets)
  bits: [],             // {bit, name, description}
};

export function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

export function hasToken() {
  return Boolean($("token").value.trim());
}

// A problem the service answered (4xx/5xx), with its detail.
export class ProblemError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export async function problemOf(response) {
  let problem = {};
  try { problem = await response.json(); } catch (_) { /* not JSON */ }
  return { status: response.status, detail: problem.detail || response.statusText, problem };
}

// A GET of the service's API with the token; a problem answer becomes a ProblemError.
async function get(path, accept, signal) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: accept, ...authHeaders() }, signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ProblemError(0, "the service did not answer.");
  }
  if (!response.ok) {
    const p = await problemOf(response);
    throw new ProblemError(p.status, p.detail);
  }
  return response;
}

export async function getJson(path, signal) {
  return (await get(path, "application/json", signal)).json();
}

// Reads an NDJSON answer line by line; `take` returns false to stop reading (the rest is
// never fetched: the request is cancelled, and the server stops its query). `chunk` is
// called after each piece that arrived.
export async function readNdjson(response, take, chunk = () => {}) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        if (line && take(JSON.parse(line)) === false) return;
      }
      chunk();
    }
    buffer += decoder.decode();
    if (buffer.trim()) take(JSON.parse(buffer));
  } finally {
    reader.cancel().catch(() => {});
  }
}

export async function readLines(path, signal, take) {
  await readNdjson(await get(path, "application/x-ndjson", signal), take);
}

// Saves what the page holds as a file.
export function saveBlob(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export async function loadNames() {
  // Names for ids and bitmasks; the first 1,000 datasets (by id) cover a catalogue's
  // datasets many times over; any other id is shown as "dataset N".
  const [ds, bits] = await Promise.all([
    getJson("/v1/datasets?limit=1000"),
    getJson("/v1/online-filter/bits"),
  ]);
  names.datasets = new Map(ds.items.map((d) => [d.id, d]));
  names.bits = bits;
}

export function datasetName(id) {
  if (id == null) return "";
  const d = names.datasets.get(id);
  return d ? d.name : `dataset ${id}`;
}

export function decisions(mask) {
  if (mask == null) return "";
  if (mask === 0) return "none";
  const out = names.bits.filter((b) => mask & (1 << b.bit)).map((b) => b.name);
  const known = names.bits.reduce((m, b) => m | (1 << b.bit), 0);
  if (mask & ~known) out.push(`bits 0x${(mask & ~known).toString(16)}`);
  return out.join(", ");
}

export const fmt = (n) => (n == null ? "" : Number(n).toLocaleString("en"));

export function when(iso) {
  if (!iso) return "";
  return iso.replace("T", " ").replace(/\.\d+/, "").replace(/Z$|\+00:00$/, " UTC");
}

export function percent(part, whole) {
  if (!whole) return "–";
  const p = (100 * part) / whole;
  if (p === 0) return "0%";
  if (p < 0.1) return "<0.1%";
  if (p < 10 && p !== Math.round(p)) return p.toFixed(1) + "%";
  return Math.round(p) + "%";
}

// --- DOM --------------------------------------------------------------------------------

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

export const link = (href, text, attrs = {}) => el("a", { href, ...attrs }, text);

// A table whose rows become labelled blocks on a phone (CSS: table.stack): every cell
// carries its column's name.
// columns: {label, num?, uuid?, cell(row) -> Node|string}
export function table(columns, rows, caption, attrs = {}) {
  const head = el("tr", {}, columns.map((c) =>
    el("th", { scope: "col", class: c.num ? "num" : null }, c.label)));
  const body = rows.map((r) => el("tr", { class: r.rowClass || null }, columns.map((c) =>
    el("td", { "data-label": c.label, class: c.num ? "num" : c.uuid ? "uuid" : null }, c.cell(r)))));
  return el("table", { class: "stack", ...attrs },
    el("caption", { class: "visually-hidden" }, caption),
    el("thead", {}, head), el("tbody", {}, body));
}

// A description list of label/value pairs (values may be nodes); a third item "wide" gives
// the pair a whole line (a UUID).
export function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter((p) => p).map(([k, v, wide]) =>
    el("div", { class: wide ? "wide" : null }, el("dt", {}, k), el("dd", {}, v))));
}

// --- messages ---------------------------------------------------------------------------

let readyTimer = null;

export function banner(text, kind = "error") {
  const b = $("banner");
  b.textContent = text;
  b.className = "banner" + (kind === "error" ? "" : " " + kind);
  b.hidden = !text;
}

export function watchReady(onBack) {
  // The page says the database is back as soon as it is.
  clearInterval(readyTimer);
  readyTimer = setInterval(async () => {
    try {
      const r = await fetch("/ready");
      if (r.ok) {
        clearInterval(readyTimer);
        await onBack();
        banner("The catalogue's database is back: you can look up again.", "ok");
      }
    } catch (_) { /* still away */ }
  }, 3000);
}

// What the page says about a failed request, in one place.
export function explain(err, onBack) {
  if (err.status === 503 || err.status === 0) {
    banner(`The catalogue's database is unavailable right now: ${err.message} ` +
           "This page will say when it is back.");
    watchReady(onBack);
  } else if (err.status === 401 || err.status === 403) {
    banner(`Not allowed: ${err.message} Enter an API token under "API token".`);
    $("token-box").open = true;
  } else {
    banner(err.message);
  }
}
