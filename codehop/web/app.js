// codehop's web page: plain DOM code over the REST API (/health, /v1/collections,
// /v1/search, /v1/ask, /benchmarks.md). Text from the server is only ever set as textContent.
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

async function loadHealth() {
  try {
    const health = await api("/health");
    $("health").textContent = `v${health.version} · workspace ${health.workspace}`;
    $("health").title = `sandbox: ${health.sandbox}`;
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

async function ask(event) {
  event.preventDefault();
  const form = event.target;
  const answer = $("ask-answer");
  const generate = $("ask-generate").checked;
  form.querySelector("button").disabled = true;
  answer.hidden = false;
  answer.textContent = generate ? "answering…" : "retrieving…";
  $("ask-sources").replaceChildren();
  try {
    const result = await api("/v1/ask", { query: $("ask-query").value, collection: form.collection.value || undefined, generate });
    answer.replaceChildren(generate ? answerWithLinks(result.answer || "(no answer)", result.sources)
                                    : "retrieval only: the sources the answer would use");
    const cited = new Set(result.cited);
    const base = commonDir(result.sources);
    $("ask-sources").replaceChildren(...result.sources.map((hit, i) => hitItem(hit, base, `source-${i + 1}`, cited.has(i + 1))));
    $("ask-stages").textContent = result.stages.filter((s) => s.ran).map((s) => `${s.name} ${(s.seconds * 1000).toFixed(0)} ms`).join(" · ");
  } catch (error) {
    answer.replaceChildren(el("span", { class: "error", text: error.message }));
  } finally {
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
