// facefuse web page: plain ES module, no build step, no network beyond this server.
// Talks to the v1 API only (see README "Web page"); every request goes through `api`.

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "facefuse.apiKey";
const POLL_MS = 500;
const VIDEO_EXT = /\.(mp4|mov|mkv|webm|avi|m4v)$/i;

// Choices the spec fixes; the server may offer more through a capabilities endpoint.
const FIXED = {
  imageFormats: [
    ["", "Same as target"],
    ["png", "PNG (lossless)"],
    ["jpg", "JPEG"],
    ["webp", "WebP"],
  ],
  videoFormats: [["mp4", "MP4"]],
  encoders: [
    ["", "H.264 (default)"],
    ["h265", "H.265 / HEVC"],
    ["vp9", "VP9"],
    ["av1", "AV1"],
  ],
  // Speed presets differ per encoder (x264/x265 names, libvpx deadlines, SVT-AV1 levels).
  presets: {
    h264: ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"],
    h265: ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"],
    vp9: ["realtime", "good", "best"],
    av1: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13"],
  },
};
// Looked up in the server's OpenAPI schema first, so a server without one is not asked.
const CAPABILITY_PATHS = ["/v1/capabilities", "/v1/options"];

// ---------------------------------------------------------------------------------------------
// API client
// ---------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, requestId = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

async function errorFrom(res) {
  let code = `http_${res.status}`;
  let message = res.statusText || `The server answered ${res.status}`;
  let requestId = res.headers.get("x-request-id");
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code ?? code;
      message = body.error.message ?? message;
      requestId = body.request_id ?? requestId;
    } else if (body && body.detail) {
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch {
    // Not JSON (a proxy's HTML page, say): the status line is all we have.
  }
  if (res.status === 429) {
    const wait = res.headers.get("retry-after");
    if (wait) message += ` Try again in ${wait} s.`;
  }
  return new ApiError(res.status, code, message, requestId);
}

const api = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",

  async fetch(path, { method = "GET", body } = {}) {
    const headers = {};
    const sent = this.key;
    if (sent) headers["X-API-Key"] = sent;
    let res;
    try {
      res = await fetch(path, { method, body, headers });
    } catch {
      throw new ApiError(0, "network", "Cannot reach the facefuse server. Is it still running?");
    }
    if (res.ok) return res;
    const err = await errorFrom(res);
    // Refused with a key the user has since replaced (a slow answer to a request sent before the
    // new key was typed): ask again with the new key rather than asking the user again. Checked
    // after the body is read, since the key may change while it arrives; from here to the caller's
    // handler only microtasks run, so no typed key can slip in between.
    if (err.status === 401 && this.key && this.key !== sent) return this.fetch(path, { method, body });
    throw err;
  },

  async json(path, options) {
    return (await this.fetch(path, options)).json();
  },
};

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

const state = {
  sources: [], // {id, file, url, faces: null | number | "error"}
  target: null, // {file, url, kind: "image" | "video"}
  faces: null, // POST /v1/faces answer for the target image, or for a paused frame of a target video
  frame: null, // {canvas, url}: the video frame the faces were found in
  facesPending: false,
  targetError: null, // why the server could not read the target image
  selection: { mode: "default" }, // default | all | face (with index)
  caps: {},
  job: null,
  pollTimer: null,
  resultUrl: null,
  retry: null, // what to run again once an API key is given
};
let nextSourceId = 1;

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

function showError(err, retry = null) {
  if (err instanceof ApiError && err.status === 401) {
    askForKey(err.message, retry);
    return;
  }
  $("error-message").textContent = err.message || String(err);
  const detail = [];
  if (err.code && err.code !== "network") detail.push(`code: ${err.code}`);
  if (err.status) detail.push(`HTTP ${err.status}`);
  if (err.requestId) detail.push(`request ${err.requestId}`);
  $("error-detail").textContent = detail.join(" · ");
  $("error").hidden = false;
  $("error").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function clearError() {
  $("error").hidden = true;
}

function askForKey(message, retry) {
  state.retry = retry;
  $("apikey").hidden = false;
  $("apikey-reason").textContent = `${message || "This server needs an API key."} The key is kept only in this browser tab (sessionStorage).`;
  $("apikey-input").focus();
}

// ---------------------------------------------------------------------------------------------
// Tabs (one today; more modes add a tab and a panel)
// ---------------------------------------------------------------------------------------------

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab, focus) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab, false));
    tab.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (step) select(tabs[(i + step + tabs.length) % tabs.length], true);
      if (e.key === "Home") select(tabs[0], true);
      if (e.key === "End") select(tabs[tabs.length - 1], true);
    });
  });
  const wanted = tabs.find((t) => `#${t.id.replace(/^tab-/, "")}` === location.hash);
  select(wanted || tabs[0], false);
}

// ---------------------------------------------------------------------------------------------
// Server status, API key, capabilities
// ---------------------------------------------------------------------------------------------

async function checkServer() {
  const status = $("server-status");
  try {
    const health = await api.json("/v1/health");
    status.className = health.status === "ok" ? "server ok" : "server";
    const backend = health.backend === "celery" ? "worker queue" : "on this machine";
    status.querySelector(".text").textContent =
      health.status === "ok" ? `Connected · ${backend}` : "Server starting…";
    if (health.status !== "ok") setTimeout(checkServer, 2000);
    $("version").textContent = `facefuse ${health.version ?? ""}`;
    if ((health.auth_required || health.auth === "required") && !api.key) askForKey("", null);
  } catch (err) {
    status.className = "server bad";
    status.querySelector(".text").textContent = err.status === 401 ? "API key needed" : "Server unreachable";
    if (err.status === 401) askForKey(err.message, checkServer);
  }
  await loadCapabilities();
}

async function loadCapabilities() {
  let paths = CAPABILITY_PATHS;
  try {
    const schema = await api.json("/openapi.json");
    paths = CAPABILITY_PATHS.filter((p) => schema.paths && p in schema.paths);
  } catch {
    // No schema published: probe the usual places.
  }
  for (const path of paths) {
    try {
      state.caps = await api.json(path);
      break;
    } catch (err) {
      // No such endpoint on this server: the fixed choices stand.
      if (err.status === 401) {
        askForKey(err.message, loadCapabilities);
        break;
      }
    }
  }
  fillOptions();
}

// A capabilities answer may list choices as strings or as objects; it may nest them under
// "options" or "models". Accept all of these so the page follows the server without a rebuild.
function offered(...names) {
  const caps = state.caps || {};
  for (const name of names) {
    for (const where of [caps, caps.options, caps.models, caps.choices]) {
      let v = where && where[name];
      if (v && !Array.isArray(v) && typeof v === "object") v = v.choices ?? v.values ?? v.names ?? v.available;
      if (Array.isArray(v)) {
        return v
          .map((x) => (typeof x === "string" ? [x, x] : [x.name ?? x.value ?? x.id, x.label ?? x.description ?? x.name ?? x.value]))
          .filter(([value]) => value != null && value !== "");
      }
    }
  }
  return null;
}

function defaultOf(...names) {
  const caps = state.caps || {};
  for (const name of names) {
    const v = (caps.defaults && caps.defaults[name]) ?? (caps[name] && caps[name].default);
    if (v != null) return String(v);
  }
  return null;
}

function fillSelect(select, choices, { defaultLabel = null, defaultValue = null } = {}) {
  const previous = select.value;
  select.replaceChildren();
  const seen = new Set();
  if (defaultLabel !== null) {
    select.append(new Option(defaultLabel, ""));
    seen.add("");
  }
  for (const [value, label] of choices) {
    if (seen.has(String(value))) continue;
    seen.add(String(value));
    const text = String(value) === defaultValue ? `${label} (default)` : label;
    select.append(new Option(text, value));
  }
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  select.disabled = select.options.length < 2;
}

// A model choice: the server's default first (sent as nothing), then the others it offers.
function fillModelSelect(select, choices, serverDefault, builtinLabel) {
  const names = choices || [];
  const def = names.find(([v]) => v === serverDefault) || (names.length === 1 ? names[0] : null);
  const label = def ? `${def[1] === "mesh" ? builtinLabel : def[1]} (default)` : names.length ? "Server default" : builtinLabel;
  fillSelect(select, names.filter((c) => c !== def), { defaultLabel: label });
}

function fillOptions() {
  const video = state.target?.kind === "video";
  fillModelSelect($("opt-swapper"), offered("swappers", "swapper"), defaultOf("swapper"), "Built-in mesh swapper");
  const enhancers = (offered("enhancers", "enhancer") || []).filter(([v]) => v !== "none");
  fillSelect($("opt-enhancer"), enhancers, { defaultLabel: "None" });
  fillModelSelect($("opt-mask"), offered("masks", "mask"), defaultOf("mask"), "Built-in face region");
  const formats = video
    ? FIXED.videoFormats
    : (offered("output_formats", "output_format") || FIXED.imageFormats.slice(1)).filter(([v]) => v !== "mp4");
  fillSelect($("opt-format"), formats, video ? {} : { defaultLabel: "Same as target" });
  // H.264 is the default entry (sent as nothing); the server's list names it too.
  const encoders = (offered("encoders", "encoder") || FIXED.encoders.slice(1)).filter(([v]) => v !== "h264");
  fillSelect($("opt-encoder"), encoders, { defaultLabel: "H.264 (default)" });
  fillPresets();
  syncOptionFields();
}

function fillPresets() {
  const encoder = $("opt-encoder").value || "h264";
  const caps = state.caps?.presets;
  const names = (caps && !Array.isArray(caps) && caps[encoder]) || FIXED.presets[encoder] || [];
  fillSelect($("opt-preset"), names.map((p) => [p, p]), { defaultLabel: "Encoder default" });
}

// Options the user has not touched are left out, so the server's defaults apply.
const touched = new Set();

function syncOptionFields() {
  const video = state.target?.kind === "video";
  for (const el of document.querySelectorAll(".video-only")) el.hidden = !video;
  $("opt-enhancer-blend").closest(".field").hidden = !$("opt-enhancer").value;
  const format = $("opt-format").value;
  const lossy = format === "jpg" || format === "webp" || (!format && /\.(jpe?g|webp)$/i.test(state.target?.file.name ?? ""));
  $("opt-quality").closest(".field").hidden = video || !lossy;
  $("opt-enhancer-blend-out").textContent = `${$("opt-enhancer-blend").value}%`;
  $("opt-quality-out").textContent = $("opt-quality").value;
  $("opt-crf-out").textContent = $("opt-crf").value;
  const changed = [...touched].filter((k) => !fieldFor(k)?.hidden);
  $("options-summary").textContent = changed.length ? `${changed.length} changed` : "defaults";
}

function fieldFor(name) {
  return document.querySelector(`.field[data-opt="${name}"]`);
}

function setupOptions() {
  const bind = (id, name) =>
    $(id).addEventListener("input", () => {
      touched.add(name);
      syncOptionFields();
    });
  bind("opt-swapper", "swapper");
  bind("opt-enhancer", "enhancer");
  bind("opt-enhancer-blend", "enhancer_blend");
  bind("opt-mask", "mask");
  bind("opt-format", "output_format");
  bind("opt-quality", "jpeg_quality");
  bind("opt-encoder", "encoder");
  $("opt-encoder").addEventListener("input", fillPresets);
  bind("opt-crf", "crf");
  bind("opt-preset", "preset");
}

function jobOptions() {
  const options = {};
  const use = (name, value) => {
    if (touched.has(name) && !fieldFor(name).hidden && value !== "") options[name] = value;
  };
  use("swapper", $("opt-swapper").value);
  use("enhancer", $("opt-enhancer").value);
  if (options.enhancer) use("enhancer_blend", Number($("opt-enhancer-blend").value) / 100);
  use("mask", $("opt-mask").value);
  use("output_format", $("opt-format").value);
  use("jpeg_quality", Number($("opt-quality").value));
  use("encoder", $("opt-encoder").value);
  use("crf", Number($("opt-crf").value));
  use("preset", $("opt-preset").value);
  const sel = state.selection;
  if (sel.mode === "all") options.mode = "many";
  if (sel.mode === "face") {
    options.mode = "reference";
    // A target image's faces are numbered by the server; a video's chosen face goes as a photo.
    if (!sel.reference) options.reference_face_index = sel.index;
  }
  return options;
}

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

function addSources(files) {
  for (const file of files) {
    if (file.type && !file.type.startsWith("image/")) {
      showError(new Error(`${file.name}: a source must be a photo (got ${file.type}).`));
      continue;
    }
    const item = { id: nextSourceId++, file, url: URL.createObjectURL(file), faces: null };
    state.sources.push(item);
    checkSourceFaces(item);
  }
  renderSources();
  updateStart();
}

async function checkSourceFaces(item) {
  const body = new FormData();
  body.append("image", item.file);
  try {
    const answer = await api.json("/v1/faces", { method: "POST", body });
    item.faces = answer.faces.length;
  } catch (err) {
    item.faces = "error";
    item.error = err.message;
    // Once a key is given, every source that failed is checked again (see the key form).
    if (err.status === 401) askForKey(err.message, null);
  }
  renderSources();
}

function renderSources() {
  const list = $("source-thumbs");
  list.replaceChildren();
  for (const item of state.sources) {
    const li = document.createElement("li");
    li.className = "thumb";
    const img = document.createElement("img");
    img.src = item.url;
    img.alt = item.file.name;
    const badge = document.createElement("span");
    badge.className = "face-badge";
    if (item.faces === null) {
      badge.textContent = "checking…";
    } else if (item.faces === "error") {
      badge.textContent = "unreadable";
      badge.classList.add("bad");
      badge.title = item.error;
    } else if (item.faces === 0) {
      badge.textContent = "no face";
      badge.classList.add("bad");
    } else {
      badge.textContent = item.faces === 1 ? "1 face" : `${item.faces} faces`;
      badge.classList.add("good");
    }
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove ${item.file.name}`);
    remove.addEventListener("click", () => {
      URL.revokeObjectURL(item.url);
      state.sources = state.sources.filter((s) => s !== item);
      renderSources();
      updateStart();
      $("source-input").focus();
    });
    li.append(img, badge, remove);
    list.append(li);
  }
  $("source-drop").classList.toggle("compact", state.sources.length > 0);
}

// ---------------------------------------------------------------------------------------------
// Target and its faces
// ---------------------------------------------------------------------------------------------

function isVideo(file) {
  return file.type.startsWith("video/") || (!file.type && VIDEO_EXT.test(file.name)) || VIDEO_EXT.test(file.name);
}

function setTarget(file) {
  clearTarget();
  clearError();
  const kind = isVideo(file) ? "video" : "image";
  state.target = { file, url: URL.createObjectURL(file), kind };
  $("target-name").textContent = `${file.name} · ${formatBytes(file.size)}`;
  $("target-view").hidden = false;
  $("target-drop").classList.add("compact");
  const img = $("target-img");
  const vid = $("target-video");
  img.hidden = kind !== "image";
  vid.hidden = kind !== "video";
  if (kind === "image") {
    img.onerror = () => (img.hidden = true); // the server's answer explains what is wrong
    img.src = state.target.url;
    findFaces();
  } else {
    vid.src = state.target.url;
    state.faces = null;
    renderFaces();
  }
  showFrame(false);
  fillOptions();
  updateStart();
}

function clearTarget() {
  if (state.target) URL.revokeObjectURL(state.target.url);
  state.target = null;
  state.faces = null;
  state.targetError = null;
  state.selection = { mode: "default" };
  dropFrame();
  $("target-img").removeAttribute("src");
  $("target-video").removeAttribute("src");
  $("target-view").hidden = true;
  $("target-drop").classList.remove("compact");
  $("face-boxes").replaceChildren();
  $("faces-card").hidden = true;
  updateStart();
}

async function findFaces(image = null, name = null) {
  const target = state.target;
  state.facesPending = true;
  $("faces-card").hidden = false;
  $("faces-status").textContent = "Looking for faces…";
  $("face-chips").replaceChildren();
  $("target-stage").classList.add("scanning");
  updateStart();
  const body = new FormData();
  body.append("image", image || target.file, name || target.file.name);
  try {
    const answer = await api.json("/v1/faces", { method: "POST", body });
    if (state.target !== target) return;
    state.faces = answer;
  } catch (err) {
    if (state.target !== target) return;
    state.faces = null;
    if (target.kind === "image" && err.status !== 401) state.targetError = err.message;
    showError(err, () => findFaces(image, name));
  } finally {
    if (state.target === target) {
      state.facesPending = false;
      $("target-stage").classList.remove("scanning");
      renderFaces();
      updateStart();
    }
  }
}

function faceLabel(i) {
  return i === 0 ? "Face 1 (largest)" : `Face ${i + 1}`;
}

function renderFaces() {
  const boxes = $("face-boxes");
  const chips = $("face-chips");
  boxes.replaceChildren();
  chips.replaceChildren();
  const target = state.target;
  const sel = state.selection;
  $("faces-card").hidden = !target || (target.kind === "image" && !state.faces && !state.facesPending);
  if (!target) return;
  const status = $("faces-status");

  const chip = (label, selection, checked) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "chip";
    b.setAttribute("role", "radio");
    b.setAttribute("aria-checked", String(checked));
    b.textContent = label;
    b.addEventListener("click", () => choose(selection));
    chips.append(b);
    return b;
  };

  const video = target.kind === "video";
  const faces = state.faces?.faces;
  if (video && !(state.frame && faces)) {
    status.textContent =
      "Video: the largest face in every frame, or all faces. To replace one person only, pause where they appear and pick their face in that frame.";
    chip("Largest face", { mode: "default" }, sel.mode === "default");
    chip("All faces", { mode: "all" }, sel.mode === "all");
    return;
  }
  if (!faces) return;
  if (faces.length === 0) {
    status.textContent = video
      ? "No face found in this frame. Try another frame."
      : "No face found in the target. Try a larger or sharper photo.";
    if (video) {
      chip("Largest face", { mode: "default" }, sel.mode === "default");
      chip("All faces", { mode: "all" }, sel.mode === "all");
    }
    return;
  }
  status.textContent = video
    ? "Click a face to replace only that person throughout the video."
    : faces.length === 1
      ? "One face found."
      : `${faces.length} faces found. Click a face to replace only that person, or pick all of them.`;
  chip("Largest face", { mode: "default" }, sel.mode === "default");
  if (faces.length > 1 || video) chip(video ? "All faces" : `All ${faces.length} faces`, { mode: "all" }, sel.mode === "all");
  const { width, height } = state.faces;
  faces.forEach((face, i) => {
    const [x0, y0, x1, y1] = face.box;
    const b = document.createElement("button");
    b.type = "button";
    b.className = "face";
    b.style.left = `${(100 * x0) / width}%`;
    b.style.top = `${(100 * y0) / height}%`;
    b.style.width = `${(100 * (x1 - x0)) / width}%`;
    b.style.height = `${(100 * (y1 - y0)) / height}%`;
    b.dataset.index = String(face.index ?? i);
    const chosen =
      (sel.mode === "face" && sel.index === (face.index ?? i)) || sel.mode === "all" || (sel.mode === "default" && i === 0);
    b.classList.toggle("chosen", chosen);
    b.classList.toggle("implicit", chosen && sel.mode !== "face");
    b.setAttribute("aria-pressed", String(sel.mode === "face" && sel.index === (face.index ?? i)));
    b.setAttribute("aria-label", `${faceLabel(i)}: replace only this person`);
    const tag = document.createElement("span");
    tag.className = "face-tag";
    tag.textContent = String(i + 1);
    b.append(tag);
    b.addEventListener("click", () => choose({ mode: "face", index: face.index ?? i }));
    boxes.append(b);
    if (faces.length > 1 || video) chip(`Only face ${i + 1}`, { mode: "face", index: face.index ?? i }, b.getAttribute("aria-pressed") === "true");
  });
}

function choose(selection) {
  state.selection = selection;
  if (selection.mode === "face" && state.target?.kind === "video" && state.frame) {
    cutReference(selection);
  }
  renderFaces();
  updateStart();
  const focusable = document.querySelector(
    selection.mode === "face" ? `.face[data-index="${selection.index}"]` : '.chip[aria-checked="true"]',
  );
  focusable?.focus();
}

// A video's faces are found in the frame the user paused on: the page grabs that frame (the
// browser has already decoded it), asks /v1/faces about it, and later sends the chosen face as the
// job's reference photo.
async function pickFrame() {
  const video = $("target-video");
  if (!video.videoWidth) {
    showError(new Error("This browser cannot show this video's frames; choose the largest face or all faces."));
    return;
  }
  video.pause();
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  dropFrame();
  state.frame = { canvas, url: URL.createObjectURL(blob), time: video.currentTime };
  $("frame-img").src = state.frame.url;
  state.selection = { mode: "default" };
  showFrame(true);
  await findFaces(blob, "frame.png");
}

function dropFrame() {
  if (state.frame) URL.revokeObjectURL(state.frame.url);
  state.frame = null;
  $("frame-img").removeAttribute("src");
}

function showFrame(on) {
  const video = state.target?.kind === "video";
  $("frame-img").hidden = !(video && on);
  $("target-video").hidden = !video || on;
  $("pick-frame").hidden = !video || on;
  $("back-to-video").hidden = !(video && on);
  if (video && !on) {
    $("face-boxes").replaceChildren();
    state.faces = null;
    if (state.selection.mode === "face") state.selection = { mode: "default" };
    dropFrame();
    renderFaces();
    updateStart();
  }
}

function cutReference(selection) {
  const face = state.faces.faces.find((f, i) => (f.index ?? i) === selection.index);
  const { canvas } = state.frame;
  const [x0, y0, x1, y1] = face.box;
  // Generous margins: the detector wants some head and background around the face.
  const m = 0.6 * Math.max(x1 - x0, y1 - y0);
  const left = Math.max(0, Math.floor(x0 - m));
  const top = Math.max(0, Math.floor(y0 - m));
  const right = Math.min(canvas.width, Math.ceil(x1 + m));
  const bottom = Math.min(canvas.height, Math.ceil(y1 + m));
  const scale = Math.max(1, 400 / Math.max(right - left, bottom - top));
  const crop = document.createElement("canvas");
  crop.width = Math.round((right - left) * scale);
  crop.height = Math.round((bottom - top) * scale);
  crop.getContext("2d").drawImage(canvas, left, top, right - left, bottom - top, 0, 0, crop.width, crop.height);
  crop.toBlob((blob) => {
    if (state.selection === selection) {
      selection.reference = blob;
      updateStart();
    }
  }, "image/png");
}

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

function updateStart() {
  const running = state.job && ["queued", "running"].includes(state.job.status);
  const noFaces = state.target?.kind === "image" && state.faces && state.faces.faces.length === 0;
  // A face picked in a video frame travels as a reference photo, cut out once chosen.
  const cutting = state.selection.mode === "face" && state.target?.kind === "video" && !state.selection.reference;
  const bad = Boolean(state.targetError);
  const ready =
    state.sources.length > 0 && state.target && !state.facesPending && !running && !noFaces && !cutting && !bad;
  $("start").disabled = !ready;
  $("cancel").hidden = !running;
  let hint = "";
  if (running) hint = "Working…";
  else if (!state.sources.length && !state.target) hint = "Add a source photo and a target to start.";
  else if (!state.sources.length) hint = "Add a source photo.";
  else if (!state.target) hint = "Add a target photo or video.";
  else if (state.facesPending) hint = "Looking for faces…";
  else if (noFaces) hint = "The target has no face to replace.";
  else if (bad) hint = "Choose another target.";
  $("start-hint").textContent = hint;
}

async function startJob() {
  clearError();
  const body = new FormData();
  for (const s of state.sources) body.append("source", s.file);
  body.append("target", state.target.file);
  if (state.selection.mode === "face" && state.selection.reference) {
    body.append("reference", state.selection.reference, "reference.png");
  }
  const options = jobOptions();
  if (Object.keys(options).length) body.append("options", JSON.stringify(options));
  resetResult();
  $("start").disabled = true;
  try {
    state.job = await api.json("/v1/jobs", { method: "POST", body });
  } catch (err) {
    updateStart();
    showError(err, startJob);
    return;
  }
  state.job.before = state.target;
  showProgress(state.job);
  updateStart();
  poll();
}

async function poll() {
  const job = state.job;
  if (!job) return;
  try {
    const fresh = await api.json(`/v1/jobs/${encodeURIComponent(job.id)}`);
    if (state.job !== job) return;
    Object.assign(job, fresh);
  } catch (err) {
    if (state.job !== job) return;
    if (err.status === 401) {
      showError(err, poll);
      return;
    }
    if (err.status === 0) {
      // A blip (server restarting): keep trying, a little slower.
      $("progress-detail").textContent = err.message;
      state.pollTimer = setTimeout(poll, POLL_MS * 4);
      return;
    }
    finishJob(job, err);
    return;
  }
  showProgress(job);
  if (job.status === "queued" || job.status === "running") {
    state.pollTimer = setTimeout(poll, POLL_MS);
  } else {
    finishJob(job, null);
  }
}

// The runner's stage names, in words; an unknown stage is shown as it comes.
const STAGES = {
  queued: "Waiting for a worker",
  decode: "Reading the photo",
  probe: "Reading the video",
  analyse: "Finding faces",
  swap: "Swapping faces",
  write: "Writing and signing the result",
  encode: "Encoding",
  mux: "Putting the video together",
  sign: "Signing the result",
  done: "Done",
};

function titleCase(text) {
  const t = String(text || "").replace(/[_-]+/g, " ").trim();
  return t ? t[0].toUpperCase() + t.slice(1) : "";
}

function showProgress(job) {
  $("progress-card").hidden = false;
  const p = job.progress || {};
  const bar = $("progress");
  let stage = job.status === "queued" ? STAGES.queued : STAGES[p.stage] || titleCase(p.stage) || "Working";
  if (job.status === "done") stage = "Done";
  if (job.status === "failed") stage = "Failed";
  if (job.status === "cancelled") stage = "Cancelled";
  if (job.status === "expired") stage = "Expired";
  $("progress-stage").textContent = stage;
  const parts = [];
  if (job.kind === "video" && p.frames_total > 0) parts.push(`${p.frames_done ?? 0} / ${p.frames_total} frames`);
  if (p.frames_total > 1 && typeof p.fraction === "number") parts.push(`${Math.round(100 * p.fraction)}%`);
  if (job.status === "running" && typeof p.eta_s === "number") {
    parts.push(p.eta_s < 1 ? "almost done" : `about ${formatDuration(p.eta_s)} left`);
  }
  if (job.status === "done" && job.started_at && job.finished_at) {
    parts.push(`took ${formatDuration((Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000)}`);
  }
  $("progress-detail").textContent = parts.join(" · ");
  if (job.status === "done") bar.value = 1;
  else if (job.status === "running" && p.frames_total > 1 && typeof p.fraction === "number") bar.value = p.fraction;
  else if (job.status === "running" || job.status === "queued") bar.removeAttribute("value");
  $("progress-card").dataset.status = job.status;
}

async function finishJob(job, err) {
  clearTimeout(state.pollTimer);
  updateStart();
  if (err) {
    showError(err);
    return;
  }
  if (job.status === "failed") {
    const e = job.error || {};
    showError(new ApiError(null, e.code, e.message || "The job failed."));
    return;
  }
  if (job.status === "cancelled") return;
  if (job.status === "expired") {
    showError(new ApiError(410, "expired", "The result has expired and was deleted. Run the job again."));
    return;
  }
  await fetchResult(job);
}

async function fetchResult(job) {
  const url = job.result_url || `/v1/jobs/${encodeURIComponent(job.id)}/result`;
  let res;
  let blob;
  try {
    res = await api.fetch(url);
    blob = await res.blob();
  } catch (err) {
    showError(err, () => fetchResult(job));
    return;
  }
  if (state.job !== job) return;
  state.resultUrl = URL.createObjectURL(blob);
  const name = filenameFrom(res.headers.get("content-disposition")) || `facefuse-${job.id}`;
  const link = $("download");
  link.href = state.resultUrl;
  link.download = name;
  link.setAttribute("aria-label", `Download ${name} (${formatBytes(blob.size)})`);
  const video = job.kind === "video" || blob.type.startsWith("video/");
  $("compare").hidden = video;
  $("video-result").hidden = !video;
  if (video) {
    showVideo(true);
  } else {
    $("before-img").src = job.before.url;
    $("after-img").src = state.resultUrl;
    setCompare(50);
    $("compare-range").value = "50";
  }
  $("result-summary").textContent = summaryText(job.summary, name, blob.size);
  $("result-card").hidden = false;
  $("result-card").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function summaryText(summary, name, size) {
  const parts = [];
  if (summary) {
    if (summary.faces_swapped != null) {
      const found = summary.faces_found != null ? ` of ${summary.faces_found}` : "";
      parts.push(`${summary.faces_swapped}${found} face${summary.faces_found === 1 ? "" : "s"} replaced`);
    }
    if (summary.frames_out != null) parts.push(`${summary.frames_out} frames`);
  }
  parts.push(`${name} · ${formatBytes(size)}`);
  return parts.join(" · ");
}

function filenameFrom(disposition) {
  if (!disposition) return null;
  const star = /filename\*\s*=\s*(?:UTF-8'')?([^;]+)/i.exec(disposition);
  if (star) {
    try {
      return decodeURIComponent(star[1].trim().replace(/^"|"$/g, ""));
    } catch {
      // fall through to the plain form
    }
  }
  const plain = /filename\s*=\s*"?([^";]+)"?/i.exec(disposition);
  return plain ? plain[1].trim() : null;
}

function resetResult() {
  clearTimeout(state.pollTimer);
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = null;
  $("result-card").hidden = true;
  $("progress-card").hidden = true;
  $("result-video").removeAttribute("src");
  $("after-img").removeAttribute("src");
}

async function cancelJob() {
  const job = state.job;
  if (!job) return;
  try {
    const answer = await api.json(`/v1/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
    job.status = answer.status || "cancelled";
  } catch (err) {
    showError(err, cancelJob);
    return;
  }
  clearTimeout(state.pollTimer);
  showProgress(job);
  updateStart();
}

// ---------------------------------------------------------------------------------------------
// Result views
// ---------------------------------------------------------------------------------------------

function setCompare(percent) {
  $("compare").style.setProperty("--pos", `${percent}%`);
}

function showVideo(after) {
  const v = $("result-video");
  const t = v.currentTime || 0;
  const playing = !v.paused;
  v.src = after ? state.resultUrl : state.job.before.url;
  v.addEventListener(
    "loadedmetadata",
    () => {
      v.currentTime = Math.min(t, v.duration || t);
      if (playing) v.play();
    },
    { once: true },
  );
  $("show-after").setAttribute("aria-pressed", String(after));
  $("show-before").setAttribute("aria-pressed", String(!after));
  $("show-after").classList.toggle("ghost", !after);
  $("show-before").classList.toggle("ghost", after);
}

// ---------------------------------------------------------------------------------------------
// Drag and drop, wiring
// ---------------------------------------------------------------------------------------------

function setupDrop(zone, onFiles) {
  const over = (e) => {
    if (![...(e.dataTransfer?.types || [])].includes("Files")) return;
    e.preventDefault();
    zone.classList.add("over");
  };
  zone.addEventListener("dragenter", over);
  zone.addEventListener("dragover", over);
  zone.addEventListener("dragleave", (e) => {
    if (!zone.contains(e.relatedTarget)) zone.classList.remove("over");
  });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) onFiles([...e.dataTransfer.files]);
  });
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function formatDuration(s) {
  if (!Number.isFinite(s)) return "";
  if (s < 1) return "under a second";
  if (s < 90) return `${Math.round(s)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

// ---------------------------------------------------------------------------------------------
// Live: camera frames over a WebSocket, swapped frames back (protocol: service/live_ws.py)
// ---------------------------------------------------------------------------------------------

const LIVE_WINDOW = 2; // frames in flight: one being swapped, one waiting; the camera's others are skipped
const LIVE_LOST_MS = 2000; // a frame not answered by then was dropped by the server
const LIVE_MAX_WIDTH = 640;
const LIVE_PING_MS = 30_000;
const LIVE_CLOSE_REASONS = {
  4401: "This server needs an API key.",
  4403: "This page's address is not allowed to use the live stream.",
  4408: "The live session ended after a long pause.",
  4429: "Too many live sessions are open.",
  1013: "The server is still starting; try again in a moment.",
};

const live = {
  ws: null,
  ready: false,
  stream: null,
  running: false, // the camera is on and frames are being sent
  files: [], // {name, data (base64)}: accepted source photos, sent again after a reconnect
  pending: [], // photos sent and not answered yet
  names: [], // the server's list of this session's sources
  index: -1,
  inflight: [], // client times (ms) of frames sent and not answered
  encoding: false,
  shown: 0, // client time of the newest frame drawn
  arrivals: [], // performance.now() of recent frames received
  latencies: [],
  faces: 0,
  timer: null,
  pinger: null,
};

function liveStatus(text) {
  $("live-status").textContent = text;
}

function liveError(message) {
  const el = $("live-error");
  el.textContent = message || "";
  el.hidden = !message;
}

function liveConnect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/v1/live`);
  ws.binaryType = "arraybuffer";
  live.ws = ws;
  live.ready = false;
  live.inflight = [];
  let sent = null;
  ws.addEventListener("open", () => {
    sent = api.key || null;
    ws.send(JSON.stringify({ type: "hello", key: sent }));
  });
  ws.addEventListener("message", (e) => {
    if (live.ws !== ws) return;
    if (typeof e.data === "string") liveMessage(JSON.parse(e.data));
    else liveFrame(e.data);
  });
  ws.addEventListener("close", (e) => {
    if (live.ws !== ws) return;
    live.ws = null;
    live.ready = false;
    live.inflight = [];
    live.pending = [];
    if (e.code === 4401) {
      liveStop();
      // Refused a key the user has since replaced: start again with the new one, as api.fetch does.
      if (api.key && api.key !== sent) liveStart();
      else askForKey(e.reason || LIVE_CLOSE_REASONS[4401], liveStart);
    } else if (e.code !== 1000 && e.code !== 1001) {
      liveError(e.reason || LIVE_CLOSE_REASONS[e.code] || `The live connection closed (code ${e.code}).`);
      liveStop();
    }
  });
}

function liveSend(message) {
  if (live.ws && live.ready) live.ws.send(JSON.stringify(message));
}

function liveMessage(msg) {
  if (msg.type === "ready") {
    live.ready = true;
    // A new connection (after a pause the server timed out, say) starts with no sources.
    const files = live.files;
    live.files = [];
    for (const f of files) liveAddSource(f);
    if (live.index >= 0 && live.index < files.length) liveSend({ type: "use_source", index: live.index });
    liveStatus(live.running ? "Live" : "Connected");
  } else if (msg.type === "sources") {
    const accepted = live.pending.shift();
    if (accepted) live.files.push(accepted);
    live.names = msg.names;
    live.index = msg.index;
    renderLiveSources();
  } else if (msg.type === "error") {
    // Commands are answered in order: an error while a photo waits is that photo's.
    const refused = ["no_source_face", "input_invalid", "unsupported_media", "too_many_pixels"];
    if (live.pending.length && refused.includes(msg.code)) {
      const photo = live.pending.shift();
      liveError(`${photo.name}: ${msg.message}`);
    } else {
      liveError(msg.message);
    }
  }
}

function liveFrame(buffer) {
  const view = new DataView(buffer);
  const t = view.getFloat64(0, true);
  const faces = view.getUint16(8, true);
  const now = performance.now();
  live.inflight = live.inflight.filter((x) => x > t); // answered, or dropped in favour of this one
  live.arrivals.push(now);
  live.latencies.push(now - t);
  if (live.latencies.length > 30) live.latencies.shift();
  live.faces = faces;
  const blob = new Blob([new Uint8Array(buffer, 16)], { type: "image/jpeg" });
  createImageBitmap(blob).then(
    (bitmap) => {
      if (t > live.shown) {
        // Decodes may finish out of order: never draw an older frame over a newer one.
        live.shown = t;
        const canvas = $("live-output");
        if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
          canvas.width = bitmap.width;
          canvas.height = bitmap.height;
        }
        canvas.getContext("2d").drawImage(bitmap, 0, 0);
      }
      bitmap.close();
    },
    () => {},
  );
  liveCapture();
}

function liveCapture() {
  if (!live.running || !live.ws || !live.ready || live.encoding) return;
  const now = performance.now();
  live.inflight = live.inflight.filter((t) => now - t < LIVE_LOST_MS);
  if (live.inflight.length >= LIVE_WINDOW || live.ws.bufferedAmount > 1 << 20) return;
  const video = $("live-video");
  if (video.readyState < 2 || !video.videoWidth) return;
  const scale = Math.min(1, LIVE_MAX_WIDTH / video.videoWidth);
  const canvas = (live.grab ||= document.createElement("canvas"));
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  const t = performance.now();
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  live.encoding = true;
  canvas.toBlob(
    async (blob) => {
      live.encoding = false;
      const ws = live.ws;
      if (!blob || !ws || ws.readyState !== WebSocket.OPEN || !live.running) return;
      const message = new Uint8Array(8 + blob.size);
      new DataView(message.buffer).setFloat64(0, t, true);
      message.set(new Uint8Array(await blob.arrayBuffer()), 8);
      ws.send(message);
      live.inflight.push(t);
    },
    "image/jpeg",
    0.8,
  );
}

function liveShowStats() {
  const now = performance.now();
  live.arrivals = live.arrivals.filter((x) => now - x < 2000);
  const fps = live.arrivals.length / 2;
  const lat = live.latencies.length ? live.latencies.reduce((a, b) => a + b, 0) / live.latencies.length : null;
  $("live-fps").textContent = live.running ? fps.toFixed(1) : "–";
  $("live-latency").textContent = live.running && lat !== null ? `${Math.round(lat)} ms` : "–";
  $("live-faces").textContent = live.running ? String(live.faces) : "–";
}

async function liveStart() {
  liveError("");
  if (!navigator.mediaDevices?.getUserMedia) {
    liveError("This browser gives no camera to this page (it needs https or localhost).");
    return;
  }
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 360 } },
      audio: false,
    });
  } catch (err) {
    liveError(`No camera: ${err.message || err.name}`);
    return;
  }
  const video = $("live-video");
  video.srcObject = live.stream;
  await video.play().catch(() => {});
  live.running = true;
  if (!live.ws) liveConnect();
  else liveSend({ type: "resume" });
  clearInterval(live.timer);
  live.timer = setInterval(() => {
    liveCapture();
    liveShowStats();
  }, 50);
  clearInterval(live.pinger);
  live.pinger = setInterval(() => liveSend({ type: "ping" }), LIVE_PING_MS);
  $("live-start").hidden = true;
  $("live-stop").hidden = false;
  $("live-stop").textContent = "Stop";
  liveStatus(live.ready ? "Live" : "Connecting…");
}

function liveStop() {
  live.running = false;
  clearInterval(live.timer);
  live.timer = null;
  if (live.stream) for (const track of live.stream.getTracks()) track.stop();
  live.stream = null;
  $("live-video").srcObject = null;
  liveSend({ type: "pause" });
  liveShowStats();
  $("live-start").hidden = false;
  $("live-start").textContent = live.ws ? "Resume" : "Start camera";
  $("live-stop").hidden = true;
  liveStatus(live.ws ? "Paused" : "Stopped");
}

function liveAddSource(file) {
  live.pending.push(file);
  liveSend({ type: "add_source", name: file.name, data: file.data });
}

async function liveAddFiles(files) {
  liveError("");
  for (const file of files) {
    const data = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
    const photo = { name: file.name, data };
    if (live.ws && live.ready) liveAddSource(photo);
    else {
      // Not connected yet: kept, and sent when the session starts.
      live.files.push(photo);
      live.names = live.files.map((f) => f.name);
      live.index = live.files.length - 1;
      renderLiveSources();
    }
  }
}

function renderLiveSources() {
  const box = $("live-sources");
  box.replaceChildren();
  live.names.forEach((name, i) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.setAttribute("role", "radio");
    chip.setAttribute("aria-checked", String(i === live.index));
    chip.dataset.index = String(i);
    chip.textContent = name;
    chip.addEventListener("click", () => {
      if (live.ws && live.ready) liveSend({ type: "use_source", index: i });
      else {
        live.index = i;
        renderLiveSources();
      }
    });
    box.append(chip);
  });
}

function setupLive() {
  $("live-start").addEventListener("click", liveStart);
  $("live-stop").addEventListener("click", liveStop);
  $("live-source-input").addEventListener("change", (e) => {
    liveAddFiles([...e.target.files]);
    e.target.value = "";
  });
}

function main() {
  setupTabs();
  setupLive();
  setupOptions();
  fillOptions();

  $("source-input").addEventListener("change", (e) => {
    addSources([...e.target.files]);
    e.target.value = "";
  });
  $("target-input").addEventListener("change", (e) => {
    if (e.target.files[0]) setTarget(e.target.files[0]);
    e.target.value = "";
  });
  setupDrop($("source-card"), addSources);
  setupDrop($("target-card"), (files) => setTarget(files[0]));
  $("pick-frame").addEventListener("click", pickFrame);
  $("back-to-video").addEventListener("click", () => showFrame(false));
  $("target-clear").addEventListener("click", () => {
    clearTarget();
    $("target-input").focus();
  });

  $("start").addEventListener("click", startJob);
  $("cancel").addEventListener("click", cancelJob);
  $("error-close").addEventListener("click", clearError);
  $("compare-range").addEventListener("input", (e) => setCompare(e.target.value));
  $("show-after").addEventListener("click", () => showVideo(true));
  $("show-before").addEventListener("click", () => showVideo(false));

  if (api.key) $("apikey-input").value = api.key;
  $("apikey-form").addEventListener("submit", (e) => {
    e.preventDefault();
    api.key = $("apikey-input").value.trim();
    if (api.key) sessionStorage.setItem(KEY_STORAGE, api.key);
    else sessionStorage.removeItem(KEY_STORAGE);
    $("apikey").hidden = true;
    clearError();
    const retry = state.retry;
    state.retry = null;
    checkServer();
    if (retry) retry();
    for (const s of state.sources) if (s.faces === "error") checkSourceFaces(s);
  });
  $("apikey-forget").addEventListener("click", () => {
    api.key = "";
    sessionStorage.removeItem(KEY_STORAGE);
    $("apikey-input").value = "";
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("error").hidden) clearError();
  });

  checkServer();
}

main();
