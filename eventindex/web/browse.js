// The catalogue views: datasets, runs, files, a file's events, selections, overlaps.
// Every list is one page of the service's own paging (a keyset: `after...`), so a view
// holds at most one page whatever the catalogue's size; the hash holds the view and its
// page, so a link can be shared and the back button works.
import {
  $, banner, datasetName, decisions, el, explain, facts, fmt, getJson, link, names, percent,
  ProblemError, readLines, table, when,
} from "./api.js";
import { downloadLink } from "./download.js";

const MAX_UUID = "ffffffff-ffff-ffff-ffff-ffffffffffff";
const PER_PAGE = [10, 25, 50, 100, 250];
const DEFAULT_PER = 50;

// --- hashes and pages --------------------------------------------------------------------

export function hashOf(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return "#" + path + (s ? "?" + s : "");
}

const paramsOf = (search) => Object.fromEntries(search.entries());

function intParam(params, key, fallback, min = 0, max = 2147483647) {
  const v = params[key];
  if (v == null || v === "") return fallback;
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) {
    throw new ProblemError(400, `The link's ${key}=${v} is not a number from ${min} to ${max}.`);
  }
  return Number(v);
}

const perOf = (params) => intParam(params, "per", DEFAULT_PER, 1, 1000);
const pageOf = (params) => intParam(params, "page", 1, 1);

// The page before each page this session has seen: keyset paging goes forward only, so
// "Previous" is the way we came (or the first page, for a page reached by a shared link).
const previous = new Map();

// A pager: `next` is the following page's parameters (or null at the end).
function pager(path, params, next, what) {
  const here = hashOf(path, params);
  const page = pageOf(params);
  const firstParams = { ...cursorless(params) };
  const back = previous.get(here) || (page > 1 ? hashOf(path, firstParams) : null);
  const nextHash = next ? hashOf(path, { ...params, ...next, page: page + 1 }) : null;
  if (nextHash) previous.set(nextHash, here);
  const per = perOf(params);
  const choices = PER_PAGE.includes(per) ? PER_PAGE : [...PER_PAGE, per].sort((a, b) => a - b);
  const perSelect = el("select", {
    "aria-label": "Rows per page",
    onchange: (e) => { location.hash = hashOf(path, { ...firstParams, per: e.target.value }); },
  }, choices.map((n) => el("option", { value: n, selected: n === per }, String(n))));
  return el("nav", { class: "row pager", "aria-label": `Pages of ${what}` },
    back
      ? link(back, previous.get(here) || page <= 2 ? "‹ Previous" : "« First page", { rel: "prev" })
      : el("span", { class: "disabled", "aria-disabled": "true" }, "‹ Previous"),
    el("span", { class: "page-info" }, `Page ${page}`),
    nextHash
      ? link(nextHash, "Next ›", { rel: "next" })
      : el("span", { class: "disabled", "aria-disabled": "true" }, "Next ›"),
    el("label", { class: "inline" }, "Rows per page", perSelect));
}

function cursorless(params) {
  const out = {};
  for (const [k, v] of Object.entries(params)) {
    if (!["after", "after_run", "after_fuid", "page"].includes(k)) out[k] = v;
  }
  return out;
}

const rowsOf = (params, n) => {
  const per = perOf(params);
  const first = (pageOf(params) - 1) * per + 1;
  return n ? `${fmt(first)}–${fmt(first + n - 1)}` : "none";
};

// --- the shell of a view ------------------------------------------------------------------

function frame(title, crumbs, ...body) {
  document.title = `${title} · EventIndex`;
  $("browse-title").textContent = title;
  $("crumbs").replaceChildren(...crumbs.flatMap(([href, text], i) => [
    ...(i ? [el("span", { "aria-hidden": "true" }, " › ")] : []),
    href ? link(href, text) : el("span", { "aria-current": "page" }, text),
  ]));
  $("browse-body").replaceChildren(...body.filter((node) => node != null));
}

const HOME = ["#/datasets", "Datasets"];
const runLink = (run) => link(`#/runs/${run}`, String(run));
const datasetLink = (id) => link(`#/datasets/${id}`, datasetName(id));
// Files loaded, and of how many the production said it would report, where the service says.
const filesOf = (d) => fmt(d.n_files) + (d.files_expected != null ? ` of ${fmt(d.files_expected)}` : "");

const loaded = (x) => (x.first_loaded_at === x.last_loaded_at ? when(x.first_loaded_at)
  : `${when(x.first_loaded_at)} – ${when(x.last_loaded_at)}`);
const runRange = (a, b) => (a == null ? "" : a === b ? String(a) : `${a}–${b}`);

function emptyPage(what, path, params) {
  return el("p", { class: "muted" },
    pageOf(params) > 1 ? [`No more ${what}. `, link(hashOf(path, cursorless(params)), "First page")] : `No ${what}.`);
}

// --- datasets ----------------------------------------------------------------------------

async function datasets(params, signal) {
  const per = perOf(params);
  const after = intParam(params, "after", -1);
  const data = await getJson(`/v1/datasets?after=${after}&limit=${per}`, signal);
  // The dataset lifecycle (open/closed/validated) is shown where the service reports it.
  const withState = data.items.some((d) => d.state != null);
  const columns = [
    { label: "Dataset", cell: (d) => link(`#/datasets/${d.id}`, d.name) },
    { label: "ID", num: true, cell: (d) => String(d.id) },
    { label: "Type", cell: (d) => d.data_type || "" },
    withState && { label: "State", cell: (d) => d.state || "" },
    { label: "Events", num: true, cell: (d) => fmt(d.n_events) },
    { label: "Files", num: true, cell: filesOf },
    { label: "Runs", cell: (d) => runRange(d.first_run, d.last_run) },
    { label: "Last loaded", cell: (d) => when(d.last_loaded_at) },
  ].filter(Boolean);
  const next = data.next_after != null ? { after: data.next_after } : null;
  frame("Datasets", [[null, "Datasets"]],
    data.items.length ? table(columns, data.items, "Datasets", { id: "datasets-table" })
      : emptyPage("datasets", "/datasets", params),
    pager("/datasets", params, next, "datasets"));
}

async function dataset(id, tab, params, signal) {
  const d = await getJson(`/v1/datasets/${id}`, signal);
  const path = `/datasets/${id}${tab === "files" ? "/files" : ""}`;
  const summary = facts([
    ["Name", d.name],
    ["ID", String(d.id)],
    d.data_type && ["Type", d.data_type],
    d.state != null && ["State", d.state],
    d.description && ["Description", d.description],
    ["Events", fmt(d.n_events)],
    ["Files", filesOf(d)],
    ["Runs", runRange(d.first_run, d.last_run) || "none"],
    ["Created", when(d.created_at)],
    d.first_loaded_at && ["Loaded", loaded(d)],
  ]);
  const actions = el("p", { class: "row actions" },
    link(hashOf("/select", { dataset: id }), "Select its events by decision", { class: "button" }),
    link(hashOf("/overlap", { dataset: id }), "Decision overlap", { class: "button" }));
  const tabs = el("nav", { class: "subtabs", "aria-label": "Dataset lists" },
    link(`#/datasets/${id}`, "Runs", tab === "runs" ? { "aria-current": "page" } : {}),
    link(`#/datasets/${id}/files`, `Files (${fmt(d.n_files)})`, tab === "files" ? { "aria-current": "page" } : {}));
  const list = tab === "files"
    ? await datasetFiles(d, path, params, signal) : await datasetRuns(d, path, params, signal);
  frame(d.name, [HOME, [null, d.name]], summary, actions, tabs, ...list);
}

async function datasetRuns(d, path, params, signal) {
  const per = perOf(params);
  const after = intParam(params, "after", -1);
  const data = await getJson(`/v1/runs?dataset=${d.id}&after=${after}&limit=${per}`, signal);
  const columns = [
    { label: "Run", num: true, cell: (r) => runLink(r.run_number) },
    { label: "Events in this dataset", num: true, cell: (r) => fmt(r.n_events) },
    { label: "Files in this dataset", num: true, cell: (r) => fmt(r.n_files) },
  ];
  const next = data.next_after != null ? { after: data.next_after } : null;
  return [
    data.items.length ? table(columns, data.items, `Runs of ${d.name}`, { id: "runs-table" })
      : emptyPage("runs", path, params),
    pager(path, params, next, "runs"),
  ];
}

async function datasetFiles(d, path, params, signal) {
  const per = perOf(params);
  const afterRun = intParam(params, "after_run", -1);
  const afterFuid = uuidParam(params, "after_fuid") || "00000000-0000-0000-0000-000000000000";
  const data = await getJson(
    `/v1/datasets/${d.id}/files?after_run=${afterRun}&after_fuid=${afterFuid}&limit=${per}`, signal);
  const next = data.next ? { after_run: data.next.after_run, after_fuid: data.next.after_fuid } : null;
  return [
    el("p", { class: "muted small", id: "files-range" },
      `Files ${rowsOf(params, data.items.length)} of ${fmt(d.n_files)}, by run and UUID.`),
    data.items.length ? fileTable(data.items, `Files of ${d.name}`) : emptyPage("files", path, params),
    pager(path, params, next, "files"),
  ];
}

function fileTable(items, caption) {
  return table([
    { label: "File (fuid_raw)", uuid: true, cell: (f) => link(`#/files/${f.fuid_raw}`, f.fuid_raw) },
    { label: "Run", num: true, cell: (f) => runLink(f.run_number) },
    { label: "Events", num: true, cell: (f) => fmt(f.n_events) },
    { label: "Event numbers", cell: (f) => `${f.first_event}–${f.last_event}` },
    { label: "Loaded", cell: (f) => when(f.last_loaded_at) },
  ], items, caption, { id: "files-table" });
}

function uuidParam(params, key) {
  const v = params[key];
  if (v == null || v === "") return null;
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(v)) {
    throw new ProblemError(400, `The link's ${key}=${v} is not a file UUID.`);
  }
  return v;
}

// --- runs -------------------------------------------------------------------------------

async function runs(params, signal) {
  const per = perOf(params);
  const after = intParam(params, "after", -1);
  const data = await getJson(`/v1/runs?after=${after}&limit=${per}`, signal);
  const columns = [
    { label: "Run", num: true, cell: (r) => runLink(r.run_number) },
    { label: "Events", num: true, cell: (r) => fmt(r.n_events) },
    { label: "Files", num: true, cell: (r) => fmt(r.n_files) },
    { label: "Datasets", cell: (r) => r.datasets.flatMap((id, i) => [i ? ", " : null, datasetLink(id)]) },
  ];
  const next = data.next_after != null ? { after: data.next_after } : null;
  frame("Runs", [[null, "Runs"]],
    data.items.length ? table(columns, data.items, "Runs", { id: "runs-table" }) : emptyPage("runs", "/runs", params),
    pager("/runs", params, next, "runs"));
}

async function run(number, params, signal) {
  const r = await getJson(`/v1/runs/${number}`, signal);
  const path = `/runs/${number}`;
  const bits = new Map(names.bits.map((b) => [b.bit, b]));
  const decisionTable = table([
    { label: "Decision", cell: (d) => el("span", { title: bits.get(d.bit)?.description || null }, d.name) },
    { label: "Events passed", num: true, cell: (d) => fmt(d.n_events) },
    { label: "Share of the run", cell: (d) => share(d.n_events, r.n_events) },
  ], r.decisions, `Events of run ${number} per Online Filter decision`,
  // Three narrow columns fit a phone as they are.
  { id: "decisions-table", class: "narrow" });
  // The run's files, a page at a time, from one of its datasets' file lists (by run, UUID).
  const ds = intParam(params, "dataset", r.datasets[0]);
  const afterFuid = uuidParam(params, "after_fuid");
  const per = perOf(params);
  const files = r.datasets.includes(ds) ? await getJson(
    `/v1/datasets/${ds}/files?after_run=${afterFuid ? number : number - 1}` +
    `&after_fuid=${afterFuid || MAX_UUID}&limit=${per}`, signal) : { items: [] };
  const mine = files.items.filter((f) => f.run_number === number);
  const next = mine.length === per ? { after_fuid: mine[mine.length - 1].fuid_raw } : null;
  const tabs = r.datasets.length > 1 ? el("nav", { class: "subtabs", "aria-label": "Files by dataset" },
    r.datasets.map((id) => link(hashOf(path, { dataset: id }), `Files in ${datasetName(id)}`,
      id === ds ? { "aria-current": "page" } : {}))) : null;
  frame(`Run ${number}`, [["#/runs", "Runs"], [null, `Run ${number}`]],
    facts([
      ["Events", fmt(r.n_events)],
      ["Files", fmt(r.n_files)],
      ["Datasets", r.datasets.flatMap((id, i) => [i ? ", " : null, datasetLink(id)])],
    ]),
    el("p", { class: "row actions" },
      link(hashOf("/select", { run_min: number, run_max: number }), "Select its events by decision", { class: "button" }),
      link(hashOf("/overlap", { run_min: number, run_max: number }), "Decision overlap", { class: "button" })),
    el("h3", {}, "Events per Online Filter decision"),
    decisionTable,
    el("h3", {}, r.datasets.length > 1 ? "Files" : `Files (in ${datasetName(ds)})`),
    tabs,
    mine.length ? fileTable(mine, `Files of run ${number}`) : emptyPage("files", path, params),
    pager(path, params, next, "files"));
}

function share(part, whole) {
  const p = whole ? Math.min(100, (100 * part) / whole) : 0;
  const bar = el("span", { class: "bar" });
  bar.style.width = `${p.toFixed(1)}%`;
  return el("span", { class: "share" }, el("span", { class: "bar-track" }, bar), percent(part, whole));
}

// --- a file and its events ----------------------------------------------------------------

async function file(fuid, params, signal) {
  const f = await getJson(`/v1/files/${fuid}`, signal);
  const per = perOf(params);
  const page = pageOf(params);
  const pages = Math.max(1, Math.ceil(f.n_events / per));
  const path = `/files/${fuid}`;
  // The service streams a file's events (at most a raw file's 1,000-10,000); the page reads
  // up to the end of the page it shows, keeps that page only, and stops the stream there.
  const skip = (page - 1) * per;
  const rows = [];
  let seen = 0;
  let failed = null;
  await readLines(`/v1/files/${fuid}/events`, signal, (item) => {
    if ("error" in item) { failed = item.error.detail; return false; }
    seen += 1;
    if (seen > skip) rows.push(item);
    return rows.length < per;
  });
  if (failed) banner(`The file's events stopped: ${failed}`);
  const name = f.dataset || datasetName(f.dsid_raw);
  const status = el("p", { class: "muted small", "aria-live": "polite" });
  const first = skip + 1;
  const pagerNav = el("nav", { class: "row pager", "aria-label": "Pages of events" },
    page > 1 ? link(hashOf(path, { ...params, page: page - 1 }), "‹ Previous", { rel: "prev" })
      : el("span", { class: "disabled", "aria-disabled": "true" }, "‹ Previous"),
    el("span", { class: "page-info" }, `Page ${page} of ${pages}`),
    page < pages ? link(hashOf(path, { ...params, page: page + 1 }), "Next ›", { rel: "next" })
      : el("span", { class: "disabled", "aria-disabled": "true" }, "Next ›"));
  frame("File", [HOME, [`#/datasets/${f.dsid_raw}/files`, name], [null, "File"]],
    facts([
      ["File (fuid_raw)", el("span", { class: "uuid", id: "file-uuid" }, f.fuid_raw), "wide"],
      ["Dataset", datasetLink(f.dsid_raw)],
      ["Run", runLink(f.run_number)],
      ["Events", fmt(f.n_events)],
      ["Event numbers", `${f.first_event}–${f.last_event}`],
      ["Loaded", loaded(f)],
    ]),
    el("p", { class: "row actions" },
      downloadLink(`/v1/files/${fuid}/events`, `eventindex-file-${fuid}.ndjson`,
        `Download its ${fmt(f.n_events)} events (NDJSON)`, f.n_events, status)),
    status,
    el("h3", {}, "Events"),
    el("p", { class: "muted small", id: "events-range" },
      rows.length ? `Events ${fmt(first)}–${fmt(first + rows.length - 1)} of ${fmt(f.n_events)}.` : "No events on this page."),
    table([
      { label: "Run", num: true, cell: (e) => String(e.run_number) },
      { label: "Event", num: true, cell: (e) => String(e.event_number) },
      { label: "Online Filter decisions", cell: (e) => decisions(e.olt_result) },
    ], rows, `Events of file ${fuid}`, { id: "events-table", class: "narrow" }),
    pagerNav);
}

// --- selections ---------------------------------------------------------------------------

const SELECTION_KEYS = ["dataset", "run_min", "run_max", "all", "any", "none"];
const ROLES = [["", "—"], ["all", "all of"], ["any", "any of"], ["none", "none of"]];

export function fillChoices() {
  for (const id of ["select-dataset", "overlap-dataset"]) {
    const select = $(id);
    const chosen = select.value;
    select.replaceChildren(new Option("all datasets", ""),
      ...[...names.datasets.values()].map((d) => new Option(`${d.id}: ${d.name}`, String(d.id))));
    select.value = chosen;
  }
  $("select-bits").replaceChildren(...names.bits.map((b) => el("label", { class: "bit", title: b.description },
    el("span", { class: "bit-name" }, b.name),
    el("select", { name: `bit-${b.name}`, "data-bit": b.name },
      ROLES.map(([value, text]) => el("option", { value }, text))))));
}

function setChoice(select, value) {
  if (value && ![...select.options].some((o) => o.value === value)) {
    select.add(new Option(`dataset ${value}`, value));
  }
  select.value = value || "";
}

function selectionFromForm() {
  const out = {
    dataset: $("select-dataset").value,
    run_min: $("select-run-min").value.trim(),
    run_max: $("select-run-max").value.trim(),
  };
  for (const role of ["all", "any", "none"]) {
    out[role] = [...$("select-bits").querySelectorAll("select")]
      .filter((s) => s.value === role).map((s) => s.dataset.bit).join(",");
  }
  return out;
}

function describe(sel) {
  const parts = [];
  for (const [role, text] of [["all", "passing all of"], ["any", "passing any of"], ["none", "passing none of"]]) {
    if (sel[role]) parts.push(`${text} ${sel[role].split(",").join(", ")}`);
  }
  if (sel.dataset) parts.push(`in ${datasetName(Number(sel.dataset))}`);
  if (sel.run_min || sel.run_max) parts.push(`runs ${sel.run_min || "0"}–${sel.run_max || "…"}`);
  return parts.length ? parts.join(", ") : "all events of the catalogue";
}

export function submitSelection(event) {
  event.preventDefault();
  const sel = selectionFromForm();
  const per = new URLSearchParams(location.hash.split("?")[1] || "").get("per");
  location.hash = hashOf("/select", { ...sel, per });
}

async function select(params, signal) {
  document.title = "Select by decision · EventIndex";
  const sel = Object.fromEntries(SELECTION_KEYS.map((k) => [k, params[k] || ""]));
  // The form shows the selection the link holds.
  setChoice($("select-dataset"), sel.dataset);
  $("select-run-min").value = sel.run_min;
  $("select-run-max").value = sel.run_max;
  const roles = new Map();
  for (const role of ["all", "any", "none"]) for (const name of sel[role].split(",")) if (name) roles.set(name, role);
  for (const s of $("select-bits").querySelectorAll("select")) s.value = roles.get(s.dataset.bit) || "";

  const query = new URLSearchParams(Object.entries(sel).filter(([, v]) => v)).toString();
  const total = await getJson(`/v1/selection/count?${query}`, signal);

  // Per-run counts, a page of runs at a time: the runs in scope (the service's run list,
  // from the run range's start), then the selection counted over that page's runs.
  const per = perOf(params);
  const runMin = intParam(sel, "run_min", 0);
  const runMax = intParam(sel, "run_max", Infinity);
  const after = Math.max(intParam(params, "after", -1), runMin - 1);
  const page = await getJson(
    `/v1/runs?after=${after}&limit=${per}` + (sel.dataset ? `&dataset=${sel.dataset}` : ""), signal);
  const inScope = page.items.filter((r) => r.run_number <= runMax);
  const counts = new Map();
  if (inScope.length) {
    const scoped = new URLSearchParams(Object.entries({
      ...sel, run_min: inScope[0].run_number, run_max: inScope[inScope.length - 1].run_number,
    }).filter(([, v]) => v !== "")).toString();
    const grouped = await getJson(`/v1/selection/count?${scoped}&group_by=run`, signal);
    for (const g of grouped.groups) counts.set(g.run_number, g.n_events);
  }
  const last = inScope.length ? inScope[inScope.length - 1].run_number : null;
  const next = page.next_after != null && inScope.length === page.items.length && last < runMax
    ? { after: page.next_after } : null;
  const status = el("p", { class: "muted small", "aria-live": "polite" });
  const eventsPath = "/v1/selection/events" + (query ? "?" + query : "");
  $("select-result-body").replaceChildren(
    el("p", { class: "big" }, el("strong", { id: "select-total" }, fmt(total.n_events)), ` events ${describe(sel)}.`),
    el("p", { class: "row actions" },
      downloadLink(eventsPath, "eventindex-selection.ndjson",
        `Download the ${fmt(total.n_events)} events (NDJSON)`, total.n_events, status)),
    status,
    el("h3", {}, "Per run"),
    inScope.length ? table([
      { label: "Run", num: true, cell: (r) => runLink(r.run_number) },
      { label: sel.dataset ? "Events of the dataset" : "Events", num: true, cell: (r) => fmt(r.n_events) },
      { label: "Selected", num: true, cell: (r) => fmt(counts.get(r.run_number) || 0) },
      { label: "Share", cell: (r) => share(counts.get(r.run_number) || 0, r.n_events) },
    ], inScope, "Selected events per run", { id: "select-runs-table" }) : emptyPage("runs in scope", "/select", params),
    pager("/select", params, next, "runs"));
  $("select-result").hidden = false;
}

// --- overlap heat map -----------------------------------------------------------------------

export function submitOverlap(event) {
  event.preventDefault();
  location.hash = hashOf("/overlap", {
    dataset: $("overlap-dataset").value,
    run_min: $("overlap-run-min").value.trim(),
    run_max: $("overlap-run-max").value.trim(),
    show: $("overlap-show-as").value === "count" ? "count" : "",
  });
}

// Shade by a log scale of the share of events in scope (0.1% to 100%), so that rare pairs
// are visible beside common ones; the scale above the table says so.
function shade(fraction) {
  if (fraction <= 0) return 0;
  return Math.min(1, Math.max(0, (Math.log10(fraction * 100) + 1) / 3));
}

// At most four characters, so that nine columns fit a phone.
function compactPercent(part, whole) {
  if (!part || !whole) return "0";
  const p = (100 * part) / whole;
  if (p < 0.1) return "<.1%";
  if (p < 9.95) return p.toFixed(1) + "%";
  return Math.round(p) + "%";
}

async function overlap(params, signal) {
  document.title = "Decision overlap · EventIndex";
  const scope = { dataset: params.dataset || "", run_min: params.run_min || "", run_max: params.run_max || "" };
  setChoice($("overlap-dataset"), scope.dataset);
  $("overlap-run-min").value = scope.run_min;
  $("overlap-run-max").value = scope.run_max;
  const counts = params.show === "count";
  $("overlap-show-as").value = counts ? "count" : "percent";
  const query = new URLSearchParams(Object.entries(scope).filter(([, v]) => v)).toString();
  const data = await getJson("/v1/online-filter/overlap" + (query ? "?" + query : ""), signal);
  const total = data.n_events;
  const tbl = $("overlap-table");
  const label = (name, i) => [el("span", { class: "long" }, name), el("span", { class: "short", "aria-hidden": "true" }, String(i + 1))];
  tbl.tHead.replaceChildren(el("tr", {}, el("td"),
    data.decisions.map((name, i) => el("th", { scope: "col", title: name }, label(name, i)))));
  tbl.tBodies[0].replaceChildren(...data.matrix.map((row, i) => el("tr", {},
    el("th", { scope: "row", title: data.decisions[i] }, label(data.decisions[i], i)),
    row.map((value, j) => {
      const td = el("td", {
        title: `${data.decisions[i]} and ${data.decisions[j]}: ${fmt(value)} events ` +
               `(${percent(value, total)} of ${fmt(total)})`,
      }, counts ? fmt(value) : compactPercent(value, total));
      const t = total ? shade(value / total) : 0;
      if (value > 0) td.style.background = `rgba(31, 95, 191, ${(0.08 + 0.8 * t).toFixed(3)})`;
      if (t > 0.55) td.style.color = "#fff";
      return td;
    }))));
  tbl.hidden = false;
  $("overlap-scale").hidden = false;
  $("overlap-key").replaceChildren(...data.decisions.map((name) => el("li", {}, name)));
  $("overlap-key").hidden = false;
  $("overlap-total").textContent = `${fmt(total)} events in scope` +
    (scope.dataset || scope.run_min || scope.run_max ? ` (${describe(scope)}).` : ".");
}

// --- routing -----------------------------------------------------------------------------

const ROUTES = [
  [/^\/datasets$/, (m, p, s) => datasets(p, s), "view-browse", "datasets"],
  [/^\/datasets\/(\d+)$/, (m, p, s) => dataset(Number(m[1]), "runs", p, s), "view-browse", "datasets"],
  [/^\/datasets\/(\d+)\/files$/, (m, p, s) => dataset(Number(m[1]), "files", p, s), "view-browse", "datasets"],
  [/^\/runs$/, (m, p, s) => runs(p, s), "view-browse", "runs"],
  [/^\/runs\/(\d+)$/, (m, p, s) => run(Number(m[1]), p, s), "view-browse", "runs"],
  [/^\/files\/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$/,
    (m, p, s) => file(m[1].toLowerCase(), p, s), "view-browse", "datasets"],
  [/^\/select$/, (m, p, s) => select(p, s), "view-select", "select"],
  [/^\/overlap$/, (m, p, s) => overlap(p, s), "view-overlap", "overlap"],
];

// The view for a hash path: {section, nav, render(signal)}; null for the picking view.
export function resolve(path, search) {
  const params = paramsOf(search);
  for (const [pattern, show, section, nav] of ROUTES) {
    const m = pattern.exec(path);
    if (m) return { section, nav, render: (signal) => show(m, params, signal) };
  }
  return {
    section: "view-browse",
    nav: null,
    render: async () => {
      frame("Not a view of this page", [[null, "Unknown"]],
        el("p", {}, `This page has no view “${path}”. `, link("#/", "Pick events"), " or browse the ",
          link("#/datasets", "datasets"), "."));
    },
  };
}

// A failed view: not-found and bad links say so in the view; the rest in the banner.
export function failed(err, section, onBack) {
  $("select-result").hidden = true;
  if (err.status === 404 || err.status === 400 || err.status === 422) {
    if (section === "view-browse") {
      frame("Not found", [HOME, [null, "Not found"]], el("p", { class: "problem" }, err.message));
    } else {
      banner(err.message);
    }
  } else {
    explain(err, onBack);
  }
}
