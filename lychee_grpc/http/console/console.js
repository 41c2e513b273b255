// The web console: a browser client of the REST API (/v1/info, /v1/explain, /v1/rerank).
// Plain script, no build step: what you read here is what runs.
"use strict";

const INSTRUCTIONS = {
  web: "Given a web search query, retrieve relevant passages that answer the query",
  ecommerce: "Given an e-commerce search query, rank product titles by their relevance to the user's need",
};
const $ = (id) => document.getElementById(id);
const state = { info: null, images: { q: null, d: null }, batch: [] };

// ---- settings: the token lives in sessionStorage (this tab), the rest in localStorage ----
const settings = {
  get token() { return sessionStorage.getItem("lychee.token") || ""; },
  get instruction() { return localStorage.getItem("lychee.instruction") || ""; },
  get preset() { return localStorage.getItem("lychee.preset") || "server"; },
  get topN() { return Number(localStorage.getItem("lychee.topN") || 0); },
  get bands() {
    const server = state.info ? state.info.bands : { strong: 0.75, medium: 0.55 };
    const strong = localStorage.getItem("lychee.strong");
    const medium = localStorage.getItem("lychee.medium");
    return { strong: strong === null ? server.strong : Number(strong), medium: medium === null ? server.medium : Number(medium) };
  },
};

function bandOf(score) {
  const b = settings.bands;
  return score >= b.strong ? "strong" : score >= b.medium ? "medium" : "weak";
}

// ---- messages ----
function showError(text, violations) {
  const box = $("error");
  box.textContent = text;
  if (violations && violations.length) {
    const list = document.createElement("ul");
    for (const v of violations) {
      const item = document.createElement("li");
      item.textContent = `${v.field}: ${v.description}`;
      list.appendChild(item);
    }
    box.appendChild(list);
  }
  box.hidden = false;
}
function clearError() { $("error").hidden = true; $("error").textContent = ""; }
function showStatus(text) { $("status").textContent = text; $("status").hidden = !text; }

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.violations = e.field_violations || [];
    this.requestId = e.request_id || "";
  }
}

async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (settings.token) headers.authorization = `Bearer ${settings.token}`;
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, { error: { message: `cannot reach the server (${err.message})` } });
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function explainError(err) {
  // With field violations listed below, the message would only repeat them.
  let text = err.violations.length ? "The server refused the request:" : err.message;
  if (err.status === 401) text = "This server needs a bearer token: set it in Settings. " + text;
  else if (err.status === 429) text = "The server is busy; try again in a moment. " + text;
  else if (err.status === 503) text = "The server is not ready (loading or shutting down). " + text;
  if (err.requestId) text += ` (request id ${err.requestId})`;
  showError(text, err.violations);
}

async function busy(button, work) {
  clearError();
  button.disabled = true;
  try { await work(); } catch (err) { explainError(err); } finally { button.disabled = false; }
}

// ---- model info ----
async function loadInfo() {
  try {
    state.info = await api("GET", "v1/info");
  } catch (err) {
    if (err.status === 503) { showStatus("The model is loading; retrying…"); setTimeout(loadInfo, 2000); return; }
    explainError(err);
    return;
  }
  showStatus("");
  const info = state.info;
  $("model-line").textContent = `${info.model} · ${info.dtype} · ${info.devices.join(", ")}`;
  $("random-model").textContent = info.model;
  $("random-notice").hidden = !info.random_weights;
  $("s-server-bands").textContent = `strong ≥ ${info.bands.strong}, medium ≥ ${info.bands.medium}`;
  renderSettings();
  countDocuments();
}

function instruction() {
  return settings.preset === "server" ? "" : settings.instruction;
}

// ---- tabs ----
function openPage(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const on = tab.dataset.page === name;
    tab.setAttribute("aria-selected", String(on));
    $(`page-${tab.dataset.page}`).hidden = !on;
  }
}

// ---- single analysis ----
function readImage(input, key) {
  const file = input.files[0];
  if (!file) { state.images[key] = null; return; }
  const reader = new FileReader();
  reader.onload = () => { state.images[key] = reader.result; $(`${key}-image-clear`).hidden = false; };
  reader.readAsDataURL(file);
}
function clearImage(key) {
  state.images[key] = null;
  $(`${key}-image`).value = "";
  $(`${key}-image-clear`).hidden = true;
}

function content(text, image) {
  const out = {};
  if (text.trim()) out.text = text;
  if (image) out.image = image;
  return out;
}

function colour(attribution, scale) {
  const alpha = Math.min(1, Math.abs(attribution) / scale) * 0.75;
  return attribution >= 0 ? `rgba(22, 163, 74, ${alpha})` : `rgba(220, 38, 38, ${alpha})`;
}

function renderText(box, text, fragments, scale) {
  box.textContent = "";
  if (text === undefined) return;
  const chars = Array.from(text);  // offsets are in code points
  let at = 0;
  for (const f of [...fragments].sort((a, b) => a.start - b.start)) {
    if (f.start > at) box.appendChild(document.createTextNode(chars.slice(at, f.start).join("")));
    const span = document.createElement("mark");
    span.textContent = chars.slice(f.start, f.end).join("");
    span.style.background = colour(f.attribution, scale);
    span.title = `${f.attribution >= 0 ? "+" : ""}${f.attribution.toFixed(3)} (without it: ${f.occluded_score.toFixed(3)})`;
    span.dataset.attribution = f.attribution;
    box.appendChild(span);
    at = Math.max(at, f.end);
  }
  if (at < chars.length) box.appendChild(document.createTextNode(chars.slice(at).join("")));
}

function renderImage(box, image, fragments, scale) {
  box.textContent = "";
  if (!image) return;
  const img = new Image();
  img.onload = () => {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    for (const f of fragments) {
      ctx.fillStyle = colour(f.attribution, scale);
      ctx.fillRect(f.x, f.y, f.width, f.height);
    }
    canvas.title = "heat: green cells raised the score, red cells lowered it";
    box.appendChild(canvas);
  };
  img.src = image;
}

function setBand(el, score) {
  const band = bandOf(score);
  el.textContent = band;
  el.className = `band band-${band}`;
}

async function analyze() {
  const query = content($("q-text").value, state.images.q);
  const doc = content($("d-text").value, state.images.d);
  if (!Object.keys(query).length || !Object.keys(doc).length) {
    showError("Give the query and the document each a text, an image or both.");
    return;
  }
  const out = await api("POST", "v1/explain", { query, document: doc, instruction: instruction(), include_query: true });
  $("single-score").textContent = out.score.toFixed(3);
  setBand($("single-band"), out.score);
  const scale = Math.max(1e-6, ...out.fragments.map((f) => Math.abs(f.attribution)));
  for (const [side, value] of [["query", query], ["document", doc]]) {
    const mine = out.fragments.filter((f) => f.source === side);
    renderText($(`x-${side}-text`), value.text, mine.filter((f) => f.field === "text"), scale);
    renderImage($(`x-${side}-image`), value.image, mine.filter((f) => f.field === "image"), scale);
  }
  $("single-result").hidden = false;
}

// ---- batch rerank ----
function titles() {
  return $("b-docs").value.split("\n").map((t) => t.trim()).filter((t) => t);
}
function maxDocuments() {
  return state.info ? state.info.limits.max_documents_per_request : Infinity;
}
function countDocuments() {
  const n = titles().length;
  const max = maxDocuments();
  $("b-count").textContent = Number.isFinite(max) ? `(${n} of at most ${max})` : `(${n})`;
  $("b-count").classList.toggle("over", n > max);
}

async function rerank() {
  const query = $("b-query").value.trim();
  const docs = titles();
  if (!query) { showError("Type a query."); return; }
  if (!docs.length) { showError("Type at least one document title, one per line."); return; }
  if (docs.length > maxDocuments()) {
    showError(`${docs.length} titles: this server takes at most ${maxDocuments()} per request.`);
    return;
  }
  const body = { query, documents: docs, instruction: instruction() };
  if (settings.topN > 0) body.top_n = settings.topN;
  const out = await api("POST", "v1/rerank", body);
  state.batch = out.results.map((r, rank) => ({ rank: rank + 1, index: r.index, title: docs[r.index],
                                                 score: r.relevance_score, band: bandOf(r.relevance_score) }));
  const tbody = $("b-table").querySelector("tbody");
  tbody.textContent = "";
  for (const row of state.batch) {
    const tr = document.createElement("tr");
    for (const value of [row.rank, row.index, row.title, row.score.toFixed(3)]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.appendChild(td);
    }
    const band = document.createElement("td");
    const label = document.createElement("span");
    label.textContent = row.band;
    label.className = `band band-${row.band}`;
    band.appendChild(label);
    tr.appendChild(band);
    tbody.appendChild(tr);
  }
  $("b-table").hidden = false;
  $("b-csv").disabled = false;
  $("b-summary").textContent = `${out.results.length} of ${docs.length} shown · ${out.timings.total_ms.toFixed(0)} ms`;
}

function csvField(value) {
  const text = String(value);
  return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}
function downloadCsv() {
  const lines = ["rank,index,document,score,band"];
  for (const r of state.batch) lines.push([r.rank, r.index, r.title, r.score.toFixed(3), r.band].map(csvField).join(","));
  const url = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = "rerank.csv";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// ---- settings page ----
function renderSettings() {
  $("s-preset").value = settings.preset;
  $("s-instruction").value = settings.preset === "server" && state.info ? state.info.default_instruction : settings.instruction;
  $("s-instruction").disabled = settings.preset === "server";
  $("s-strong").value = settings.bands.strong;
  $("s-medium").value = settings.bands.medium;
  $("s-topn").value = settings.topN;
  $("s-token").value = settings.token;
}

function wireSettings() {
  $("s-preset").addEventListener("change", (e) => {
    const preset = e.target.value;
    localStorage.setItem("lychee.preset", preset);
    if (INSTRUCTIONS[preset]) localStorage.setItem("lychee.instruction", INSTRUCTIONS[preset]);
    renderSettings();
  });
  $("s-instruction").addEventListener("input", (e) => {
    localStorage.setItem("lychee.preset", "custom");
    localStorage.setItem("lychee.instruction", e.target.value);
    $("s-preset").value = "custom";
  });
  for (const [id, key] of [["s-strong", "lychee.strong"], ["s-medium", "lychee.medium"], ["s-topn", "lychee.topN"]]) {
    $(id).addEventListener("input", (e) => localStorage.setItem(key, e.target.value));
  }
  $("s-token").addEventListener("input", (e) => {
    sessionStorage.setItem("lychee.token", e.target.value);
    if (!state.info) loadInfo();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => openPage(tab.dataset.page));
  $("q-image").addEventListener("change", (e) => readImage(e.target, "q"));
  $("d-image").addEventListener("change", (e) => readImage(e.target, "d"));
  $("q-image-clear").addEventListener("click", () => clearImage("q"));
  $("d-image-clear").addEventListener("click", () => clearImage("d"));
  $("analyze").addEventListener("click", (e) => busy(e.target, analyze));
  $("rerank").addEventListener("click", (e) => busy(e.target, rerank));
  $("b-csv").addEventListener("click", downloadCsv);
  $("b-docs").addEventListener("input", countDocuments);
  wireSettings();
  renderSettings();
  loadInfo();
});
