// Retouch's editor page: a task's status while it runs, its results beside its input, the
// variants, the full images, a mask painted for the next edit, and the user's own images.
// Everything goes through the host (MCP Apps); the page fetches nothing itself.

import { Bridge, applyHostContext } from "./bridge.js";
import { blobOf, dataUrl, decode, extension, formatBytes, readBase64, sniff } from "./images.js";
import { MaskPainter } from "./mask.js";
import { View } from "./view.js";

const FINISHED = new Set(["succeeded", "failed", "canceled"]);
const POLL_WAIT_S = 15;
const APP_INFO = { name: "retouch-editor", version: "1.0.0" };

const $ = (id) => document.getElementById(id);
const el = {
  app: $("app"),
  status: $("status"),
  taskId: $("task-id"),
  progressRow: $("progress-row"),
  progressText: $("progress-text"),
  cancel: $("cancel"),
  message: $("message"),
  stage: $("stage"),
  frame: $("frame"),
  before: $("before"),
  after: $("after"),
  divider: $("divider"),
  mask: $("mask"),
  placeholder: $("placeholder"),
  split: $("split"),
  compareControls: $("compare-controls"),
  paintControls: $("paint-controls"),
  modeCompare: $("mode-compare"),
  modePaint: $("mode-paint"),
  zoomIn: $("zoom-in"),
  zoomOut: $("zoom-out"),
  zoomFit: $("zoom-fit"),
  zoomLevel: $("zoom-level"),
  brush: $("tool-brush"),
  eraser: $("tool-eraser"),
  brushSize: $("brush-size"),
  invert: $("mask-invert"),
  undo: $("mask-undo"),
  clear: $("mask-clear"),
  variants: $("variants"),
  details: $("details"),
  facts: $("facts"),
  notes: $("notes"),
  full: $("full"),
  download: $("download"),
  continue: $("continue"),
  subjectLabel: $("subject-label"),
  fn: $("function"),
  vendor: $("vendor"),
  prompt: $("prompt"),
  hint: $("function-hint"),
  edit: $("edit"),
  drop: $("drop"),
  choose: $("choose"),
  pick: $("pick"),
};

/**
 * An image the page holds: {src (data: URL), base64, width, height, ref, label}; ``ref`` is
 * how an edit names it (retouch://…), made by uploading it when it has none yet.
 */
const state = {
  task: null,
  results: [], // the task's results, each with {src, base64, full} once loaded
  selected: 0,
  input: null, // what the task ran on
  subject: null, // what the next edit runs on
  inputFor: new Map(), // task id → the image it ran on, when the page knows it already
  startedHere: new Set(), // tasks the user started in the page (the model is told)
  functions: [],
  toolArgs: null,
};

const bridge = new Bridge();
const view = new View(el);
const painter = new MaskPainter(el.mask, updateMaskButtons);

// ---- messages ------------------------------------------------------------------------------

function say(text, kind = "info") {
  el.message.textContent = text;
  el.message.classList.toggle("error", kind === "error");
}

function failure(error) {
  return error?.message || String(error);
}

// ---- the task and its results --------------------------------------------------------------

function taskOf(result) {
  const task = result?.structuredContent;
  return task && typeof task.id === "string" && typeof task.status === "string" ? task : null;
}

function textOf(result) {
  return (result?.content || [])
    .filter((c) => c.type === "text")
    .map((c) => c.text)
    .join("\n");
}

/** Preview images of a tool result, by the result link that follows each. */
function previewsOf(result) {
  const previews = new Map();
  let last = null;
  for (const item of result?.content || []) {
    if (item.type === "image") last = dataUrl(item.data, item.mimeType);
    else if (item.type === "resource_link" && last) {
      previews.set(item.uri, last);
      last = null;
    }
  }
  return previews;
}

function showToolResult(result) {
  say("");
  const task = taskOf(result);
  if (!task) {
    say(textOf(result) || "The tool gave no task.", "error");
    setStatus("failed");
    return;
  }
  showTask(task, previewsOf(result));
}

function showTask(task, previews = new Map()) {
  apply(task, previews);
  if (FINISHED.has(task.status)) finished(task);
  else follow(task.id);
}

/** Take in a task as it is now (a new one, or a later state of the one shown). */
function apply(task, previews) {
  if (state.task?.id !== task.id) {
    state.results = [];
    state.selected = 0;
    state.input = state.inputFor.get(task.id) || null;
    if (!state.input) loadInput(task.id);
    else if (!state.subject) setSubject(state.input);
  }
  state.task = task;
  for (const item of task.results || []) {
    if (!state.results.some((r) => r.uri === item.uri)) {
      state.results.push({ ...item, src: previews.get(item.uri) || null, full: false });
    }
  }
  render();
}

async function finished(task) {
  const count = task.results?.length || 0;
  if (task.status === "failed") {
    const why = task.error ? `${task.error.message} [${task.error.code}]` : "the edit failed";
    say(`Task failed: ${why}`, "error");
  } else if (task.status === "canceled") {
    say("The task was canceled.");
  } else {
    say(`${count} result${count === 1 ? "" : "s"} ready.`);
  }
  if (state.startedHere.delete(task.id)) tellModel(task);
  const selected = state.results[state.selected];
  if (selected) await loadFull(selected).catch((e) => say(failure(e), "error"));
}

/** Poll check_task through the host until the task ends (or another one is shown). */
async function follow(taskId) {
  if (state.following === taskId) return;
  state.following = taskId;
  try {
    for (;;) {
      const result = await bridge.callTool("check_task", {
        task_id: taskId,
        wait_seconds: POLL_WAIT_S,
      });
      const task = taskOf(result);
      if (!task) throw new Error(textOf(result) || "check_task gave no task");
      if (state.task?.id !== taskId) return;
      apply(task, previewsOf(result));
      if (FINISHED.has(task.status)) return void finished(task);
    }
  } catch (error) {
    say(`Could not follow the task: ${failure(error)}`, "error");
  } finally {
    if (state.following === taskId) state.following = null;
  }
}

async function loadInput(taskId) {
  try {
    const given = state.givenInput; // the tool call's own data: image, when it had one
    state.givenInput = null;
    const image = await (given ? given.catch(() => readInput(taskId)) : readInput(taskId));
    if (state.task?.id !== taskId) return;
    state.input = image;
    state.inputFor.set(taskId, image);
    if (!state.subject) setSubject(image);
    render();
  } catch (error) {
    say(`The input image could not be shown: ${failure(error)}`, "error");
  }
}

/** The task's input, from the app-only tool task_input (through the host). */
async function readInput(taskId) {
  const result = await bridge.callTool("task_input", { task_id: taskId, index: 0 });
  const image = (result.content || []).find((c) => c.type === "image");
  if (result.isError || !image) throw new Error(textOf(result) || "no input image");
  const first = state.toolArgs?.images?.[0];
  const ref = typeof first === "string" && first.startsWith("retouch://") ? first : null;
  return imageFrom(image.data, image.mimeType, ref, "the input");
}

async function imageFrom(base64, mime, ref, label) {
  const src = dataUrl(base64, mime || sniff(base64));
  const { width, height } = await decode(src);
  return { src, base64, width, height, ref, label };
}

/** The full image of a result, read through the host (resources/read of its link). */
async function loadFull(result) {
  if (result.full) return result;
  const base64 = blobOf(await bridge.readResource(result.uri));
  result.base64 = base64;
  result.src = dataUrl(base64, result.mime_type || sniff(base64));
  result.full = true;
  render();
  return result;
}

function asImage(result) {
  return {
    src: result.src,
    base64: result.base64 || null,
    width: result.width,
    height: result.height,
    ref: result.uri,
    label: `result ${result.index + 1} of task ${state.task.id.slice(0, 8)}`,
  };
}

// ---- rendering -----------------------------------------------------------------------------

function setStatus(status) {
  el.status.textContent = status;
  el.status.dataset.status = status;
  el.app.dataset.state = status;
}

function render() {
  const task = state.task;
  if (task) {
    setStatus(task.status);
    el.taskId.textContent = `task ${task.id.slice(0, 8)} · ${task.function} with ${task.vendor}`;
    const running = !FINISHED.has(task.status);
    el.progressRow.hidden = !running;
    el.progressText.textContent = task.progress || (task.status === "queued" ? "queued" : "");
  } else {
    el.progressRow.hidden = true;
    el.taskId.textContent = "";
  }
  const selected = state.results[state.selected];
  if (state.mode === "paint") view.show(state.subject, null);
  else view.show(state.input || state.subject, selected?.src ? selected : null);
  const before = state.mode === "paint" ? state.subject : state.input || state.subject;
  el.before.alt = before ? `Before: ${before.label}` : "";
  el.after.alt = selected ? `After: result ${selected.index + 1}` : "";
  renderVariants();
  renderDetails(selected);
  el.subjectLabel.textContent = state.subject ? `(${state.subject.label})` : "";
  el.edit.disabled = !state.subject || state.busy;
}

function renderVariants() {
  const results = state.results;
  el.variants.hidden = results.length < 2;
  if (results.length < 2) return;
  el.variants.replaceChildren(
    ...results.map((result, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "variant";
      button.setAttribute("aria-pressed", String(i === state.selected));
      button.setAttribute("aria-label", `Result ${i + 1}, ${result.width}×${result.height}`);
      const img = document.createElement("img");
      img.alt = "";
      if (result.src) img.src = result.src;
      const caption = document.createElement("span");
      caption.className = "small";
      caption.textContent = `${i + 1} · ${result.width}×${result.height}`;
      button.append(img, caption);
      button.addEventListener("click", () => select(i));
      return button;
    }),
  );
}

async function select(index) {
  state.selected = index;
  render();
  el.variants.querySelectorAll("button")[index]?.focus();
  await loadFull(state.results[index]).catch((e) => say(failure(e), "error"));
}

function renderDetails(selected) {
  const task = state.task;
  el.details.hidden = !task || (!selected && !task.notes?.length && task.cost == null);
  if (el.details.hidden) return;
  const facts = [];
  if (selected) {
    const kind = (selected.mime_type || "").replace("image/", "").toUpperCase();
    facts.push(["Size", `${selected.width}×${selected.height} · ${formatBytes(selected.bytes)} ${kind}`]);
    facts.push(["Shown", selected.full ? "full image" : "preview"]);
  }
  if (state.input) facts.push(["Input", `${state.input.width}×${state.input.height}`]);
  facts.push(["Vendor", task.vendor]);
  if (task.cost != null) {
    facts.push(["Cost", `${task.cost} ${task.currency || ""} for ${task.billed_images} image(s)`]);
  }
  el.facts.replaceChildren(
    ...facts.flatMap(([name, value]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = value;
      return [dt, dd];
    }),
  );
  el.notes.replaceChildren(
    ...(task.notes || []).map((note) => {
      const li = document.createElement("li");
      li.textContent = note;
      return li;
    }),
  );
  const caps = bridge.hostCapabilities;
  el.full.hidden = !selected || selected.full;
  el.continue.hidden = !selected;
  el.download.hidden = !selected || !(caps.downloadFile || (caps.openLinks && selected.url));
}

// ---- modes, mask, zoom -----------------------------------------------------------------------

function setMode(mode) {
  state.mode = mode;
  if (mode === "paint" && state.subject && el.mask.width !== state.subject.width) {
    painter.reset(state.subject.width, state.subject.height);
  }
  view.setMode(mode);
  render();
}

function setSubject(image) {
  state.subject = image;
  painter.reset(image.width, image.height);
  render();
}

function setTool(erase) {
  painter.erase = erase;
  el.brush.setAttribute("aria-pressed", String(!erase));
  el.eraser.setAttribute("aria-pressed", String(erase));
}

function updateMaskButtons() {
  el.undo.disabled = !painter.painted;
  el.clear.disabled = !painter.painted;
}

// ---- functions and edits ---------------------------------------------------------------------

async function loadFunctions() {
  try {
    const result = await bridge.callTool("list_functions", {});
    state.functions = (result.structuredContent?.functions || []).filter(
      (f) => f.min_images <= 1 && f.max_images >= 1,
    );
  } catch (error) {
    say(`The functions could not be listed: ${failure(error)}`, "error");
    return;
  }
  const preferred = state.functions.find(
    (f) => f.name === "description_edit_with_mask" && f.vendors.length,
  );
  el.fn.replaceChildren(
    ...state.functions.map((f) => {
      const option = document.createElement("option");
      option.value = f.name;
      option.textContent = f.mask === "none" ? f.name : `${f.name} (mask ${f.mask})`;
      option.disabled = f.vendors.length === 0;
      return option;
    }),
  );
  const first = preferred || state.functions.find((f) => f.vendors.length);
  if (first) el.fn.value = first.name;
  functionChanged();
}

function functionChanged() {
  const info = state.functions.find((f) => f.name === el.fn.value);
  const vendors = info?.vendors || [];
  el.vendor.replaceChildren(
    new Option("Automatic", ""),
    ...vendors.map((name) => new Option(name, name)),
  );
  if (!info) return;
  const note = vendors.map((v) => info.notes?.[v]).find(Boolean);
  const mask =
    info.mask === "required"
      ? " Paint the region to change (Paint mask)."
      : info.mask === "optional"
        ? " A painted mask limits it to that region."
        : "";
  el.hint.textContent = `${info.summary}${mask}${note ? ` (${note})` : ""}`;
}

/** A reference an edit can use for ``image``, uploading its bytes when it has none. */
async function refOf(image) {
  if (image.ref) return image.ref;
  const upload = await uploadImage(image.base64);
  image.ref = upload.uri;
  return image.ref;
}

async function uploadImage(base64) {
  const result = await bridge.callTool("upload_image", { data: base64 });
  if (result.isError || !result.structuredContent?.uri) {
    throw new Error(textOf(result) || "the upload was refused");
  }
  return result.structuredContent;
}

async function startEdit() {
  const info = state.functions.find((f) => f.name === el.fn.value);
  const subject = state.subject;
  if (!info || !subject) return;
  const args = { images: [], function: info.name, prompt: el.prompt.value.trim(), wait_seconds: 0 };
  if (el.vendor.value) args.vendor = el.vendor.value;
  if (info.mask !== "none" && painter.painted) {
    const mask = painter.export();
    if (mask.white > 0) args.mask = mask.url;
  }
  if (info.mask === "required" && !args.mask) {
    say(`${info.name} needs a mask: choose Paint mask and paint the region to change.`, "error");
    return;
  }
  busy(true, "Starting the edit…");
  try {
    args.images = [await refOf(subject)];
    const result = await bridge.callTool("edit_image", args);
    const task = taskOf(result);
    if (!task) throw new Error(textOf(result) || "the edit was refused");
    state.inputFor.set(task.id, subject);
    state.startedHere.add(task.id);
    say("");
    setMode("compare");
    showTask(task, previewsOf(result));
  } catch (error) {
    say(failure(error), "error");
  } finally {
    busy(false);
  }
}

function busy(on, text) {
  state.busy = on;
  el.edit.disabled = on || !state.subject;
  el.edit.setAttribute("aria-busy", String(on));
  if (on && text) say(text);
}

/** After an edit the user started here, the model hears what happened. */
async function tellModel(task) {
  const lines = [
    `In the Retouch editor the user ran ${task.function} with ${task.vendor}` +
      (task.prompt ? ` ("${task.prompt}")` : "") +
      `: task ${task.id} ${task.status}.`,
  ];
  for (const r of task.results || []) lines.push(`Result ${r.index}: ${r.uri} (${r.width}×${r.height}).`);
  if (task.error) lines.push(`Error: ${task.error.message}`);
  const content = [{ type: "text", text: lines.join("\n") }];
  const caps = bridge.hostCapabilities;
  try {
    if (caps.updateModelContext) await bridge.request("ui/update-model-context", { content });
    else if (caps.message) await bridge.request("ui/message", { role: "user", content });
  } catch {
    // the host may refuse; the page itself is up to date
  }
}

async function cancelTask() {
  if (!state.task) return;
  try {
    await bridge.callTool("cancel_task", { task_id: state.task.id });
  } catch (error) {
    say(failure(error), "error");
  }
}

async function download() {
  const selected = state.results[state.selected];
  if (!selected) return;
  const caps = bridge.hostCapabilities;
  try {
    if (caps.downloadFile) {
      await loadFull(selected);
      const name = `retouch-${state.task.id.slice(0, 8)}-${selected.index}.${extension(selected.mime_type)}`;
      const resource = { uri: `file:///${name}`, mimeType: selected.mime_type, blob: selected.base64 };
      const answer = await bridge.request("ui/download-file", {
        contents: [{ type: "resource", resource }],
      });
      if (answer?.isError) say("The download was not made.");
    } else if (caps.openLinks && selected.url) {
      await bridge.request("ui/open-link", { url: selected.url });
    }
  } catch (error) {
    say(failure(error), "error");
  }
}

async function continueFrom() {
  const selected = state.results[state.selected];
  if (!selected) return;
  try {
    await loadFull(selected);
    setSubject(asImage(selected));
    setMode("paint");
    say(`The next edit starts from ${state.subject.label}.`);
    el.prompt.focus();
  } catch (error) {
    say(failure(error), "error");
  }
}

// ---- the user's own images ---------------------------------------------------------------------

async function takeFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    say(`${file.name || "That file"} is not an image.`, "error");
    return;
  }
  busy(true, `Uploading ${file.name || "the image"}…`);
  try {
    const base64 = await readBase64(file);
    const upload = await uploadImage(base64);
    const image = await imageFrom(base64, upload.mime_type, upload.uri, file.name || "your image");
    state.task = null;
    state.results = [];
    state.input = image;
    setSubject(image);
    setStatus("ready");
    say(`Uploaded ${image.label} (${upload.width}×${upload.height}). Pick a function, then Edit.`);
    el.fn.focus();
  } catch (error) {
    say(`${file.name || "The file"} was refused: ${failure(error)}`, "error");
  } finally {
    busy(false);
  }
}

function wireFiles() {
  el.choose.addEventListener("click", () => el.pick.click());
  el.pick.addEventListener("change", () => takeFile(el.pick.files?.[0]));
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    takeFile(event.dataTransfer?.files?.[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = event.clipboardData?.files?.[0];
    if (file) {
      event.preventDefault();
      takeFile(file);
    }
  });
}

// ---- start -------------------------------------------------------------------------------------

function wire() {
  el.modeCompare.addEventListener("click", () => setMode("compare"));
  el.modePaint.addEventListener("click", () => setMode("paint"));
  el.brush.addEventListener("click", () => setTool(false));
  el.eraser.addEventListener("click", () => setTool(true));
  el.brushSize.addEventListener("input", () => (painter.size = Number(el.brushSize.value)));
  el.invert.addEventListener("click", () => painter.invert());
  el.undo.addEventListener("click", () => painter.undo());
  el.clear.addEventListener("click", () => painter.clear());
  el.full.addEventListener("click", () => {
    const selected = state.results[state.selected];
    if (selected) loadFull(selected).catch((e) => say(failure(e), "error"));
  });
  el.download.addEventListener("click", download);
  el.continue.addEventListener("click", continueFrom);
  el.cancel.addEventListener("click", cancelTask);
  el.fn.addEventListener("change", functionChanged);
  el.edit.addEventListener("click", startEdit);
  wireFiles();
  painter.size = Number(el.brushSize.value);
  updateMaskButtons();
}

async function main() {
  state.mode = "compare";
  wire();
  view.setMode("compare");
  bridge.on("ui/notifications/tool-input", (params) => {
    state.toolArgs = params.arguments || {};
    const first = state.toolArgs.images?.[0];
    const inline = typeof first === "string" && /^data:image\/[\w.+-]+;base64,/.exec(first);
    if (inline && !state.task) {
      const base64 = first.slice(inline[0].length);
      state.givenInput = imageFrom(base64, null, null, "the input");
      state.givenInput.catch(() => {}); // loadInput reads the input instead
    }
    if (typeof state.toolArgs.prompt === "string") el.prompt.value = state.toolArgs.prompt;
  });
  bridge.on("ui/notifications/tool-result", showToolResult);
  bridge.on("ui/notifications/tool-cancelled", (params) => {
    say(`The tool call was cancelled${params.reason ? `: ${params.reason}` : ""}.`, "error");
  });
  bridge.on("ui/notifications/host-context-changed", (context) => {
    Object.assign(bridge.hostContext, context);
    applyHostContext(context);
  });
  try {
    await bridge.connect(APP_INFO, { availableDisplayModes: ["inline"] });
  } catch (error) {
    setStatus("offline");
    say("This page runs inside an MCP host that renders MCP Apps.", "error");
    return;
  }
  applyHostContext(bridge.hostContext);
  setStatus("waiting");
  say("Waiting for the task…");
  loadFunctions();
}

main();
