// The web console: a browser client of the REST API (/v1/info, /v1/explain, /v1/rerank).
// Plain script, no build step: what you read here is what runs.
"use strict";

const INSTRUCTIONS = {
  web: "Given a web search query, retrieve relevant passages that answer the query",
  ecommerce: "Given an e-commerce search query, rank product titles by their relevance to the user's need",
};
const RAISED = "22, 163, 74";
const LOWERED = "220, 38, 38";
const $ = (id) => document.getElementById(id);
// heat: the last explanation's images, redrawn when the opacity slider moves.
const state = { info: null, images: { q: null, d: null }, batch: [], batchQuery: "", attached: new Map(), heat: [] };

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

const signed = (x, digits = 3) => `${x >= 0 ? "+" : "−"}${Math.abs(x).toFixed(digits)}`;

// ---- messages: each page has its own error box, so an error stays with the page that made it ----
function showError(box, text, violations) {
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
function clearError(box) { box.hidden = true; box.textContent = ""; }
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

function explainError(box, err) {
  if (!(err instanceof ApiError)) { showError(box, err.message); return; }
  // With field violations listed below, the message would only repeat them.
  let text = err.violations.length ? "The server refused the request:" : err.message;
  if (err.status === 401) text = "This server needs a bearer token: set it in Settings. " + text;
  else if (err.status === 429) text = "The server is busy; try again in a moment. " + text;
  else if (err.status === 503) text = "The server is not ready (loading or shutting down). " + text;
  if (err.requestId) text += ` (request id ${err.requestId})`;
  showError(box, text, err.violations);
}

// A request replaces what its page showed: the old result goes before the new one (or its error) comes.
async function busy(button, box, hideOld, work) {
  clearError(box);
  hideOld();
  button.disabled = true;
  try { await work(); } catch (err) { explainError(box, err); } finally { button.disabled = false; }
}

// ---- model info ----
async function loadInfo() {
  try {
    state.info = await api("GET", "v1/info");
  } catch (err) {
    if (err.status === 503) { showStatus("The model is loading; retrying…"); setTimeout(loadInfo, 2000); return; }
    explainError($("error"), err);
    return;
  }
  showStatus("");
  clearError($("error"));
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

// ---- files ----
function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// ---- single analysis ----
async function readImage(input, key) {
  const file = input.files[0];
  if (!file) { state.images[key] = null; return; }
  setImage(key, await readDataUrl(file));
}
function setImage(key, dataUrl) {
  state.images[key] = dataUrl;
  $(`${key}-image-clear`).hidden = !dataUrl;
}
function clearImage(key) {
  $(`${key}-image`).value = "";
  setImage(key, null);
}

function content(text, image) {
  const out = {};
  if (text.trim()) out.text = text;
  if (image) out.image = image;
  return out;
}

function colour(attribution, scale, alpha = 0.75) {
  const a = Math.min(1, Math.abs(attribution) / scale) * alpha;
  return `rgba(${attribution >= 0 ? RAISED : LOWERED}, ${a})`;
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
    span.title = `${signed(f.attribution)} (without it: ${f.occluded_score.toFixed(3)})`;
    span.dataset.attribution = f.attribution;
    box.appendChild(span);
    at = Math.max(at, f.end);
  }
  if (at < chars.length) box.appendChild(document.createTextNode(chars.slice(at).join("")));
}

function opacity() { return Number($("x-opacity").value) / 100; }

// The heat map is drawn over a grey copy of the picture, beside the original: the photo's own
// colours can then never be read as heat.
function drawHeat(entry) {
  const { canvas, img, fragments, scale } = entry;
  const ctx = canvas.getContext("2d");
  ctx.filter = "grayscale(1)";
  ctx.drawImage(img, 0, 0);
  ctx.filter = "none";
  const alpha = opacity();
  for (const f of fragments) {
    ctx.fillStyle = colour(f.attribution, scale, alpha);
    ctx.fillRect(f.x, f.y, f.width, f.height);
  }
  ctx.strokeStyle = "rgba(255, 255, 255, 0.8)";
  ctx.lineWidth = Math.max(1, canvas.width / 300);
  for (const f of fragments) ctx.strokeRect(f.x, f.y, f.width, f.height);
}

function cellAt(entry, event) {
  const rect = entry.canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * entry.canvas.width / rect.width;
  const y = (event.clientY - rect.top) * entry.canvas.height / rect.height;
  return entry.fragments.find((f) => x >= f.x && x < f.x + f.width && y >= f.y && y < f.y + f.height);
}

function renderImage(box, side, image, fragments, scale) {
  box.textContent = "";
  if (!image) return;
  const img = new Image();
  img.onload = () => {
    const pictures = document.createElement("div");
    pictures.className = "pictures";
    const original = document.createElement("figure");
    const shown = img.cloneNode();
    shown.alt = `${side} image`;
    original.append(shown);
    original.insertAdjacentHTML("beforeend", "<figcaption>original</figcaption>");
    const heat = document.createElement("figure");
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    canvas.dataset.side = side;
    heat.append(canvas);
    heat.insertAdjacentHTML("beforeend", "<figcaption>heat map (point at a cell for its value)</figcaption>");
    pictures.append(original, heat);
    box.appendChild(pictures);
    const entry = { canvas, img, fragments, scale };
    state.heat.push(entry);
    drawHeat(entry);
    canvas.addEventListener("mousemove", (event) => {
      const f = cellAt(entry, event);
      $("cell-value").textContent = f
        ? `${side} cell at (${f.x}, ${f.y}), ${f.width}×${f.height} px: ${signed(f.attribution)} ` +
          `(score without it: ${f.occluded_score.toFixed(3)})`
        : "Point at a cell for its value.";
    });
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
    throw new Error("Give the query and the document each a text, an image or both.");
  }
  const out = await api("POST", "v1/explain", { query, document: doc, instruction: instruction(), include_query: true });
  $("single-score").textContent = out.score.toFixed(3);
  setBand($("single-band"), out.score);
  const scale = Math.max(1e-6, ...out.fragments.map((f) => Math.abs(f.attribution)));
  state.heat = [];
  for (const [side, value] of [["query", query], ["document", doc]]) {
    const mine = out.fragments.filter((f) => f.source === side);
    renderText($(`x-${side}-text`), value.text, mine.filter((f) => f.field === "text"), scale);
    renderImage($(`x-${side}-image`), side, value.image, mine.filter((f) => f.field === "image"), scale);
  }
  const images = out.fragments.filter((f) => f.field === "image");
  $("heat-controls").hidden = images.length === 0;
  $("legend-low").textContent = signed(-scale);
  $("legend-high").textContent = signed(scale);
  $("cell-value").textContent = "Point at a cell for its value.";
  $("single-result").hidden = false;
}

function hideSingle() { $("single-result").hidden = true; }

// ---- batch rerank: one document per line; a line's first word may name an attached image ----
function documentLines() {
  const out = [];
  $("b-docs").value.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line) return;
    const [first, ...rest] = line.split(/\s+/);
    const image = state.attached.get(first);
    const text = image ? rest.join(" ") : line;
    out.push({ line: i + 1, text, image: image || null, name: image ? first : "" });
  });
  return out;
}
function maxDocuments() {
  return state.info ? state.info.limits.max_documents_per_request : Infinity;
}
function countDocuments() {
  const n = documentLines().length;
  const max = maxDocuments();
  $("b-count").textContent = Number.isFinite(max) ? `(${n} of at most ${max})` : `(${n})`;
  $("b-count").classList.toggle("over", n > max);
}

function renderAttached() {
  const list = $("b-attached");
  list.textContent = "";
  for (const name of state.attached.keys()) {
    const item = document.createElement("li");
    item.textContent = `${name} `;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "link";
    remove.textContent = "remove";
    remove.addEventListener("click", () => { state.attached.delete(name); renderAttached(); countDocuments(); });
    item.appendChild(remove);
    list.appendChild(item);
  }
}

async function attach(files) {
  const named = new Set(documentLines().map((d) => d.name));
  const lines = [];
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    const name = file.name.replace(/\s+/g, "_");
    state.attached.set(name, await readDataUrl(file));
    if (!named.has(name)) lines.push(name);
  }
  if (lines.length) {
    const text = $("b-docs").value.replace(/\s+$/, "");
    $("b-docs").value = (text ? text + "\n" : "") + lines.join("\n");
  }
  renderAttached();
  countDocuments();
}

function label(row) {
  return row.name ? `${row.name}${row.text ? " " + row.text : ""}` : row.text;
}

function moved(row) {
  const by = row.position - row.rank;  // > 0: it went up
  return { text: by > 0 ? `▲${by}` : by < 0 ? `▼${-by}` : "–", cls: by > 0 ? "up" : by < 0 ? "down" : "" };
}

async function rerank() {
  const query = $("b-query").value.trim();
  const docs = documentLines();
  if (!query) throw new Error("Type a query.");
  if (!docs.length) throw new Error("Type at least one document, one per line.");
  if (docs.length > maxDocuments()) {
    throw new Error(`${docs.length} documents: this server takes at most ${maxDocuments()} per request.`);
  }
  const documents = docs.map((d) => (d.image ? content(d.text, d.image) : d.text));
  const body = { query, documents, instruction: instruction() };
  if (settings.topN > 0) body.top_n = settings.topN;
  let out;
  try {
    out = await api("POST", "v1/rerank", body);
  } catch (err) {
    // The server names documents[i]; the user reads line numbers.
    for (const v of err.violations || []) {
      v.field = v.field.replace(/^documents\[(\d+)\]/, (m, i) => (docs[i] ? `line ${docs[i].line}` : m));
    }
    throw err;
  }
  state.batchQuery = query;
  state.batch = out.results.map((r, k) => ({ ...docs[r.index], rank: k + 1, position: r.index + 1, score: r.relevance_score,
                                              logit: r.logit, band: bandOf(r.relevance_score) }));
  const tbody = $("b-table").querySelector("tbody");
  tbody.textContent = "";
  for (const row of state.batch) {
    const tr = document.createElement("tr");
    const cell = (value, cls = "") => {
      const td = document.createElement("td");
      td.textContent = value;
      if (cls) td.className = cls;
      tr.appendChild(td);
      return td;
    };
    cell(row.rank, "num");
    cell(row.line, "num");
    const m = moved(row);
    cell(m.text, `num ${m.cls}`).title = `incoming position ${row.position}, now ${row.rank}`;
    const doc = cell("", "doc");
    if (row.image) {
      const img = document.createElement("img");
      img.src = row.image;
      img.alt = row.name;
      doc.appendChild(img);
    }
    doc.appendChild(document.createTextNode(label(row)));
    cell(row.score.toFixed(3), "num").title = String(row.score);
    const band = cell("");
    const pill = document.createElement("span");
    pill.textContent = row.band;
    pill.className = `band band-${row.band}`;
    band.appendChild(pill);
    const why = document.createElement("button");
    why.type = "button";
    why.className = "link why";
    why.textContent = "why";
    why.title = "open the single analysis of this pair";
    why.addEventListener("click", () => explainRow(row));
    cell("").appendChild(why);
    tbody.appendChild(tr);
  }
  $("b-table").hidden = false;
  $("b-csv").disabled = false;
  $("b-summary").textContent = `${out.results.length} of ${docs.length} shown · ${out.timings.total_ms.toFixed(0)} ms`;
}

function hideBatch() {
  $("b-table").hidden = true;
  $("b-csv").disabled = true;
  $("b-summary").textContent = "";
  state.batch = [];
}

function explainRow(row) {
  $("q-text").value = state.batchQuery;
  clearImage("q");
  $("d-text").value = row.text;
  $("d-image").value = "";
  setImage("d", row.image);
  openPage("single");
  busy($("analyze"), $("single-error"), hideSingle, analyze);
}

function csvField(value) {
  const text = String(value);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}
function downloadCsv() {
  // Full precision: the shortest text that reads back as the same number.
  const lines = ["query,rank,line,moved,document,image,score,logit,band"];
  for (const r of state.batch) {
    lines.push([state.batchQuery, r.rank, r.line, r.position - r.rank, r.text, r.name, r.score, r.logit, r.band]
      .map(csvField).join(","));
  }
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

function wireBatchImages() {
  const area = $("b-docs");
  area.addEventListener("dragover", (e) => { e.preventDefault(); area.classList.add("dragging"); });
  area.addEventListener("dragleave", () => area.classList.remove("dragging"));
  area.addEventListener("drop", (e) => {
    e.preventDefault();
    area.classList.remove("dragging");
    attach([...e.dataTransfer.files]);
  });
  $("b-images").addEventListener("change", async (e) => { await attach([...e.target.files]); e.target.value = ""; });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => openPage(tab.dataset.page));
  $("q-image").addEventListener("change", (e) => readImage(e.target, "q"));
  $("d-image").addEventListener("change", (e) => readImage(e.target, "d"));
  $("q-image-clear").addEventListener("click", () => clearImage("q"));
  $("d-image-clear").addEventListener("click", () => clearImage("d"));
  $("analyze").addEventListener("click", (e) => busy(e.target, $("single-error"), hideSingle, analyze));
  $("rerank").addEventListener("click", (e) => busy(e.target, $("batch-error"), hideBatch, rerank));
  $("b-csv").addEventListener("click", downloadCsv);
  $("b-docs").addEventListener("input", countDocuments);
  $("x-opacity").addEventListener("input", () => state.heat.forEach(drawHeat));
  wireBatchImages();
  wireSettings();
  renderSettings();
  loadInfo();
});
