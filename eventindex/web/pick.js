// Event picking: pairs in, each event's file, dataset and decisions out.
import {
  $, authHeaders, banner, datasetName, decisions, el, explain, link, ProblemError,
  problemOf, readNdjson, saveBlob,
} from "./api.js";

const PAGE_SIZE = 50;

const state = {
  results: [],        // {run_number, event_number, found, fuid_raw, dsid_raw, olt_result}
  invalid: [],        // {line, error}
  summary: null,
  view: "events",     // or "files"
  filter: "all",
  sort: { key: null, dir: 1 },
  page: 0,
  busy: false,
};

let reload = async () => {};

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
    explain(new ProblemError(0, "the service did not answer."), reload);
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
  const { status, detail, problem } = await problemOf(response);
  if (problem.errors && problem.errors.length && problem.errors[0].line) {
    state.invalid = problem.errors.map((e) => ({ line: e.line, error: e.message }));
    renderInvalid();
    banner("None of the lines is a run/event pair: nothing was looked up.");
  } else {
    explain(new ProblemError(status, detail), reload);
  }
}

async function readStream(response, expected) {
  let lastPaint = 0;
  await readNdjson(response, take, () => {
    const now = performance.now();
    if (now - lastPaint > 150) {
      lastPaint = now;
      showProgress(state.results.length, expected);
      if (state.results.length && $("results-box").hidden) render();
    }
  });
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
    if (e.status === 503) explain(new ProblemError(503, e.detail), reload);
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

const fileLink = (r) => (r.found ? link(`#/files/${r.fuid_raw}`, r.fuid_raw) : "not in the catalogue");
const datasetLink = (r) => (r.dsid_raw == null ? "" : link(`#/datasets/${r.dsid_raw}`, r.dataset));

const EVENT_COLUMNS = [
  { key: "run_number", label: "Run", num: true },
  { key: "event_number", label: "Event", num: true },
  { key: "fuid_raw", label: "File (fuid_raw)", uuid: true, cell: fileLink },
  { key: "dataset", label: "Dataset", cell: datasetLink },
  { key: "decisions", label: "Online Filter decisions" },
];
const FILE_COLUMNS = [
  { key: "fuid_raw", label: "File (fuid_raw)", uuid: true, cell: fileLink },
  { key: "dataset", label: "Dataset", cell: datasetLink },
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
    fuid_raw: f.fuid_raw, dsid_raw: f.dsid_raw, dataset: datasetName(f.dsid_raw),
    runs: [...f.runSet].join(", "), count: f.count, found: true,
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
    const th = el("th", { scope: "col", class: c.num ? "num" : null });
    if (sort.key === c.key) th.setAttribute("aria-sort", sort.dir > 0 ? "ascending" : "descending");
    th.appendChild(el("button", {
      type: "button",
      title: `Sort by ${c.label.toLowerCase()}`,
      onclick: () => {
        const dir = sort.key === c.key ? -sort.dir : 1;
        state.sort = { key: c.key, dir };
        state.page = 0;
        render();
        head.querySelector(`th:nth-child(${columns.indexOf(c) + 1}) button`).focus();
      },
    }, c.label));
    tr.appendChild(th);
  }
  const fragment = document.createDocumentFragment();
  for (const r of rows.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE)) {
    fragment.appendChild(el("tr", { class: r.found ? null : "missing" }, columns.map((c) => {
      const v = c.cell ? c.cell(r) : r[c.key] == null ? "" : String(r[c.key]);
      return el("td", { "data-label": c.label, class: c.num ? "num" : c.uuid ? "uuid" : null }, v);
    })));
  }
  $("results-table").tBodies[0].replaceChildren(fragment);
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
  $("counts").replaceChildren(...items.map(([k, text]) =>
    el("li", { "data-count": k, class: k === "missing" && missing ? "missing" : null }, text)));
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
  $("invalid-table").tBodies[0].replaceChildren(...rows.map((e) => el("tr", {},
    el("td", { class: "num", "data-label": "Line" }, String(e.line)),
    el("td", { class: "problem", "data-label": "Problem" }, e.error))));
}

// --- downloads of the results (held by the page already) -------------------------------

function download(name, type, parts) {
  saveBlob(name, new Blob(parts, { type }));
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

// --- wiring ----------------------------------------------------------------------------

function setView(view) {
  state.view = view;
  state.page = 0;
  $("tab-events").setAttribute("aria-selected", String(view === "events"));
  $("tab-files").setAttribute("aria-selected", String(view === "files"));
  render();
}

// Names (datasets, decisions) arrived or changed: the results show them.
export function refresh() {
  if (state.results.length) render();
}

export function init(onBack) {
  reload = onBack;
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
}
