// EventIndex page: picking and the catalogue browser. The hash holds the view
// (#/datasets/3, #/files/<uuid>, #/select?all=dimuon ...), so links can be shared and the
// back button works. No framework, no network beyond this service.
import { $, banner, explain, loadNames, names, ProblemError } from "./api.js";
import * as browse from "./browse.js";
import * as pick from "./pick.js";

const VIEWS = ["view-pick", "view-browse", "view-select", "view-overlap"];
const HEADINGS = {
  "view-pick": "input-title", "view-browse": "browse-title",
  "view-select": "select-title", "view-overlap": "overlap-title",
};

let navigation = null;      // the AbortController of the view being shown
let namesReady = null;      // the promise of the catalogue's names
let firstRoute = true;

async function loadCatalogue() {
  try {
    await loadNames();
    const n = names.datasets.size;
    $("catalogue-status").textContent =
      `Catalogue: ${n.toLocaleString()}${n >= 1000 ? "+" : ""} datasets, ` +
      `${names.bits.length} Online Filter decisions.`;
    browse.fillChoices();
    pick.refresh();
    return true;
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      $("catalogue-status").textContent =
        "This service needs an API token with the read scope: enter it under \"API token\".";
      $("token-box").open = true;
      return true;
    }
    $("catalogue-status").textContent = "The catalogue cannot be reached right now.";
    return false;
  }
}

async function reloadAll() {
  namesReady = loadCatalogue();
  await namesReady;
  await route();
}

async function route() {
  const raw = location.hash.replace(/^#/, "");
  const [path, search = ""] = raw.split("?", 2);
  if (navigation) navigation.abort();
  navigation = new AbortController();
  const { signal } = navigation;
  banner("");
  const view = path === "" || path === "/" ? null : browse.resolve(path, new URLSearchParams(search));
  const section = view ? view.section : "view-pick";
  for (const id of VIEWS) $(id).hidden = id !== section;
  const nav = view ? view.nav : "pick";
  for (const a of document.querySelectorAll("nav.views a")) {
    if (a.dataset.view === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!firstRoute) {
    window.scrollTo(0, 0);
    $(HEADINGS[section]).focus({ preventScroll: true });
  }
  firstRoute = false;
  if (!view) {
    document.title = "EventIndex · SPD event picking";
    return;
  }
  // The view being replaced stays, dimmed, until the new one has arrived.
  const shown = $(section);
  shown.setAttribute("aria-busy", "true");
  try {
    await namesReady;
    await view.render(signal);
  } catch (err) {
    if (err.name === "AbortError" || signal.aborted) return;
    browse.failed(err instanceof ProblemError ? err : new ProblemError(0, String(err)), section, reloadAll);
  } finally {
    if (!signal.aborted) shown.removeAttribute("aria-busy");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("eventindex-token") || "";
  let applied = $("token").value.trim();
  const applyToken = () => {
    const token = $("token").value.trim();
    if (token === applied) return;
    applied = token;
    sessionStorage.setItem("eventindex-token", token);
    reloadAll();
  };
  $("token").addEventListener("change", applyToken);
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    applyToken();
  });
  pick.init(reloadAll);
  $("select-form").addEventListener("submit", browse.submitSelection);
  $("overlap-form").addEventListener("submit", browse.submitOverlap);
  window.addEventListener("hashchange", route);
  namesReady = loadCatalogue().then((ok) => {
    if (!ok) explain(new ProblemError(0, "the catalogue did not answer."), reloadAll);
    return ok;
  });
  route();
});
