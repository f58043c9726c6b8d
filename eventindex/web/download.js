// Downloads of the service's NDJSON streams (a selection's events, a file's events),
// written to disk by the browser as they arrive: the page never holds them.
//
// Without a token a plain link does it. A link cannot send the token, so with one the
// page hands the request to a service worker (download-worker.js) that adds it. Where
// service workers are not available (a page served over plain http to another machine),
// the page reads the stream itself, but only up to IN_PAGE_LIMIT events.
import { $, authHeaders, el, fmt, hasToken, problemOf, saveBlob } from "./api.js";

const IN_PAGE_LIMIT = 200000;
const WORKER_WAIT_MS = 5000;

// A link to `path` saved as `filename`; `count` (events) bounds an in-page download;
// `status` is the element that says how it went.
export function downloadLink(path, filename, text, count, status) {
  return el("a", {
    href: path,
    download: filename,
    class: "button",
    onclick: (event) => {
      if (!hasToken()) return;  // the link itself streams to disk
      event.preventDefault();
      withToken(path, filename, count, status);
    },
  }, text);
}

async function withToken(path, filename, count, status) {
  status.textContent = "Starting the download…";
  let worker = null;
  try {
    worker = await downloadWorker();
  } catch (_) { /* none here: below */ }
  if (worker) {
    viaWorker(worker, path, filename, status);
  } else if (count <= IN_PAGE_LIMIT) {
    await inPage(path, filename, status);
  } else {
    status.textContent =
      `This browser cannot stream a download with a token here, and ${fmt(count)} events ` +
      `are too many to hold in the page: use curl -H "Authorization: Bearer $TOKEN" ` +
      `'${location.origin}${path}' > ${filename}, or narrow the selection.`;
  }
}

async function downloadWorker() {
  if (!("serviceWorker" in navigator)) return null;
  // A browser may refuse the worker without saying so (a policy, a private window):
  // after a few seconds the page does without it.
  const refused = new Promise((resolve) => setTimeout(() => resolve(null), WORKER_WAIT_MS));
  const ready = navigator.serviceWorker.register("/download-worker.js", { scope: "/" })
    .then(() => navigator.serviceWorker.ready)
    .then((registration) => registration.active);
  return Promise.race([ready, refused]);
}

function viaWorker(worker, path, filename, status) {
  const id = crypto.randomUUID();
  const channel = new MessageChannel();
  channel.port1.onmessage = ({ data }) => {
    if (data.ready) {
      // The worker answers this navigation with the stream as an attachment: the browser
      // saves it and the page stays.
      location.assign(`/download/${id}`);
    } else if (data.started) {
      status.textContent = `Download of ${filename} started.`;
      channel.port1.close();
    } else if (data.error) {
      status.textContent = `The download failed: ${data.error}`;
      channel.port1.close();
    }
  };
  worker.postMessage({ id, path, token: $("token").value.trim(), filename }, [channel.port2]);
}

async function inPage(path, filename, status) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/x-ndjson", ...authHeaders() } });
  } catch (_) {
    status.textContent = "The download failed: the service did not answer.";
    return;
  }
  if (!response.ok) {
    status.textContent = `The download failed: ${(await problemOf(response)).detail}`;
    return;
  }
  saveBlob(filename, await response.blob());
  status.textContent = `Downloaded ${filename}.`;
}
