// EventIndex download worker. A link cannot send an Authorization header, and reading a
// stream in the page would hold all of it in memory: so the page hands this worker one
// job (API path, token, file name), opens /download/<id>, and the worker answers that
// navigation with the API's stream as an attachment, which the browser writes to disk as
// it arrives. A job is used once and forgotten; nothing is stored.
"use strict";

const JOB_LIFETIME_MS = 60000;
const jobs = new Map();  // id -> {path, token, filename, port, expires}

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("message", (event) => {
  const job = event.data || {};
  const port = event.ports[0];
  // Only this service's own streaming endpoints, never another origin.
  const ok = typeof job.id === "string" && typeof job.path === "string" &&
    /^\/v1\/(selection\/events|files\/[0-9a-fA-F-]+\/events)(\?|$)/.test(job.path);
  if (!ok || !port) return;
  jobs.set(job.id, { ...job, port, expires: Date.now() + JOB_LIFETIME_MS });
  // A job the page never opened is forgotten too (the worker may also just be stopped).
  setTimeout(() => jobs.delete(job.id), JOB_LIFETIME_MS);
  port.postMessage({ ready: true });
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  const match = /^\/download\/([\w-]+)$/.exec(url.pathname);
  if (url.origin !== self.location.origin || !match) return;
  const job = jobs.get(match[1]);
  jobs.delete(match[1]);
  event.respondWith(answer(job));
});

async function answer(job) {
  // 204: the browser stays on the page; the page hears why from the job's port.
  if (!job || job.expires < Date.now()) return new Response(null, { status: 204 });
  let upstream;
  try {
    upstream = await fetch(job.path, {
      headers: { Authorization: "Bearer " + job.token, Accept: "application/x-ndjson" },
    });
  } catch (_) {
    job.port.postMessage({ error: "the service did not answer." });
    return new Response(null, { status: 204 });
  }
  if (!upstream.ok) {
    let detail = upstream.statusText;
    try { detail = (await upstream.json()).detail || detail; } catch (_) { /* not JSON */ }
    job.port.postMessage({ error: detail, status: upstream.status });
    return new Response(null, { status: 204 });
  }
  job.port.postMessage({ started: true });
  const name = job.filename.replace(/[^\w.-]/g, "_");
  return new Response(upstream.body, {
    headers: {
      "Content-Type": upstream.headers.get("Content-Type") || "application/x-ndjson",
      "Content-Disposition": `attachment; filename="${name}"`,
    },
  });
}
