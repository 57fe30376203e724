// codehop's web page: plain DOM code over the REST API (/health, /v1/collections,
// /v1/search, /v1/ask, /benchmarks.md). /health's background indexing shows as progress bars,
// polled while it runs; an answer given on a partial index says so. Text from the server is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "codehop.apiKey";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") node.textContent = value; else node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

async function api(path, body) {
  const headers = { "content-type": "application/json" };
  const key = localStorage.getItem(KEY);
  if (key) headers.authorization = `Bearer ${key}`;
  const response = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (data.error && data.error.message) || data.detail || response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return data;
}

function showError(target, error) {
  target.replaceChildren(el("li", { class: "error", text: String(error.message || error) }));
}

function commonDir(hits) {
  // The folder all results share, shown once instead of on every line.
  if (!hits.length) return "";
  let prefix = hits[0].path.slice(0, hits[0].path.lastIndexOf("/") + 1);
  for (const hit of hits) while (prefix && !hit.path.startsWith(prefix)) prefix = prefix.slice(0, prefix.slice(0, -1).lastIndexOf("/") + 1);
  return prefix;
}

function whereOf(hit, base) {
  return `${hit.path.slice(base.length)}:${hit.start_line}-${hit.end_line}`;
}

function hitItem(hit, base, id, cited) {
  const item = el("li", id ? { id } : {},
    el("span", { class: "where", title: hit.path, text: whereOf(hit, base) }),
    el("span", { class: "score", text: hit.score.toFixed(3) }),
    el("pre", { text: hit.text.length > 700 ? hit.text.slice(0, 700) + " …" : hit.text }));
  if (cited) item.classList.add("cited");
  return item;
}

// Background work the server reports in /health: while some runs, the page polls every 2 s.
const BUSY = new Set(["waiting", "scanning", "loading model", "embedding"]);
let polling = null;

function indexingRow(status) {
  // One collection's background indexing: the phase, a bar, counts, rate and time left.
  const scanning = status.state === "scanning";
  const [done, total, unit] = scanning ? [status.files_done, status.files_total, "files"]
                                       : [status.chunks_done, status.chunks_total, "chunks"];
  const percent = total ? Math.floor(100 * done / total) : 0;
  const busy = BUSY.has(status.state);
  const bar = el("progress", { max: "100", value: String(busy ? percent : 100) });
  const parts = [`${status.collection}: ${status.state}`];
  if (total) parts.push(`${done.toLocaleString()}/${total.toLocaleString()} ${unit} (${percent}%)`);
  const rate = scanning ? status.rate_files_per_s : status.rate_chunks_per_s;
  if (busy && rate) parts.push(`${rate.toFixed(rate < 10 ? 1 : 0)} ${unit}/s`);
  if (busy && status.eta_s != null) parts.push(`ETA ${Math.ceil(status.eta_s)} s`);
  if (!busy && status.dense_fraction != null && status.dense_fraction < 1) {
    parts.push(`dense index covers ${Math.round(100 * status.dense_fraction)}%`);
  }
  if (status.error) parts.push(status.error);
  const row = el("li", { class: `indexing-${status.state.replace(" ", "-")}` }, bar, el("span", { text: parts.join(" · ") }));
  if (status.error) row.classList.add("error");
  return row;
}

function warmUpRow(model) {
  // The generator's warm start (loading, or converting once per machine), when the server reports it.
  const busy = model.state === "loading";
  return el("li", {}, el("progress", { max: "100", value: String(busy ? model.percentage || 0 : 100) }),
    el("span", { text: `model: ${busy ? `loading ${model.percentage || 0}%` : model.state}${model.message ? ` · ${model.message}` : ""}` }));
}

async function loadHealth() {
  try {
    const health = await api("/health");
    $("health").textContent = `v${health.version} · workspace ${health.workspace}`;
    $("health").title = `sandbox: ${health.sandbox}`;
    const statuses = Object.values(health.indexing || {});
    const rows = statuses.map(indexingRow);
    if (health.warm_up) rows.unshift(warmUpRow(health.warm_up));
    $("indexing").replaceChildren(...rows);
    $("indexing").hidden = rows.length === 0;
    const busy = statuses.some((s) => BUSY.has(s.state)) || (health.warm_up && health.warm_up.state === "loading");
    if (busy && !polling) polling = setInterval(loadHealth, 2000);
    if (!busy && polling) { clearInterval(polling); polling = null; loadCollections(); }
  } catch (error) {
    $("health").textContent = `server unreachable (${error.message})`;
    $("health").classList.add("error");
  }
}

async function loadCollections() {
  const body = $("collections");
  try {
    const collections = await api("/v1/collections");
    body.replaceChildren(...collections.map((c) => el("tr", {},
      el("td", { text: c.name }), el("td", { text: String(c.documents) }), el("td", { text: String(c.chunks) }),
      el("td", { text: c.dense }), el("td", { text: c.embedding_model }))));
    if (!collections.length) body.replaceChildren(el("tr", {}, el("td", { colspan: "5", class: "muted", text: "no collection yet: run codehop index PATH" })));
    for (const select of document.querySelectorAll(".collection-choice")) {
      select.replaceChildren(...collections.map((c) => el("option", { value: c.name, text: c.name })));
    }
  } catch (error) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: "5", class: "error", text: error.message })));
  }
}

async function search(event) {
  event.preventDefault();
  const form = event.target;
  const list = $("search-results");
  form.querySelector("button").disabled = true;
  try {
    const response = await api("/v1/search", { query: $("search-query").value, mode: $("search-mode").value,
      collection: form.collection.value || undefined, k: 10 });
    const base = commonDir(response.results);
    $("search-info").textContent = `${response.results.length} results from ${response.collection} (${response.mode}) in ${response.elapsed_ms.toFixed(1)} ms` + (base ? ` · under ${base}` : "");
    list.replaceChildren(...response.results.map((hit) => hitItem(hit, base)));
  } catch (error) {
    $("search-info").textContent = "";
    showError(list, error);
  } finally {
    form.querySelector("button").disabled = false;
  }
}

function answerWithLinks(answer, sources) {
  // "[2]" in the answer links to source 2 below.
  const out = document.createDocumentFragment();
  let last = 0;
  for (const match of answer.matchAll(/\[(\d+)\]/g)) {
    const n = Number(match[1]);
    if (n < 1 || n > sources.length) continue;
    out.append(answer.slice(last, match.index), el("a", { href: `#source-${n}`, text: match[0] }));
    last = match.index + match[0].length;
  }
  out.append(answer.slice(last));
  return out;
}

function answerNotes(result, generate) {
  // What the reader should know about this answer: a partial index, no citation.
  const notes = [];
  const partial = result.partial || {};
  if (partial.dense != null && partial.dense < 1) {
    notes.push(`Answered while indexing: the dense index covered ${Math.round(100 * partial.dense)}% of the chunks, so better sources may not have been searched yet. Ask again when indexing is done.`);
  }
  if (generate && result.answer && result.sources.length && !result.cited.length) {
    notes.push("This answer cites no source ([n]): check it against the sources below.");
  }
  return notes.map((text) => el("p", { class: "note", text }));
}

async function ask(event) {
  event.preventDefault();
  const form = event.target;
  const answer = $("ask-answer");
  const generate = $("ask-generate").checked;
  form.querySelector("button").disabled = true;
  answer.hidden = false;
  // A first answer can wait on the model loading: count the seconds so the page never looks stuck.
  const started = Date.now();
  const waiting = generate ? "answering…" : "retrieving…";
  answer.textContent = waiting;
  const ticker = setInterval(() => { answer.textContent = `${waiting} ${Math.round((Date.now() - started) / 1000)} s`; }, 1000);
  $("ask-sources").replaceChildren();
  $("ask-notes").replaceChildren();
  try {
    const result = await api("/v1/ask", { query: $("ask-query").value, collection: form.collection.value || undefined, generate });
    clearInterval(ticker);
    answer.replaceChildren(generate ? answerWithLinks(result.answer || "(no answer)", result.sources)
                                    : "retrieval only: the sources the answer would use");
    $("ask-notes").replaceChildren(...answerNotes(result, generate));
    const cited = new Set(result.cited);
    const base = commonDir(result.sources);
    $("ask-sources").replaceChildren(...result.sources.map((hit, i) => hitItem(hit, base, `source-${i + 1}`, cited.has(i + 1))));
    $("ask-stages").textContent = result.stages.filter((s) => s.ran).map((s) => `${s.name} ${(s.seconds * 1000).toFixed(0)} ms`).join(" · ");
  } catch (error) {
    answer.replaceChildren(el("span", { class: "error", text: error.message }));
  } finally {
    clearInterval(ticker);
    form.querySelector("button").disabled = false;
  }
}

async function loadBenchmarks() {
  try {
    const response = await fetch("/benchmarks.md");
    $("bench-text").textContent = response.ok ? await response.text() : "no benchmark summary on this install";
  } catch (error) {
    $("bench-text").textContent = error.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY) || "";
  key.addEventListener("change", () => {
    if (key.value) localStorage.setItem(KEY, key.value); else localStorage.removeItem(KEY);
    loadCollections();
  });
  $("search-form").addEventListener("submit", search);
  $("ask-form").addEventListener("submit", ask);
  loadHealth();
  loadCollections();
  loadBenchmarks();
});
