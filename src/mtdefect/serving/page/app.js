// Operator page: one tile in, the service's answer out. Plain JS, no libraries, same-origin requests
// only (POST /detect, POST /overlay, GET /readyz; POST /detect_tile when 2 to 6 photographs of one
// tile are dropped together: one tile decision, each view drawn with its mask). The page's state is on <main data-state>:
// idle | busy | done | error (the browser test waits on it).
"use strict";

// The overlay's class colours (mtdefect.inference.overlay.CLASS_COLOURS; a unit test keeps them equal).
const CLASS_COLOURS = {
  MT_Blowhole: "#d55e00",
  MT_Break: "#cc79a7",
  MT_Crack: "#56b4e9",
  MT_Fray: "#009e73",
  MT_Uneven: "#e69f00",
};
const OTHER_COLOUR = "#f0e442";
const FREE_COLOUR = "#9aa5b1"; // MT_Free: no defect (not drawn on the overlay)
const KEY_STORAGE = "mtdefect.apiKey";

// What to tell a person for each refusal; the service's own sentence is shown under it.
const STATUS_TEXT = {
  400: "The service could not read this file as a tile image.",
  401: "The service needs an API key: enter it at the top right and try again.",
  405: "The service refused the request method.",
  413: "The file is too big for the service (too many bytes or pixels).",
  415: "This file is not an image the service accepts (JPEG, PNG, BMP or TIFF).",
  429: "The service is busy: try again in a moment.",
  503: "The service is not ready: its model is not loaded.",
  504: "The service took too long to answer: try again.",
};

const $ = (id) => document.getElementById(id);
let busy = false;
const objectUrls = { original: null, overlay: null };

function setState(state) {
  $("app").dataset.state = state;
  $("app").setAttribute("aria-busy", state === "busy" ? "true" : "false");
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function showError(title, detail) {
  $("error-title").textContent = title;
  $("error-detail").textContent = detail || "";
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-title").textContent = "";
  $("error-detail").textContent = "";
}

function setImage(which, blob) {
  const img = $(which);
  if (objectUrls[which]) URL.revokeObjectURL(objectUrls[which]);
  objectUrls[which] = blob ? URL.createObjectURL(blob) : null;
  const empty = img.parentElement.querySelector(".empty");
  if (!blob) {
    img.hidden = true;
    img.removeAttribute("src");
    empty.hidden = false;
    return;
  }
  img.onload = () => { img.hidden = false; empty.hidden = true; };
  img.onerror = () => {  // e.g. TIFF: the service reads it, this browser cannot show it
    img.hidden = true;
    empty.hidden = false;
    empty.textContent = "this browser cannot display the file; see the overlay";
  };
  empty.textContent = "loading…";
  img.src = objectUrls[which];
}

async function readError(response) {
  let message = "";
  try {
    const body = await response.json();
    message = body && typeof body.error === "string" ? body.error : "";
  } catch (_) {
    message = "";
  }
  const title = STATUS_TEXT[response.status]
    || (response.status >= 500 ? "The service failed to answer." : "The service refused the request.");
  return { title: title + " (HTTP " + response.status + ")", detail: message ? "Service says: " + message : "" };
}

async function post(path, file) {
  const form = new FormData();
  form.append("image", file, file.name || "tile");
  return fetch(path, { method: "POST", body: form, headers: authHeaders(), cache: "no-store" });
}

function fmt(value, digits) {
  return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "–";
}

function friendly(name) {
  return String(name).replace(/^MT_/, "");
}

function colourOf(name) {
  return CLASS_COLOURS[name] || (name === "MT_Free" ? FREE_COLOUR : OTHER_COLOUR);
}

function swatch(name) {
  const s = document.createElement("span");
  s.className = "swatch";
  s.style.backgroundColor = colourOf(name);
  return s;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function render(result, roundTripMs) {
  const defective = result.defective === true;
  const decision = $("decision");
  decision.dataset.value = defective ? "defective" : "clean";
  decision.className = "decision " + (defective ? "is-defective" : "is-clean");
  decision.textContent = defective ? "DEFECTIVE · reject" : "CLEAN · pass";

  const score = typeof result.score === "number" ? result.score : null;
  const threshold = typeof result.decision_threshold === "number" ? result.decision_threshold : null;
  $("score").textContent = fmt(score, 3);
  $("score").dataset.value = score === null ? "" : String(score);
  $("threshold").textContent = threshold === null ? "none (decided by regions)" : fmt(threshold, 3);
  $("threshold").dataset.value = threshold === null ? "" : String(threshold);
  $("score-bar").style.width = (Math.max(0, Math.min(1, score || 0)) * 100).toFixed(1) + "%";
  $("score-bar").className = "meter-fill " + (defective ? "is-defective" : "is-clean");
  $("threshold-mark").hidden = threshold === null;
  if (threshold !== null) $("threshold-mark").style.left = (Math.max(0, Math.min(1, threshold)) * 100).toFixed(1) + "%";

  const cls = typeof result.defect_class === "string" && result.defect_class ? result.defect_class : null;
  const scores = result.class_scores && typeof result.class_scores === "object" ? result.class_scores : {};
  const hasClassHead = Object.keys(scores).length > 0;
  const clsNode = $("defect-class");
  clsNode.dataset.value = cls || "";
  clsNode.textContent = "";
  if (cls) {
    clsNode.appendChild(swatch(cls));
    clsNode.appendChild(document.createTextNode(friendly(cls) + " "));
    const code = document.createElement("span");
    code.className = "code";
    code.textContent = cls;
    clsNode.appendChild(code);
  } else {
    clsNode.textContent = !defective ? "none (clean tile)"
      : hasClassHead ? "not determined" : "not available (this model has no class head)";
  }

  const list = $("class-scores");
  list.textContent = "";
  const entries = Object.entries(scores).filter(([, p]) => typeof p === "number").sort((a, b) => b[1] - a[1]);
  for (const [name, p] of entries) {
    const li = document.createElement("li");
    if (name === cls) li.className = "top";
    const label = document.createElement("span");
    label.className = "label";
    label.appendChild(swatch(name));
    label.appendChild(document.createTextNode(friendly(name)));
    const bar = document.createElement("span");
    bar.className = "prob";
    const fill = document.createElement("span");
    fill.style.width = (Math.max(0, Math.min(1, p)) * 100).toFixed(1) + "%";
    fill.style.backgroundColor = colourOf(name);
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.className = "num";
    value.textContent = fmt(p, 3);
    li.append(label, bar, value);
    list.appendChild(li);
  }
  if (!entries.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "–";
    list.appendChild(li);
  }

  const area = typeof result.defect_area_fraction === "number" ? result.defect_area_fraction : null;
  $("area").textContent = area === null ? "–" : (area * 100).toFixed(3) + " % of the tile";
  $("model").textContent = result.model || "–";
  $("latency").textContent = "model " + fmt(result.inference_ms, 1) + " ms · round trip " + fmt(roundTripMs, 0) + " ms";

  const regions = Array.isArray(result.regions) ? result.regions : [];
  const body = $("regions").querySelector("tbody");
  body.textContent = "";
  regions.forEach((region, i) => {
    const row = document.createElement("tr");
    const bbox = Array.isArray(region.bbox) ? region.bbox : [];
    cell(row, String(i + 1), "num");
    const c = cell(row, "");
    const name = typeof region.class === "string" && region.class ? region.class : null;
    if (name) {
      c.appendChild(swatch(name));
      c.appendChild(document.createTextNode(friendly(name)));
    } else {
      c.textContent = "–";
    }
    cell(row, fmt(region.class_score, 3), "num");
    cell(row, fmt(region.score, 3), "num");
    for (let k = 0; k < 4; k++) cell(row, bbox[k] === undefined ? "–" : String(bbox[k]), "num");
    cell(row, region.area === undefined ? "–" : String(region.area), "num");
    body.appendChild(row);
  });
  if (!regions.length) {
    const row = document.createElement("tr");
    row.className = "muted";
    const td = cell(row, defective ? "no regions reported" : "no defects found");
    td.colSpan = 9;
    body.appendChild(row);
  }
  $("region-count").textContent = "(" + regions.length + ")";
  $("region-count").dataset.value = String(regions.length);
  $("result").hidden = false;
}

const MAX_VIEWS = 6; // photographs of one tile per request (the service's /detect_tile limit)

async function postTile(files) {
  const form = new FormData();
  files.forEach((file, i) => form.append("image", file, file.name || "view" + (i + 1)));
  return fetch("/detect_tile", { method: "POST", body: form, headers: authHeaders(), cache: "no-store" });
}

// A view's photograph with its defect mask tinted red, drawn on a canvas at the photograph's size.
function drawView(canvas, file, maskBase64) {
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    URL.revokeObjectURL(url);
    if (!maskBase64) { canvas.dataset.drawn = "yes"; return; }
    const mask = new Image();
    mask.onload = () => {
      const off = document.createElement("canvas");
      off.width = canvas.width;
      off.height = canvas.height;
      const octx = off.getContext("2d");
      octx.drawImage(mask, 0, 0, canvas.width, canvas.height);
      const m = octx.getImageData(0, 0, off.width, off.height).data;
      const picture = ctx.getImageData(0, 0, canvas.width, canvas.height);
      const p = picture.data;
      let tinted = 0;
      for (let k = 0; k < p.length; k += 4) {
        if (m[k] > 127) {
          p[k] = Math.round(0.45 * p[k] + 0.55 * 230);
          p[k + 1] = Math.round(0.45 * p[k + 1] + 0.55 * 40);
          p[k + 2] = Math.round(0.45 * p[k + 2] + 0.55 * 40);
          tinted += 1;
        }
      }
      ctx.putImageData(picture, 0, 0);
      canvas.dataset.tinted = String(tinted);
      canvas.dataset.drawn = "yes";
    };
    mask.onerror = () => { canvas.dataset.drawn = "yes"; };
    mask.src = "data:image/png;base64," + maskBase64;
  };
  img.onerror = () => { URL.revokeObjectURL(url); canvas.dataset.drawn = "unsupported"; };
  img.src = url;
}

function renderTile(result, files, roundTripMs) {
  const views = Array.isArray(result.views) ? result.views : [];
  // the decision and its score are the tile's; the class probabilities those of its loudest view
  const loudest = views.reduce((best, v) => (best === null || v.score > best.score ? v : best), null) || {};
  const regions = [];
  views.forEach((v) => (Array.isArray(v.regions) ? v.regions : []).forEach((r) => regions.push(r)));
  render({
    defective: result.defective,
    score: result.score,
    decision_threshold: result.tile_threshold,
    defect_class: result.defect_class,
    class_scores: loudest.class_scores || {},
    defect_area_fraction: null,
    model: result.model,
    inference_ms: result.inference_ms,
    regions: regions,
  }, roundTripMs);
  const decision = $("decision");
  decision.textContent = (result.defective ? "TILE DEFECTIVE · reject" : "TILE CLEAN · pass")
    + " · " + views.length + " views, " + result.fusion + " score";
  decision.dataset.views = String(views.length);
  $("area").textContent = "see each view";
  const strip = $("views");
  strip.textContent = "";
  views.forEach((v, i) => {
    const card = document.createElement("figure");
    card.className = "view-card " + (v.defective ? "is-defective" : "is-clean");
    card.dataset.score = String(v.score);
    card.dataset.defective = v.defective ? "true" : "false";
    const canvas = document.createElement("canvas");
    canvas.setAttribute("aria-label", "view " + (i + 1) + " with its defects tinted");
    card.appendChild(canvas);
    const caption = document.createElement("figcaption");
    const verdict = document.createElement("span");
    verdict.className = "verdict";
    verdict.textContent = v.defective ? "defective" : "clean";
    caption.append(verdict, document.createTextNode(" · score " + fmt(v.score, 3) + " · "
      + (v.filename || "view " + (i + 1))));
    card.appendChild(caption);
    strip.appendChild(card);
    drawView(canvas, files[v.index] || files[i], v.mask_png);
  });
}

async function analyseTile(files) {
  busy = true;
  setState("busy");
  clearError();
  $("file-name").textContent = files.length + " photographs of one tile: " + files.map((f) => f.name).join(", ");
  $("status").textContent = "asking the service for one tile decision…";
  $("result").hidden = true;
  $("pictures").hidden = true;
  $("views").textContent = "";
  $("views-section").hidden = false;
  try {
    const start = performance.now();
    const answer = await postTile(files);
    const roundTrip = performance.now() - start;
    if (!answer.ok) {
      const e = await readError(answer);
      showError(e.title, e.detail);
      if (answer.status === 401) $("api-key").focus();
      $("status").textContent = "";
      setState("error");
      return;
    }
    renderTile(await answer.json(), files, roundTrip);
    $("status").textContent = "";
    setState("done");
  } catch (err) {
    showError("Cannot reach the service.", String(err && err.message ? err.message : err));
    $("status").textContent = "";
    setState("error");
  } finally {
    busy = false;
    checkService();
  }
}

// One file: /detect and /overlay; 2 to 6: one tile decision from /detect_tile.
function analyseFiles(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length || busy) return Promise.resolve();
  if (files.length > MAX_VIEWS) {
    clearError();
    showError("Too many files: drop at most " + MAX_VIEWS + " photographs of one tile.",
      files.length + " files were dropped.");
    setState("error");
    return Promise.resolve();
  }
  return files.length === 1 ? analyse(files[0]) : analyseTile(files);
}

async function analyse(file) {
  if (!file || busy) return;
  $("pictures").hidden = false;
  $("views-section").hidden = true;
  busy = true;
  setState("busy");
  clearError();
  $("file-name").textContent = file.name + " · " + (file.size / 1024).toFixed(1) + " KiB";
  $("status").textContent = "asking the service…";
  $("result").hidden = true;
  setImage("original", file);
  setImage("overlay", null);
  try {
    const start = performance.now();
    const detect = await post("/detect", file);
    const roundTrip = performance.now() - start;
    if (!detect.ok) {
      const e = await readError(detect);
      showError(e.title, e.detail);
      if (detect.status === 401) $("api-key").focus();
      $("status").textContent = "";
      setState("error");
      return;
    }
    render(await detect.json(), roundTrip);
    $("status").textContent = "drawing the overlay…";
    const overlay = await post("/overlay", file);
    if (overlay.ok) {
      setImage("overlay", await overlay.blob());
      $("status").textContent = "";
    } else {
      const e = await readError(overlay);
      $("status").textContent = "Overlay unavailable: " + e.title + (e.detail ? " " + e.detail : "");
    }
    setState("done");
  } catch (err) {
    showError("Cannot reach the service.", String(err && err.message ? err.message : err));
    $("status").textContent = "";
    setState("error");
  } finally {
    busy = false;
    checkService();
  }
}

async function checkService() {
  const pill = $("service-state");
  try {
    const r = await fetch("/readyz", { cache: "no-store" });
    pill.dataset.ready = r.ok ? "yes" : "no";
    pill.textContent = r.ok ? "service ready" : "service not ready";
  } catch (_) {
    pill.dataset.ready = "no";
    pill.textContent = "service unreachable";
  }
}

function init() {
  const input = $("file-input");
  const drop = $("drop");
  const key = $("api-key");
  try {
    key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  } catch (_) { /* storage disabled */ }
  key.addEventListener("change", () => {
    try { sessionStorage.setItem(KEY_STORAGE, key.value.trim()); } catch (_) { /* storage disabled */ }
  });

  input.addEventListener("change", () => {
    analyseFiles(input.files).finally(() => { input.value = ""; });
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "dragend"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    analyseFiles(event.dataTransfer && event.dataTransfer.files);
  });
  // A file dropped beside the drop zone must not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  checkService();
}

document.addEventListener("DOMContentLoaded", init);
