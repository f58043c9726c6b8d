// EventIndex event-picking page. No framework, no network beyond this service.
"use strict";

const PAGE_SIZE = 50;
const $ = (id) => document.getElementById(id);

const state = {
  results: [],        // {run_number, event_number, found, fuid_raw, dsid_raw, olt_result}
  invalid: [],        // {line, error}
  summary: null,
  datasets: new Map(),
  bits: [],
  view: "events",     // or "files"
  filter: "all",
  sort: { key: null, dir: 1 },
  page: 0,
  rows: [],           // the rows of the current view, filtered and sorted
  busy: false,
  readyTimer: null,
};

// --- catalogue names -----------------------------------------------------------------

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

async function loadCatalogue() {
  try {
    const [ds, bits] = await Promise.all([
      fetch("/v1/datasets?limit=1000", { headers: authHeaders() }),
      fetch("/v1/online-filter/bits", { headers: authHeaders() }),
    ]);
    if (ds.status === 401 || ds.status === 403) {
      $("catalogue-status").textContent =
        "This service needs an API token with the read scope: enter it under \"API token\".";
      $("token-box").open = true;
      return true;
    }
    if (!ds.ok || !bits.ok) throw new Error("status " + (ds.ok ? bits.status : ds.status));
    state.datasets = new Map((await ds.json()).items.map((d) => [d.id, d.name]));
    state.bits = await bits.json();
    $("catalogue-status").textContent =
      `Catalogue: ${state.datasets.size} datasets, ${state.bits.length} Online Filter decisions.`;
    fillDatasetChoice();
    return true;
  } catch (err) {
    $("catalogue-status").textContent = "The catalogue cannot be reached right now.";
    return false;
  }
}

function datasetName(id) {
  return id == null ? "" : state.datasets.get(id) || `dataset ${id}`;
}

function decisions(mask) {
  if (mask == null) return "";
  if (mask === 0) return "none";
  const names = state.bits.filter((b) => mask & (1 << b.bit)).map((b) => b.name);
  const known = state.bits.reduce((m, b) => m | (1 << b.bit), 0);
  if (mask & ~known) names.push(`bits 0x${(mask & ~known).toString(16)}`);
  return names.join(", ");
}

// --- messages --------------------------------------------------------------------------

function banner(text, kind = "error") {
  const el = $("banner");
  el.textContent = text;
  el.className = "banner" + (kind === "error" ? "" : " " + kind);
  el.hidden = !text;
}

function watchReady() {
  // The page says the database is back as soon as it is.
  clearInterval(state.readyTimer);
  state.readyTimer = setInterval(async () => {
    try {
      const r = await fetch("/ready");
      if (r.ok) {
        clearInterval(state.readyTimer);
        await loadCatalogue();
        banner("The catalogue's database is back: you can look up again.", "ok");
      }
    } catch (_) { /* still away */ }
  }, 3000);
}

function unavailable(detail) {
  banner(`The catalogue's database is unavailable right now: ${detail} ` +
         "This page will say when it is back.");
  watchReady();
}

// --- look-up ---------------------------------------------------------------------------

function estimatePairs(text) {
  let n = 0;
  for (const line of text.split("\n")) {
    const body = line.split("#")[0];
    if (/\d/.test(body)) n += Math.max(1, body.split(";").filter((p) => /\d/.test(p)).length);
  }
  return n;
}

function setBusy(busy) {
  state.busy = busy;
  $("lookup").disabled = busy;
  $("lookup").textContent = busy ? "Looking up…" : "Look up";
}

function resetResults() {
  state.results = [];
  state.invalid = [];
  state.summary = null;
  state.page = 0;
  $("results-box").hidden = true;
  $("invalid-box").hidden = true;
}

async function lookup(text) {
  if (state.busy) return;
  banner("");
  if (!text.trim()) {
    banner("Paste some run/event pairs or choose a file first.", "info");
    $("pairs").focus();
    return;
  }
  resetResults();
  setBusy(true);
  const expected = estimatePairs(text);
  showProgress(0, expected);
  let response;
  try {
    response = await fetch("/v1/lookup?invalid=report", {
      method: "POST",
      headers: { "Content-Type": "text/plain", Accept: "application/x-ndjson", ...authHeaders() },
      body: text,
    });
  } catch (err) {
    setBusy(false);
    $("progress-box").hidden = true;
    unavailable("the service did not answer.");
    return;
  }
  try {
    if (!response.ok) {
      await showProblem(response);
      return;
    }
    await readStream(response, expected);
  } finally {
    setBusy(false);
  }
}

async function showProblem(response) {
  $("progress-box").hidden = true;
  let problem = {};
  try { problem = await response.json(); } catch (_) { /* not JSON */ }
  const detail = problem.detail || response.statusText;
  if (response.status === 503) {
    unavailable(detail);
  } else if (response.status === 401 || response.status === 403) {
    banner(`Not allowed: ${detail} Enter an API token under "API token".`);
  } else if (problem.errors && problem.errors.length && problem.errors[0].line) {
    state.invalid = problem.errors.map((e) => ({ line: e.line, error: e.message }));
    renderInvalid();
    banner("None of the lines is a run/event pair: nothing was looked up.");
  } else {
    banner(detail);
  }
}

async function readStream(response, expected) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let lastPaint = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines) if (line) take(JSON.parse(line));
    const now = performance.now();
    if (now - lastPaint > 150) {
      lastPaint = now;
      showProgress(state.results.length, expected);
      if (state.results.length && $("results-box").hidden) render();
    }
  }
  buffer += decoder.decode();
  if (buffer.trim()) take(JSON.parse(buffer));
  showProgress(state.results.length, Math.max(expected, state.results.length), true);
  renderInvalid();
  render();
}

function take(item) {
  if ("run_number" in item) state.results.push(item);
  else if ("line" in item) state.invalid.push(item);
  else if ("summary" in item) state.summary = item.summary;
  else if ("error" in item) {
    const e = item.error;
    if (e.status === 503) unavailable(e.detail);
    else banner(`The look-up stopped: ${e.detail}`);
  }
}

function showProgress(done, expected, finished = false) {
  $("progress-box").hidden = false;
  const bar = $("progress");
  bar.max = Math.max(finished ? done : expected, 1);
  bar.value = Math.min(done, bar.max);
  $("progress-text").textContent = finished
    ? `Done: ${done.toLocaleString()} pairs looked up.`
    : `Looked up ${done.toLocaleString()} of about ${expected.toLocaleString()} pairs…`;
}

// --- views -----------------------------------------------------------------------------

const EVENT_COLUMNS = [
  { key: "run_number", label: "Run", num: true },
  { key: "event_number", label: "Event", num: true },
  { key: "fuid_raw", label: "File (fuid_raw)", uuid: true },
  { key: "dataset", label: "Dataset" },
  { key: "decisions", label: "Online Filter decisions" },
];
const FILE_COLUMNS = [
  { key: "fuid_raw", label: "File (fuid_raw)", uuid: true },
  { key: "dataset", label: "Dataset" },
  { key: "runs", label: "Run(s)" },
  { key: "count", label: "Requested events", num: true },
];

function eventRows() {
  let rows = state.results;
  if (state.filter === "found") rows = rows.filter((r) => r.found);
  else if (state.filter === "missing") rows = rows.filter((r) => !r.found);
  return rows.map((r) => ({
    ...r, dataset: datasetName(r.dsid_raw), decisions: decisions(r.olt_result),
  }));
}

function fileRows() {
  const files = new Map();
  for (const r of state.results) {
    if (!r.found) continue;
    let f = files.get(r.fuid_raw);
    if (!f) files.set(r.fuid_raw, (f = { fuid_raw: r.fuid_raw, dsid_raw: r.dsid_raw, runSet: new Set(), count: 0 }));
    f.count += 1;
    f.runSet.add(r.run_number);
  }
  return [...files.values()].map((f) => ({
    fuid_raw: f.fuid_raw, dataset: datasetName(f.dsid_raw), runs: [...f.runSet].join(", "),
    count: f.count, found: true,
  }));
}

function compareBy(key, dir) {
  return (a, b) => {
    const x = a[key], y = b[key];
    if (x == null && y == null) return 0;
    if (x == null) return 1;
    if (y == null) return -1;
    return (x < y ? -1 : x > y ? 1 : 0) * dir;
  };
}

function render() {
  const files = state.view === "files";
  const columns = files ? FILE_COLUMNS : EVENT_COLUMNS;
  let rows = files ? fileRows() : eventRows();
  const sort = state.sort.key && columns.some((c) => c.key === state.sort.key)
    ? state.sort : files ? { key: "count", dir: -1 } : { key: null, dir: 1 };
  if (sort.key) rows = rows.slice().sort(compareBy(sort.key, sort.dir));
  state.rows = rows;
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);

  $("results-box").hidden = state.results.length === 0;
  renderCounts();
  $("filter").disabled = files;
  $("table-caption").textContent = files ? "Files holding the requested events" : "Requested events";

  const head = $("results-table").tHead;
  head.innerHTML = "";
  const tr = head.insertRow();
  for (const c of columns) {
    const th = document.createElement("th");
    th.scope = "col";
    if (c.num) th.className = "num";
    if (sort.key === c.key) th.setAttribute("aria-sort", sort.dir > 0 ? "ascending" : "descending");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = c.label;
    b.title = `Sort by ${c.label.toLowerCase()}`;
    b.addEventListener("click", () => {
      const dir = sort.key === c.key ? -sort.dir : 1;
      state.sort = { key: c.key, dir };
      state.page = 0;
      render();
      head.querySelector(`th:nth-child(${columns.indexOf(c) + 1}) button`).focus();
    });
    th.appendChild(b);
    tr.appendChild(th);
  }
  const body = $("results-table").tBodies[0];
  const fragment = document.createDocumentFragment();
  for (const r of rows.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE)) {
    const row = document.createElement("tr");
    if (!r.found) row.className = "missing";
    for (const c of columns) {
      const td = document.createElement("td");
      if (c.num) td.className = "num";
      if (c.uuid) td.className = "uuid";
      const v = r[c.key];
      td.textContent = c.key === "fuid_raw" && !r.found ? "not in the catalogue" : v == null ? "" : String(v);
      row.appendChild(td);
    }
    fragment.appendChild(row);
  }
  body.replaceChildren(fragment);
  $("page-info").textContent = `Page ${state.page + 1} of ${pages} (${rows.length.toLocaleString()} rows)`;
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.page >= pages - 1;
}

function renderCounts() {
  const found = state.results.filter((r) => r.found).length;
  const missing = state.results.length - found;
  const files = new Set(state.results.filter((r) => r.found).map((r) => r.fuid_raw)).size;
  const items = [
    ["requested", `${state.results.length.toLocaleString()} requested`],
    ["found", `${found.toLocaleString()} found`],
    ["missing", `${missing.toLocaleString()} missing`],
    ["files", `${files.toLocaleString()} file${files === 1 ? "" : "s"}`],
  ];
  if (state.invalid.length) items.push(["invalid", `${state.invalid.length.toLocaleString()} bad lines`]);
  $("counts").replaceChildren(...items.map(([k, text]) => {
    const li = document.createElement("li");
    li.dataset.count = k;
    if (k === "missing" && missing) li.className = "missing";
    li.textContent = text;
    return li;
  }));
}

function renderInvalid() {
  const box = $("invalid-box");
  box.hidden = state.invalid.length === 0;
  if (box.hidden) return;
  const total = state.summary ? state.summary.invalid_lines : state.invalid.length;
  $("invalid-summary").textContent =
    `${total.toLocaleString()} line(s) were not looked up` +
    (total > state.invalid.length ? ` (the first ${state.invalid.length} are listed)` : "") + ".";
  const rows = state.invalid.slice().sort((a, b) => a.line - b.line);
  $("invalid-table").tBodies[0].replaceChildren(...rows.map((e) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td");
    a.className = "num";
    a.textContent = e.line;
    const b = document.createElement("td");
    b.textContent = e.error;
    tr.append(a, b);
    return tr;
  }));
}

// --- downloads -------------------------------------------------------------------------

function download(name, type, parts) {
  const url = URL.createObjectURL(new Blob(parts, { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function csvCell(v) {
  const s = v == null ? "" : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function downloadCsv() {
  const header = "run_number,event_number,found,fuid_raw,dsid_raw,dataset,olt_result,decisions\n";
  const lines = state.results.map((r) => [
    r.run_number, r.event_number, r.found, r.fuid_raw, r.dsid_raw, datasetName(r.dsid_raw),
    r.olt_result, decisions(r.olt_result),
  ].map(csvCell).join(",") + "\n");
  download("eventindex-results.csv", "text/csv", [header, ...lines]);
}

function downloadNdjson() {
  download("eventindex-results.ndjson", "application/x-ndjson",
           state.results.map((r) => JSON.stringify(r) + "\n"));
}

function downloadFiles() {
  const files = [...new Set(state.results.filter((r) => r.found).map((r) => r.fuid_raw))];
  download("eventindex-files.txt", "text/plain", files.map((f) => f + "\n"));
}

// --- overlap heat map ------------------------------------------------------------------

function fillDatasetChoice() {
  const select = $("overlap-dataset");
  const chosen = select.value;
  select.replaceChildren(new Option("all datasets", ""));
  for (const [id, name] of state.datasets) select.add(new Option(`${id}: ${name}`, String(id)));
  select.value = chosen;
}

async function showOverlap() {
  const dataset = $("overlap-dataset").value;
  const query = dataset ? `?dataset=${encodeURIComponent(dataset)}` : "";
  let response;
  try {
    response = await fetch("/v1/online-filter/overlap" + query, { headers: authHeaders() });
  } catch (_) {
    unavailable("the service did not answer.");
    return;
  }
  if (!response.ok) {
    await showProblem(response);
    return;
  }
  const data = await response.json();
  const table = $("overlap-table");
  const top = Math.max(1, ...data.matrix.flat());
  const head = document.createElement("tr");
  head.appendChild(document.createElement("td"));
  for (const name of data.decisions) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = name;
    head.appendChild(th);
  }
  table.tHead.replaceChildren(head);
  table.tBodies[0].replaceChildren(...data.matrix.map((row, i) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = data.decisions[i];
    tr.appendChild(th);
    row.forEach((value, j) => {
      const td = document.createElement("td");
      td.textContent = value.toLocaleString();
      td.title = `${data.decisions[i]} and ${data.decisions[j]}: ${value.toLocaleString()} events`;
      // Shade by a log scale, so that rare pairs are visible beside common ones.
      const t = value > 0 ? Math.log1p(value) / Math.log1p(top) : 0;
      td.style.background = `rgba(31, 95, 191, ${(0.08 + 0.8 * t).toFixed(3)})`;
      if (t > 0.55) td.style.color = "#fff";
      tr.appendChild(td);
    });
    return tr;
  }));
  table.hidden = false;
  $("overlap-total").textContent = `${data.n_events.toLocaleString()} events in scope.`;
}

// --- wiring ----------------------------------------------------------------------------

function setView(view) {
  state.view = view;
  state.page = 0;
  $("tab-events").setAttribute("aria-selected", String(view === "events"));
  $("tab-files").setAttribute("aria-selected", String(view === "files"));
  render();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("eventindex-token") || "";
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("eventindex-token", $("token").value.trim());
    loadCatalogue();
  });
  $("pick-form").addEventListener("submit", (e) => {
    e.preventDefault();
    lookup($("pairs").value);
  });
  $("pairs").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      lookup($("pairs").value);
    }
  });
  $("file").addEventListener("change", async () => {
    const file = $("file").files[0];
    if (!file) return;
    const text = await file.text();
    // A large file is looked up as it is, without filling the text box.
    if (text.length < 200000) $("pairs").value = text;
    else $("pairs").value = `# ${file.name}: ${estimatePairs(text).toLocaleString()} pairs (not shown)`;
    lookup(text);
  });
  $("clear").addEventListener("click", () => {
    $("pairs").value = "";
    $("file").value = "";
    resetResults();
    $("progress-box").hidden = true;
    banner("");
    $("pairs").focus();
  });
  $("tab-events").addEventListener("click", () => setView("events"));
  $("tab-files").addEventListener("click", () => setView("files"));
  for (const id of ["tab-events", "tab-files"]) {
    $(id).addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        const other = id === "tab-events" ? "tab-files" : "tab-events";
        $(other).focus();
        setView(other === "tab-files" ? "files" : "events");
      }
    });
  }
  $("filter").addEventListener("change", () => { state.filter = $("filter").value; state.page = 0; render(); });
  $("prev").addEventListener("click", () => { state.page -= 1; render(); });
  $("next").addEventListener("click", () => { state.page += 1; render(); });
  $("dl-csv").addEventListener("click", downloadCsv);
  $("dl-ndjson").addEventListener("click", downloadNdjson);
  $("dl-files").addEventListener("click", downloadFiles);
  $("overlap-form").addEventListener("submit", (e) => { e.preventDefault(); showOverlap(); });
  loadCatalogue().then((ok) => { if (!ok) unavailable("the catalogue did not answer."); });
});
