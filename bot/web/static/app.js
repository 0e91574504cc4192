// The aidraw web chat: actions over HTTP (JSON), job progress over one WebSocket.
"use strict";

const page = {
  strings: {},
  state: null,
  jobs: new Map(), // job id -> its <article>
  retryMs: 500,
  follow: true, // keep the newest message in view, unless the user scrolled up
  shownTop: 0, // log.scrollTop where we last saw or left it
};

const $ = (selector, root = document) => root.querySelector(selector);
const log = $("#log");
const newer = $("#newer");

function t(key, values = {}) {
  let template = page.strings[key] ?? key;
  for (const [name, value] of Object.entries(values)) {
    template = template.replaceAll(`{${name}}`, String(value));
  }
  return template;
}

function lang() {
  return encodeURIComponent(navigator.language || "en");
}

async function api(path, body) {
  const init = { credentials: "same-origin" };
  if (body !== undefined) {
    init.method = "POST";
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`${path}?lang=${lang()}`, init);
  let data;
  try {
    data = await response.json();
  } catch {
    data = { error: t("failed") };
  }
  if (!response.ok) {
    throw new Error(data.error || t("failed"));
  }
  return data;
}

// --- the chat log ---------------------------------------------------------------------------

// Only the user moves the view up: content that grows (an image's height arriving late) or
// shrinks at the end never does. So moving up stops following; reaching the end resumes it.
function noticeScroll() {
  if (log.scrollHeight - log.scrollTop - log.clientHeight < 80) {
    page.follow = true;
    newer.hidden = true;
  } else if (log.scrollTop < page.shownTop) {
    page.follow = false;
  }
  page.shownTop = log.scrollTop;
}

function keepBottom() {
  noticeScroll(); // a scroll up whose event has not arrived yet still counts
  if (page.follow) {
    log.scrollTop = log.scrollHeight;
    page.shownTop = log.scrollTop;
  }
}

// Something new at the end: shown, or pointed at if the user is reading further up.
function announce() {
  keepBottom();
  if (!page.follow) {
    newer.hidden = false;
  }
}

function jumpToEnd() {
  log.scrollTop = log.scrollHeight;
  page.shownTop = log.scrollTop;
  page.follow = true;
  newer.hidden = true;
}

// Heights that change after a message is shown (images, previews, infotext opened) and the
// log's own (window, phone keyboard, composer) keep the end in view; layout runs first.
const resized = new ResizeObserver(keepBottom);
resized.observe(log);
log.addEventListener("scroll", noticeScroll);
newer.addEventListener("click", jumpToEnd);

function append(element) {
  log.append(element);
  resized.observe(element);
  announce();
  return element;
}

function say(text, kind = "bot", picture = null, mask = null) {
  const message = document.createElement("div");
  message.className = `msg ${kind}`;
  if (picture) {
    const frame = document.createElement("div");
    frame.className = "pictured";
    for (const [className, src] of [["picture", picture], ["mask", mask]]) {
      if (!src) continue;
      const image = document.createElement("img");
      image.className = className;
      image.alt = className === "mask" ? t("web_masked") : "";
      image.src = src;
      frame.append(image);
    }
    message.append(frame);
  }
  message.append(text);
  return append(message);
}

function isUpscale(request) {
  return Boolean(request && request.extras_upscale);
}

function describe(request) {
  if (!request || request.width === undefined) {
    return "";
  }
  if (isUpscale(request)) {
    return t("web_upscaled_with", { scale: request.hr_scale, upscaler: request.hr_upscaler });
  }
  const steps = t("web_n_steps", { steps: request.num_inference_steps });
  const parts = [`${request.width}x${request.height}`, steps];
  parts.push(request.sampler, `CFG ${request.guidance_scale}`);
  if (request.seed !== null) {
    parts.push(`seed ${request.seed}`);
  }
  if (request.batch_size > 1) {
    parts.push(`×${request.batch_size}`);
  }
  parts.push(request.model);
  return parts.join(" · ");
}

function jobBubble(view) {
  let bubble = page.jobs.get(view.id);
  if (bubble) {
    return bubble;
  }
  bubble = $("#job-template").content.firstElementChild.cloneNode(true);
  bubble.dataset.job = view.id;
  translate(bubble);
  $(".reroll", bubble).addEventListener("click", () => reroll(view.id));
  $(".cancel", bubble).addEventListener("click", (event) => cancel(view.id, event.target));
  page.jobs.set(view.id, bubble);
  return append(bubble);
}

function origin(view) {
  const from = view.origin;
  if (!from) {
    return "";
  }
  if (from.image === null) {
    return t("web_reroll_of", { job: from.job });
  }
  if (from.upscale) {
    return t("web_upscale_of", { job: from.job, image: from.image });
  }
  return t("web_variations_of", { job: from.job, image: from.image });
}

const FINISHED = ["done", "failed", "cancelled"];

function renderJob(view) {
  const bubble = jobBubble(view);
  if (FINISHED.includes(bubble.dataset.state) && !FINISHED.includes(view.state)) {
    return; // an older snapshot (the answer that queued it) after the socket said it ended
  }
  const title = [t("web_job", { job: view.id }), origin(view), describe(view.request)];
  $(".title", bubble).textContent = title.filter(Boolean).join(" · ");
  const changed = bubble.dataset.state !== view.state;
  bubble.dataset.state = view.state;
  $(".status", bubble).textContent = view.status;
  const bar = $(".bar", bubble);
  const drewNothing = isUpscale(view.request);
  if (drewNothing && view.state === "running") {
    bar.removeAttribute("value"); // an upscale has no steps: the bar just moves
  } else {
    bar.value = view.total ? view.step / view.total : 0;
  }
  bubble.dataset.step = view.step ?? 0;
  if (view.preview) {
    const preview = $(".preview", bubble);
    preview.src = view.preview;
    preview.hidden = false;
  }
  if (view.images && !bubble.dataset.images) {
    bubble.dataset.images = String(view.images.length);
    for (const image of view.images) {
      const figure = renderImage(view.id, image, drewNothing);
      if (view.spoiler) {
        // The image check flagged it, or its prompt is NSFW: hidden until clicked.
        const img = $("img.result", figure);
        img.classList.add("spoiler");
        const reveal = (event) => {
          event.preventDefault(); // the first click shows it; the next opens it
          img.classList.remove("spoiler");
        };
        img.addEventListener("click", reveal, { once: true });
      }
      $(".images", bubble).append(figure);
    }
  }
  const running = view.state === "queued" || view.state === "running";
  $(".cancel", bubble).hidden = !running;
  $(".reroll", bubble).hidden = running || drewNothing; // nothing to draw again
  if (changed) {
    announce(); // after the images: their room counts
  } else {
    keepBottom();
  }
}

function renderImage(jobId, image, drewNothing = false) {
  const figure = $("#image-template").content.firstElementChild.cloneNode(true);
  translate(figure);
  figure.dataset.seed = image.seed;
  $(".open", figure).href = image.url;
  $("img.result", figure).src = image.url;
  $("img.result", figure).alt = image.caption;
  $("figcaption", figure).textContent = image.caption;
  $(".infotext", figure).textContent = image.infotext;
  const download = $(".download", figure);
  download.href = image.url;
  download.download = image.filename;
  $(".variations", figure).addEventListener("click", () => variations(jobId, image.index));
  $(".variations-strong", figure).addEventListener("click", () =>
    variations(jobId, image.index, "strong"),
  );
  $(".upscale", figure).addEventListener("click", () => upscale(jobId, image.index));
  $(".variations", figure).hidden = drewNothing; // an upscale of a picture: no seed to vary
  $(".variations-strong", figure).hidden = drewNothing;
  return figure;
}

// --- actions --------------------------------------------------------------------------------

async function draw(text, file, shown, maskUrl = null) {
  say(text, "user", shown, maskUrl);
  try {
    const body = { text };
    if (file) {
      body.image = await dataUrl(file);
    }
    if (maskUrl) {
      body.mask = maskUrl;
    }
    const reply = await api("/api/draw", body);
    for (const note of reply.notes) {
      say(t("web_note", { note }), "note");
    }
    renderJob(reply.job);
  } catch (error) {
    say(error.message, "error");
  }
}

async function startFrom(path, body) {
  try {
    const reply = await api(path, body);
    renderJob(reply.job);
  } catch (error) {
    say(error.message, "error");
  }
}

function reroll(jobId) {
  return startFrom(`/api/jobs/${jobId}/reroll`, {});
}

function variations(jobId, index, strength = "subtle") {
  return startFrom(`/api/jobs/${jobId}/variations`, { image: index, strength });
}

function upscale(jobId, index) {
  return startFrom(`/api/jobs/${jobId}/upscale`, { image: index });
}

// --- a picture to draw from (img2img) -------------------------------------------------------

const PICTURE_TYPES = ["image/png", "image/jpeg", "image/webp"];
const picture = { file: null, url: null };

function megabytes(bytes) {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

// The server checks it all again; this only spares sending what it would refuse.
function choosePicture(file) {
  if (!file) return;
  const most = page.state ? page.state.max_image_bytes : Infinity;
  if (!PICTURE_TYPES.includes(file.type)) {
    say(t("web_picture_type", { name: file.name }), "error");
  } else if (file.size > most) {
    const values = { name: file.name, size: megabytes(file.size), max: megabytes(most) };
    say(t("web_picture_too_big", values), "error");
  } else {
    dropPicture();
    picture.file = file;
    picture.url = URL.createObjectURL(file); // kept: the sent message shows it
    $("#attached img.thumb").src = picture.url;
    $("#attached").hidden = false;
    showPictureActions();
  }
}

function dropPicture() {
  if (picture.url) {
    URL.revokeObjectURL(picture.url);
  }
  picture.file = picture.url = null;
  $("#attached").hidden = true;
  $("#picture").value = "";
  clearMask();
  showPictureActions();
}

// With a picture: ✎ Mask; and ⤢ Upscale while no prompt is typed (a prompt draws from it).
function showPictureActions() {
  $("#paint").hidden = !picture.file;
  $("#upscale-picture").hidden = !picture.file || $("#input").value.trim() !== "";
}

// --- a mask painted over the picture (inpainting) -------------------------------------------

const MASK_SIDE = 1024; // the mask's longest side at most (the engine fits it to the picture)
const DISPLAY_SIDE = 512; // the editor shows the picture about this big
const maskCanvas = $("#mask-editor canvas");
const mask = { painted: false, last: null };

async function openMask() {
  const shown = $("#mask-editor .stage img");
  shown.src = picture.url;
  try {
    await shown.decode();
  } catch {
    return; // not a picture the browser can show: the server says what is wrong with it
  }
  const { naturalWidth: width, naturalHeight: height } = shown;
  const fit = Math.min(MASK_SIDE / Math.max(width, height), 1);
  const [w, h] = [Math.max(1, Math.round(width * fit)), Math.max(1, Math.round(height * fit))];
  if (maskCanvas.width !== w || maskCanvas.height !== h) {
    maskCanvas.width = w; // a new size starts a new, empty mask
    maskCanvas.height = h;
    mask.painted = false;
  }
  const room = Math.min(
    DISPLAY_SIDE / Math.max(width, height),
    (window.innerWidth * 0.85) / width,
    (window.innerHeight * 0.6) / height,
  );
  shown.style.width = `${Math.round(width * room)}px`;
  shown.style.height = `${Math.round(height * room)}px`;
  $("#mask-editor").showModal();
}

function clearMask() {
  maskCanvas.getContext("2d").clearRect(0, 0, maskCanvas.width, maskCanvas.height);
  mask.painted = false;
  showMask();
}

// The composer's thumbnail shows the mask over the picture.
function showMask() {
  const overlay = $("#attached img.mask");
  overlay.hidden = !mask.painted;
  overlay.src = mask.painted ? maskCanvas.toDataURL() : "";
}

function canvasPoint(event) {
  const box = maskCanvas.getBoundingClientRect();
  const scale = maskCanvas.width / box.width;
  return { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale, scale };
}

function paint(from, to) {
  const pen = maskCanvas.getContext("2d");
  pen.strokeStyle = "#fff";
  pen.lineCap = "round";
  pen.lineJoin = "round";
  pen.lineWidth = Number($("#brush").value) * to.scale; // the brush's size on the screen
  pen.beginPath();
  pen.moveTo(from.x, from.y);
  pen.lineTo(to.x, to.y);
  pen.stroke();
  mask.painted = true;
}

maskCanvas.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  maskCanvas.setPointerCapture(event.pointerId);
  mask.last = canvasPoint(event);
  paint(mask.last, mask.last);
});
maskCanvas.addEventListener("pointermove", (event) => {
  if (!mask.last) return;
  const next = canvasPoint(event);
  paint(mask.last, next);
  mask.last = next;
});
for (const end of ["pointerup", "pointercancel"]) {
  maskCanvas.addEventListener(end, () => {
    mask.last = null;
  });
}

// What is sent: white where painted, black elsewhere (the engine reads grey levels).
function maskDataUrl() {
  if (!mask.painted) return null;
  const out = document.createElement("canvas");
  out.width = maskCanvas.width;
  out.height = maskCanvas.height;
  const pen = out.getContext("2d");
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, out.width, out.height);
  pen.drawImage(maskCanvas, 0, 0);
  return out.toDataURL("image/png");
}

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.addEventListener("load", () => resolve(reader.result));
    reader.addEventListener("error", () => reject(new Error(t("failed"))));
    reader.readAsDataURL(file);
  });
}

async function cancel(jobId, button) {
  button.disabled = true;
  try {
    const reply = await api(`/api/jobs/${jobId}/cancel`, {});
    if (!reply.cancelled) {
      say(t("web_already_finished", { job: jobId }), "info");
    }
  } catch (error) {
    say(error.message, "error");
  } finally {
    button.disabled = false;
  }
}

// --- settings -------------------------------------------------------------------------------

const NUMBERS = ["width", "height", "num_inference_steps", "guidance_scale"];

function fillChoices(state) {
  const switches = [
    ["true", t("web_on")],
    ["false", t("web_off")],
  ];
  for (const select of document.querySelectorAll("select[data-choices]")) {
    const kind = select.dataset.choices;
    const shown = displayValue(state.defaults[select.name]);
    const options = [new Option(t("web_default", { value: shown }), "")];
    if (kind === "switch") {
      options.push(...switches.map(([value, label]) => new Option(label, value)));
    } else {
      options.push(...state.choices[kind].map(choiceOption));
    }
    select.replaceChildren(...options);
  }
}

// A choice is a value, or a group of them ({label, names}: the samplers) shown as an <optgroup>.
function choiceOption(choice) {
  if (typeof choice === "string") {
    return new Option(choice, choice);
  }
  const group = document.createElement("optgroup");
  group.label = choice.label;
  group.append(...choice.names.map((name) => new Option(name, name)));
  return group;
}

function displayValue(value) {
  if (value === true) return t("web_on");
  if (value === false) return t("web_off");
  return String(value);
}

function showPrefs(state) {
  const form = $("#prefs");
  fillChoices(state);
  for (const [name, value] of Object.entries(state.prefs)) {
    const field = form.elements.namedItem(name);
    if (!field) continue;
    const shown = value === null ? "" : String(value);
    if (field instanceof HTMLSelectElement && ![...field.options].some((o) => o.value === shown)) {
      // Saved from a longer list (an old sampler name such as "DPM++ 2M Karras"): kept.
      field.append(new Option(shown, shown));
    }
    field.value = shown;
    if (NUMBERS.includes(name) || name === "negative_prompt") {
      field.placeholder = String(state.defaults[name] ?? "");
    }
  }
}

function readPrefs() {
  const form = $("#prefs");
  const values = {};
  for (const name of Object.keys(page.state.prefs)) {
    const field = form.elements.namedItem(name);
    if (!field) continue;
    const raw = field.value.trim();
    if (raw === "") {
      values[name] = null;
    } else if (NUMBERS.includes(name)) {
      values[name] = Number(raw);
    } else if (name === "quality_tags") {
      values[name] = raw === "true";
    } else {
      values[name] = raw;
    }
  }
  return values;
}

async function savePrefs(event) {
  event.preventDefault();
  try {
    applyState(await api("/api/settings", { values: readPrefs() }));
    $("#settings").close();
    say(t("web_saved"), "info");
  } catch (error) {
    say(error.message, "error");
  }
}

async function resetPrefs() {
  try {
    applyState(await api("/api/settings/reset", {}));
    say(t("web_settings_reset"), "info");
  } catch (error) {
    say(error.message, "error");
  }
}

async function swapModel() {
  const name = $("#model-select").value;
  $("#settings").close();
  say(t("web_swapping", { name }), "info");
  try {
    const reply = await api("/api/model", { name });
    showModel(reply.model);
    say(reply.status, "info");
  } catch (error) {
    say(error.message, "error");
  }
}

function showModel(name) {
  page.state.model = name;
  $("#model").textContent = t("web_model", { model: name });
  $("#model-select").value = name;
}

// The default model's VAE and hypernetwork ("NAME" or "NAME:STRENGTH", "" for none).
function fillAddons(state) {
  const vaes = [
    ["None", t("web_own_vae")],
    ["Automatic", t("web_automatic_vae")],
    ...state.vaes.map((name) => [name, name]),
  ];
  $("#vae-select").replaceChildren(...vaes.map(([value, label]) => new Option(label, value)));
  const hypernets = [["", t("web_no_hypernet")], ...state.hypernets.map((name) => [name, name])];
  $("#hypernet-select").replaceChildren(
    ...hypernets.map(([value, label]) => new Option(label, value)),
  );
  showAddons(state);
}

function showAddons({ vae, hypernet }) {
  const vaeSelect = $("#vae-select");
  if (![...vaeSelect.options].some((option) => option.value === vae)) {
    vaeSelect.append(new Option(vae, vae)); // a name as the admin typed it elsewhere
  }
  vaeSelect.value = vae;
  const [name, strength] = hypernet.split(":");
  const hypernetSelect = $("#hypernet-select");
  if (![...hypernetSelect.options].some((option) => option.value === name)) {
    hypernetSelect.append(new Option(name, name));
  }
  hypernetSelect.value = name;
  $("#hypernet-strength").value = strength ?? "1";
}

async function applyAddons() {
  const vae = $("#vae-select").value;
  const name = $("#hypernet-select").value;
  const strength = Number($("#hypernet-strength").value || "1");
  const hypernet = name && strength !== 1 ? `${name}:${strength}` : name;
  $("#settings").close();
  say(t("web_addons_loading", { model: page.state.model }), "info");
  try {
    const reply = await api("/api/addons", { vae, hypernet });
    showAddons(reply);
    say(reply.status, "info");
  } catch (error) {
    say(error.message, "error");
  }
}

// --- state from the server ------------------------------------------------------------------

function translate(root) {
  for (const element of root.querySelectorAll("[data-i18n]")) {
    element.textContent = t(element.dataset.i18n);
  }
  for (const element of root.querySelectorAll("[data-i18n-title]")) {
    element.title = t(element.dataset.i18nTitle);
  }
}

function applyState(state) {
  const first = page.state === null;
  page.state = state;
  page.strings = state.strings;
  document.documentElement.lang = state.locale === "zh" ? "zh-CN" : "en";
  document.title = t("web_title");
  translate(document);
  $("#input").placeholder = t("web_placeholder");
  showPrefs(state);
  $("#quota").textContent = state.quota; // this place's quota and today's use
  $("#styles").textContent = state.styles; // the styles --style NAME may name
  $("#admin").hidden = !state.admin;
  $("#model-select").replaceChildren(...state.models.map((name) => new Option(name, name)));
  showModel(state.model);
  // A Redis pool's workers: the count here, each one's model, speed and health on hover.
  const pool = $("#workers");
  pool.hidden = !state.workers.length;
  pool.textContent = state.workers[0] ?? "";
  pool.title = state.workers.slice(1).join("\n");
  fillAddons(state);
  if (first) {
    // The example's size is the current model's own (the demo model draws 128x128).
    const size = `${state.defaults.width}x${state.defaults.height}`;
    say(t("web_welcome", { size, ...state.sampler_help }), "info");
  }
  // What the user typed (the request has the prompt with its quality tags); nothing for a
  // button's job.
  for (const view of [...state.history, ...state.jobs]) {
    if (!page.jobs.has(view.id) && view.said !== null) {
      say(view.said, "user", view.picture, view.mask);
    }
    renderJob(view);
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws?lang=${lang()}`);
  socket.addEventListener("open", () => {
    page.retryMs = 500;
    $("#connection").hidden = true;
  });
  socket.addEventListener("message", (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "state") {
      applyState(event);
    } else if (event.type === "model") {
      showModel(event.model);
      showAddons(event); // the new default model's own
    } else if (event.type === "addons") {
      showAddons(event);
    } else if (event.job) {
      renderJob(event.job);
    }
  });
  socket.addEventListener("close", () => {
    if (page.state !== null) {
      $("#connection").hidden = false;
    }
    // Browsers offer no "server is back" event: try again, backing off to 10 s.
    setTimeout(connect, page.retryMs);
    page.retryMs = Math.min(page.retryMs * 2, 10000);
  });
}

// `command`: what a button sends instead of the typed text (⤢ Upscale: "/upscale").
function send(event, command = null) {
  event.preventDefault();
  const input = $("#input");
  const text = command ?? input.value;
  if (!text.trim() && !picture.file) return;
  input.value = "";
  const { file, url } = picture;
  const maskUrl = command === null ? maskDataUrl() : null; // an upscale redraws nothing
  picture.file = picture.url = null; // the sent message keeps showing it
  dropPicture();
  jumpToEnd(); // as chat apps do: what you send, and its answer, is what you want to see
  draw(text, file, url, maskUrl);
}

$("#composer").addEventListener("submit", send);
$("#upscale-picture").addEventListener("click", (event) => send(event, "/upscale"));
$("#input").addEventListener("input", showPictureActions);
$("#paint").addEventListener("click", openMask);
$("#mask-clear").addEventListener("click", clearMask);
$("#mask-done").addEventListener("click", () => $("#mask-editor").close());
$("#mask-editor").addEventListener("close", showMask); // Done, or Escape
$("#attach").addEventListener("click", () => $("#picture").click());
$("#picture").addEventListener("change", (event) => choosePicture(event.target.files[0]));
$("#detach").addEventListener("click", dropPicture);
// A picture dropped on the composer, or pasted into it, is the one to draw from.
const composer = $("#composer");
composer.addEventListener("dragover", (event) => {
  if (event.dataTransfer.types.includes("Files")) {
    event.preventDefault();
    composer.classList.add("dropping");
  }
});
composer.addEventListener("dragleave", () => composer.classList.remove("dropping"));
composer.addEventListener("drop", (event) => {
  event.preventDefault();
  composer.classList.remove("dropping");
  choosePicture(event.dataTransfer.files[0]);
});
$("#input").addEventListener("paste", (event) => {
  const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (file) {
    event.preventDefault();
    choosePicture(file);
  }
});
$("#input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    send(event);
  }
});
$("#open-settings").addEventListener("click", () => {
  if (page.state) showPrefs(page.state);
  $("#settings").showModal();
});
$("#close-settings").addEventListener("click", () => $("#settings").close());
$("#prefs").addEventListener("submit", savePrefs);
$("#reset-prefs").addEventListener("click", resetPrefs);
$("#swap").addEventListener("click", swapModel);
$("#apply-addons").addEventListener("click", applyAddons);
connect();
