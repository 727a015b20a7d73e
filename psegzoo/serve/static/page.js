// psegzoo's page: choose a model (and one to compare), drop an image, see the overlay and the classes.
// Plain JavaScript against the server's own API; nothing is loaded from anywhere else.
"use strict";

const TOKEN_KEY = "psegzoo-token";
const $ = (id) => document.getElementById(id);
const state = { file: null, imageUrl: null, results: {}, shown: null, seq: 0 };

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class NeedsToken extends Error {}

async function call(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) { askToken(); throw new NeedsToken("this server needs a token"); }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response.json();
}

function askToken() {
  $("token-form").hidden = false;
  $("token").focus();
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function option(name) {
  const el = document.createElement("option");
  el.value = name;
  el.textContent = name;
  return el;
}

async function loadModels() {
  const doc = await call("/v1/models");
  $("token-form").hidden = true;
  const served = doc.served.map((m) => m.name);
  const names = served.concat(doc.available.filter((n) => !served.includes(n)));
  const a = $("model-a"), b = $("model-b");
  a.replaceChildren(...names.map(option));
  b.replaceChildren(option(""), ...names.map(option));
  b.options[0].textContent = "(none)";
  const device = doc.served.length ? doc.served[0].device : "";
  $("status").textContent = served.length + " model(s) loaded" + (device ? " on " + device : "")
    + (doc.any_model ? ", any manifest entry on request" : "");
}

async function predict(model, file, opacity) {
  const query = new URLSearchParams({ model, format: "json", overlay: "true", opacity: String(opacity) });
  return call("/v1/predict?" + query, {
    method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
  });
}

async function run() {
  if (!state.file) return;
  const seq = ++state.seq;
  const models = [$("model-a").value, $("model-b").value].filter((m, i, all) => m && all.indexOf(m) === i);
  showError("");
  $("results").classList.add("busy");
  try {
    const docs = await Promise.all(models.map((m) => predict(m, state.file, $("opacity").value)));
    if (seq !== state.seq) return;  // a newer request replaced this one
    state.results = {};
    models.forEach((m, i) => { state.results[m] = docs[i]; });
    state.shown = models.includes(state.shown) ? state.shown : models[0];
    render();
  } catch (err) {
    if (!(err instanceof NeedsToken)) showError(err.message);
  } finally {
    $("results").classList.remove("busy");
  }
}

function render() {
  const doc = state.results[state.shown];
  if (!doc) return;
  $("results").hidden = false;
  $("image").src = state.imageUrl;
  $("image-size").textContent = doc.width + " x " + doc.height;
  $("overlay").src = "data:image/png;base64," + doc.overlay_png;
  const seconds = doc.timings && doc.timings.total;
  $("timing").textContent = seconds ? (1000 * seconds).toFixed(0) + " ms, " + doc.settings.device : "";
  const tabs = Object.keys(state.results).map((name, i) => {
    const tab = document.createElement("button");
    tab.type = "button";
    tab.className = "tab" + (name === state.shown ? " active" : "");
    tab.textContent = "ABCD"[i];
    tab.title = name;
    tab.addEventListener("click", () => { state.shown = name; render(); });
    return tab;
  });
  const label = document.createElement("span");
  label.className = "shown-model";
  label.textContent = state.shown;
  label.title = state.shown;
  $("tabs").replaceChildren(...(tabs.length > 1 ? tabs : []), label);
  $("legend-model").textContent = state.shown;
  $("legend").replaceChildren(...doc.classes.map((c) => {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = "rgb(" + c.color.join(",") + ")";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = c.percent.toFixed(1) + " %";
    li.append(swatch, name, pct);
    return li;
  }));
}

function choose(file) {
  if (!file) return;
  state.file = file;
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = URL.createObjectURL(file);
  run();
}

function wire() {
  $("file").addEventListener("change", (e) => choose(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]); });
  $("model-a").addEventListener("change", run);
  $("model-b").addEventListener("change", run);
  $("opacity").addEventListener("input", () => { $("opacity-value").textContent = $("opacity").value; });
  $("opacity").addEventListener("change", run);
  $("token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    try { await loadModels(); showError(""); run(); } catch (err) { if (!(err instanceof NeedsToken)) showError(err.message); }
  });
}

wire();
loadModels().catch((err) => { if (!(err instanceof NeedsToken)) showError(err.message); });
