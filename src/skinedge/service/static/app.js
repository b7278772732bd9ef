/* skinedge clinician page: plain JS, no dependencies, talks to /api/v1 with a bearer token.
 *
 * Security: every value from the API is written with textContent (never innerHTML); images are
 * fetched with the Authorization header and shown through blob: URLs; the CSP allows no inline
 * script or style, so the page styles itself with classes, the `hidden` attribute and CSSOM
 * properties (element.style.width / opacity), which the CSP permits.
 */
(() => {
  "use strict";

  const API = "/api/v1";
  const TOKEN_KEY = "skinedge.token";
  const PER_PAGE = 10;
  const STATUS_LABELS = { unreviewed: "Unreviewed", verified: "Verified", corrected: "Corrected" };

  const state = {
    token: null,
    me: null,
    model: null,
    current: null,        // the Case shown in the case card
    pendingFile: null,    // the File chosen for upload
    previewUrl: null,     // blob URL of the pending file's preview
    caseUrls: [],         // blob URLs of the open case's image and overlay
    caseSeq: 0,           // guards against a slow image load overwriting a newer case
    historyPage: 1,
    historyStatus: "",
    historySeq: 0,
  };

  const $ = (id) => document.getElementById(id);

  /** A DOM element with attributes and children (strings become text nodes). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // ---------------------------------------------------------------- messages (aria-live)

  let messageTimer = null;

  function showMessage(text, kind = "error") {
    const box = $("messages");
    clearTimeout(messageTimer);
    const close = el("button", { type: "button", className: "message-close",
                                 "aria-label": "Dismiss message" }, "×");
    close.addEventListener("click", clearMessage);
    const message = el("div", { className: `message message-${kind}`, "data-testid": `message-${kind}` },
                       el("span", { className: "message-text" }, text), close);
    box.replaceChildren(message);
    if (kind !== "error") messageTimer = setTimeout(clearMessage, 8000);
  }

  function clearMessage() {
    clearTimeout(messageTimer);
    $("messages").replaceChildren();
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function detailText(body, status) {
    if (body && typeof body.detail === "string" && body.detail) return body.detail;
    if (body && Array.isArray(body.detail)) {
      return body.detail.map((item) => {
        const loc = Array.isArray(item.loc) ? item.loc.filter((p) => p !== "body").join(".") : "";
        return loc ? `${loc}: ${item.msg}` : String(item.msg);
      }).join("; ");
    }
    return `The server answered ${status} without an explanation; try again, and tell the ` +
           "administrator if it keeps happening.";
  }

  /** fetch() under /api/v1 with the bearer token; throws ApiError with the {"detail"} text. */
  async function api(path, { method = "GET", body = undefined, json = undefined } = {}) {
    const headers = new Headers();
    if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
    if (json !== undefined) {
      headers.set("Content-Type", "application/json");
      body = JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch(API + path, { method, headers, body, cache: "no-store",
                                           credentials: "omit" });
    } catch {
      throw new ApiError(0, "Cannot reach the skinedge server: check the connection and try again.");
    }
    if (!response.ok) {
      let payload = null;
      try {
        payload = await response.json();
      } catch {
        payload = null;
      }
      const error = new ApiError(response.status, detailText(payload, response.status));
      if (response.status === 401 && state.me) {
        signOut();
        showMessage(`You have been signed out: ${error.message}`);
        error.handled = true;
      }
      throw error;
    }
    return response;
  }

  function report(error) {
    if (error instanceof ApiError) {
      if (error.handled) return;  // signOut() already said so
      showMessage(error.message);
    } else {
      showMessage(`Something went wrong in the page: ${error.message}`);
    }
  }

  // ---------------------------------------------------------------- formatting

  function percent(p) {
    if (p > 0 && p < 0.001) return "<0.1%";
    return `${(p * 100).toFixed(1)}%`;
  }

  const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  function formatDate(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : dateFormat.format(date);
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function className(code) {
    const known = state.model && state.model.classes.find((c) => c.code === code);
    return known ? known.name : code;
  }

  // ---------------------------------------------------------------- sign in / out

  async function signIn(token) {
    state.token = token;
    let me;
    try {
      me = await (await api("/me")).json();
    } catch (error) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      throw error;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    state.me = me;
    $("user-name").textContent = me.name;
    $("user-role").textContent = me.role;
    $("session").hidden = false;
    $("signin-view").hidden = true;
    $("workspace").hidden = false;
    $("token-input").value = "";
    await Promise.all([loadModel(), loadHistory()]);
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.me = null;
    state.model = null;
    closeCase();
    clearPendingFile();
    $("upload-form").reset();
    $("history-list").replaceChildren();
    $("history-status").value = "";
    state.historyPage = 1;
    state.historyStatus = "";
    $("model-info").textContent = "";
    $("session").hidden = true;
    $("workspace").hidden = true;
    $("signin-view").hidden = false;
    $("token-input").focus();
  }

  async function loadModel() {
    const model = await (await api("/model")).json();
    state.model = model;
    const select = $("correct-label");
    select.replaceChildren(el("option", { value: "" }, "Choose the correct class…"));
    for (const cls of model.classes) {
      select.append(el("option", { value: cls.code }, `${cls.name} (${cls.code})`));
    }
    const sha = model.card_sha256 ? ` · card ${String(model.card_sha256).slice(0, 12)}` : "";
    $("model-info").textContent =
      `Model ${model.name} · ${model.architecture} · ${model.label}${sha}`;
  }

  // ---------------------------------------------------------------- upload

  function choosePendingFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showMessage(`${file.name} is not an image (${file.type}): choose a JPEG or PNG photo.`);
      return;
    }
    clearPendingFile();
    state.pendingFile = file;
    state.previewUrl = URL.createObjectURL(file);
    const preview = $("selected-preview");
    preview.hidden = false;
    preview.src = state.previewUrl;
    preview.alt = `Preview of ${file.name}`;
    $("selected-name").textContent = file.name || "photo";
    $("selected-size").textContent = formatBytes(file.size);
    $("selected-file").hidden = false;
    $("dropzone-empty").hidden = true;
    $("upload-button").disabled = false;
  }

  function clearPendingFile() {
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = null;
    state.pendingFile = null;
    $("selected-preview").removeAttribute("src");
    $("selected-file").hidden = true;
    $("dropzone-empty").hidden = false;
    $("upload-button").disabled = true;
    $("file-input").value = "";
    $("camera-input").value = "";
  }

  async function uploadCase(event) {
    event.preventDefault();
    if (!state.pendingFile) {
      showMessage("Choose an image first: drag it here, pick a file or take a photo.");
      return;
    }
    const form = new FormData();
    // The file's own name may name the patient: it never leaves the device.
    form.append("image", state.pendingFile, "upload");
    const patientRef = $("patient-ref").value.trim();
    const bodySite = $("body-site").value.trim();
    if (patientRef) form.append("patient_ref", patientRef);
    if (bodySite) form.append("body_site", bodySite);
    const button = $("upload-button");
    button.disabled = true;
    button.classList.add("is-busy");
    button.textContent = "Analysing…";
    try {
      const created = await (await api("/cases", { method: "POST", body: form })).json();
      clearMessage();
      clearPendingFile();
      $("patient-ref").value = "";
      $("body-site").value = "";
      openCase(created, { focus: true });
      loadHistory(1).catch(report);
    } catch (error) {
      button.disabled = !state.pendingFile;
      report(error);
    } finally {
      button.classList.remove("is-busy");
      button.textContent = "Analyse image";
    }
  }

  function setUpDropzone() {
    const zone = $("dropzone");
    let depth = 0;
    zone.addEventListener("dragenter", (event) => {
      event.preventDefault();
      depth += 1;
      zone.classList.add("is-dragover");
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
    });
    zone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) zone.classList.remove("is-dragover");
    });
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      depth = 0;
      zone.classList.remove("is-dragover");
      const files = event.dataTransfer ? event.dataTransfer.files : null;
      if (!files || files.length === 0) {
        showMessage("Nothing to upload was dropped: drop an image file from your computer.");
        return;
      }
      if (files.length > 1) showMessage(`${files.length} files dropped: using the first only.`, "info");
      choosePendingFile(files[0]);
    });
    // A file dropped beside the zone must not navigate away from the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
  }

  // ---------------------------------------------------------------- the case card

  function revokeCaseUrls() {
    for (const url of state.caseUrls) URL.revokeObjectURL(url);
    state.caseUrls = [];
  }

  function closeCase() {
    state.current = null;
    state.caseSeq += 1;
    revokeCaseUrls();
    $("case-image").removeAttribute("src");
    $("case-overlay").removeAttribute("src");
    $("case-card").hidden = true;
    $("case-empty").hidden = false;
    markOpenRow();
  }

  function openCase(item, { focus = false } = {}) {
    const sameCase = state.current && state.current.id === item.id;
    state.current = item;
    renderCase(item);
    if (!sameCase) loadCaseImages(item);
    $("case-empty").hidden = true;
    $("case-card").hidden = false;
    markOpenRow();
    if (focus) {
      $("case-title").focus({ preventScroll: true });
      $("case-card").scrollIntoView({ block: "start", behavior: "smooth" });
    }
  }

  function renderCase(item) {
    $("case-id").textContent = item.id;
    $("case-created").textContent = formatDate(item.created_at);
    const badge = $("case-status");
    badge.textContent = STATUS_LABELS[item.status] || item.status;
    badge.className = `status-badge status-${item.status}`;
    badge.dataset.status = item.status;

    const probs = item.probabilities || [];
    const top = probs.find((p) => p.code === item.prediction) || probs[0];
    const lesion = item.lesion_image !== false;
    $("not-lesion-alert").hidden = lesion;
    $("prediction").textContent = !lesion ? "No diagnosis: not a lesion image"
      : top ? top.name : item.prediction;
    $("prediction-pct").textContent = lesion && top ? percent(top.probability) : "";

    const alert = $("malignant-alert");
    if (item.malignant) {
      const threshold = state.model ? ` (alert threshold ${percent(state.model.malignant_threshold)})` : "";
      $("malignant-text").textContent =
        `The malignant classes have a combined probability of ${percent(item.malignant_probability)}` +
        `${threshold}. Arrange a specialist assessment as your local pathway says; ` +
        "do not use this result to reassure.";
      alert.hidden = false;
    } else {
      $("malignant-text").textContent = "";
      alert.hidden = true;
    }

    const list = $("prob-list");
    list.replaceChildren();
    for (const p of lesion ? probs : []) {  // a refused picture: no probabilities shown
      const fill = el("span", { className: "bar-fill" });
      fill.style.width = `${Math.max(0, Math.min(1, p.probability)) * 100}%`;
      const row = el("li", {
        className: `prob-row${p.code === item.prediction ? " is-top" : ""}`,
        "data-testid": "prob-row",
        dataset: { code: p.code, probability: String(p.probability) },
      },
      el("span", { className: "prob-name" }, p.name,
         p.malignant ? el("span", { className: "tag-malignant" }, "malignant") : null),
      el("span", { className: "prob-value" }, percent(p.probability)),
      el("span", { className: "bar", "aria-hidden": "true" }, fill));
      list.append(row);
    }

    const details = [
      ["Patient reference", item.patient_ref || "—"],
      ["Body site", item.body_site || "—"],
      ["Malignant classes", percent(item.malignant_probability)],
      ["Image", item.image ? `${item.image.width} × ${item.image.height} px` : "—"],
      ["Model", item.model ? `${item.model.architecture} (${item.model.label})` : "—"],
      ["Inference", typeof item.latency_ms === "number" ? `${item.latency_ms.toFixed(1)} ms` : "—"],
    ];
    $("case-details").replaceChildren(...details.flatMap(([term, value]) => [
      el("dt", {}, term), el("dd", {}, value)]));

    renderReview(item);
  }

  function renderReview(item) {
    const summary = $("review-summary");
    const review = item.review;
    if (!review) {
      summary.textContent = "Not reviewed yet. Confirm the prediction or record the correct class.";
    } else if (review.action === "verify") {
      summary.textContent = `Confirmed by ${review.reviewer} on ${formatDate(review.reviewed_at)}.`;
    } else {
      const note = review.note ? ` Note: “${review.note}”` : "";
      summary.textContent = `Corrected to ${className(review.label)} by ${review.reviewer} on ` +
                            `${formatDate(review.reviewed_at)}.${note}`;
    }
    $("correct-label").value = review && review.action === "correct" ? review.label : "";
    $("correct-note").value = review && review.action === "correct" && review.note ? review.note : "";
    $("verify-button").disabled = Boolean(review && review.action === "verify");
  }

  async function fetchBlobUrl(path) {
    const blob = await (await api(path)).blob();
    const url = URL.createObjectURL(blob);
    state.caseUrls.push(url);
    return url;
  }

  async function loadCaseImages(item) {
    const seq = ++state.caseSeq;
    revokeCaseUrls();
    const image = $("case-image");
    const overlay = $("case-overlay");
    image.hidden = true;
    overlay.hidden = true;
    image.removeAttribute("src");
    overlay.removeAttribute("src");
    $("viewer-loading").hidden = false;
    $("viewer-frame").classList.remove("has-overlay", "image-only");
    $("overlay-controls").hidden = true;
    $("overlay-caption").hidden = true;
    $("overlay-message").hidden = true;

    const imagePath = `/cases/${encodeURIComponent(item.id)}/image`;
    const overlayPath = `/cases/${encodeURIComponent(item.id)}/overlay`;
    const [imageResult, overlayResult] = await Promise.allSettled([
      fetchBlobUrl(imagePath), fetchBlobUrl(overlayPath)]);
    if (seq !== state.caseSeq) return;  // another case was opened meanwhile
    $("viewer-loading").hidden = true;

    if (imageResult.status === "fulfilled") {
      image.src = imageResult.value;
      image.alt = `Uploaded image of case ${item.id}`;
      image.hidden = false;
    } else {
      report(imageResult.reason);
    }

    if (overlayResult.status === "fulfilled") {
      overlay.src = overlayResult.value;
      overlay.alt = `Grad-CAM heatmap for ${className(item.prediction)}`;
      overlay.hidden = false;
      $("viewer-frame").classList.add("has-overlay");
      applyOpacity();
      $("overlay-controls").hidden = false;
      const caption = $("overlay-caption");
      caption.textContent = `Heatmap: the regions that drove “${className(item.prediction)}”, ` +
                            "over the centre square the model analyses.";
      caption.hidden = false;
    } else {
      const reason = overlayResult.reason;
      const message = $("overlay-message");
      message.textContent = reason instanceof ApiError ? reason.message : String(reason);
      message.hidden = false;
      $("viewer-frame").classList.add("image-only");
      if (!(reason instanceof ApiError) || reason.status !== 409) report(reason);
    }
  }

  function applyOpacity() {
    const value = Number($("overlay-opacity").value);
    $("case-overlay").style.opacity = String(value / 100);
    $("overlay-opacity-value").textContent = `${value}%`;
  }

  // ---------------------------------------------------------------- review and erase

  async function submitReview(payload, done) {
    const item = state.current;
    if (!item) return;
    const buttons = [$("verify-button"), $("correct-button")];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const updated = await (await api(`/cases/${encodeURIComponent(item.id)}/review`,
                                       { method: "POST", json: payload })).json();
      if (state.current && state.current.id === updated.id) openCase(updated);
      showMessage(done, "success");
      loadHistory().catch(report);
    } catch (error) {
      report(error);
    } finally {
      $("correct-button").disabled = false;
      if (state.current) renderReview(state.current);
    }
  }

  function verifyCase() {
    submitReview({ action: "verify" }, "Prediction confirmed.");
  }

  function correctCase(event) {
    event.preventDefault();
    const label = $("correct-label").value;
    if (!label) {
      showMessage("Choose the correct class from the list before saving the correction.");
      $("correct-label").focus();
      return;
    }
    const payload = { action: "correct", label };
    const note = $("correct-note").value.trim();
    if (note) payload.note = note;
    submitReview(payload, `Correction saved: ${className(label)}.`);
  }

  function askErase() {
    const item = state.current;
    if (!item) return;
    const who = item.patient_ref ? ` for patient ${item.patient_ref}` : "";
    $("erase-text").textContent = `Case ${item.id}${who}: the image, heatmap, note and patient ` +
                                  "reference are deleted for good. This cannot be undone.";
    const dialog = $("erase-dialog");
    dialog.returnValue = "";
    dialog.showModal();
  }

  async function onEraseDialogClose() {
    const dialog = $("erase-dialog");
    const item = state.current;
    if (dialog.returnValue !== "erase" || !item) {
      $("erase-button").focus();
      return;
    }
    try {
      await api(`/cases/${encodeURIComponent(item.id)}`, { method: "DELETE" });
      if (state.current && state.current.id === item.id) closeCase();
      showMessage("Case erased.", "success");
      await loadHistory();
      $("upload-title").scrollIntoView({ block: "nearest" });
    } catch (error) {
      report(error);
    }
  }

  // ---------------------------------------------------------------- history

  async function loadHistory(page = state.historyPage) {
    const seq = ++state.historySeq;
    const params = new URLSearchParams({ page: String(page), per_page: String(PER_PAGE) });
    if (state.historyStatus) params.set("status", state.historyStatus);
    const data = await (await api(`/cases?${params}`)).json();
    if (seq !== state.historySeq) return;
    const pages = Math.max(1, Math.ceil(data.total / data.per_page));
    if (data.items.length === 0 && data.total > 0 && page > 1) {
      await loadHistory(Math.min(page - 1, pages));
      return;
    }
    state.historyPage = data.page;
    renderHistory(data, pages);
  }

  function renderHistory(data, pages) {
    const list = $("history-list");
    list.replaceChildren(...data.items.map((item) => {
      const top = (item.probabilities || []).find((p) => p.code === item.prediction);
      const corrected = item.review && item.review.action === "correct"
        ? `→ ${className(item.review.label)}` : null;
      const button = el("button", {
        type: "button", className: "history-row", "data-testid": "history-row",
        dataset: { caseId: item.id, status: item.status },
      },
      el("span", { className: "history-main" },
         item.lesion_image === false
           ? el("span", { className: "history-pred" }, "Not a lesion image")
           : el("span", { className: "history-pred" }, top ? top.name : className(item.prediction)),
         top && item.lesion_image !== false
           ? el("span", { className: "history-pct" }, percent(top.probability)) : null,
         item.malignant ? el("span", { className: "tag-malignant" }, "malignant") : null),
      el("span", { className: "history-sub" },
         ...[formatDate(item.created_at), item.patient_ref, item.body_site]
           .filter(Boolean).map((part) => el("span", { className: "history-part" }, part)),
         corrected ? el("span", { className: "history-corrected" }, corrected) : null),
      el("span", { className: `status-badge status-${item.status}`, "data-testid": "history-status-badge" },
         STATUS_LABELS[item.status] || item.status));
      button.addEventListener("click", () => openFromHistory(item.id));
      return el("li", {}, button);
    }));
    $("history-empty").hidden = data.items.length > 0;
    $("history-empty").textContent = state.historyStatus
      ? `No ${STATUS_LABELS[state.historyStatus].toLowerCase()} cases.` : "No cases yet.";
    $("history-info").textContent = data.total === 0 ? ""
      : `Page ${data.page} of ${pages} · ${data.total} case${data.total === 1 ? "" : "s"}`;
    $("history-pager").hidden = data.page <= 1 && pages <= 1;
    $("history-prev").disabled = data.page <= 1;
    $("history-next").disabled = data.page >= pages;
    markOpenRow();
  }

  function markOpenRow() {
    const openId = state.current ? state.current.id : null;
    for (const row of document.querySelectorAll(".history-row")) {
      if (row.dataset.caseId === openId) row.setAttribute("aria-current", "true");
      else row.removeAttribute("aria-current");
    }
  }

  async function openFromHistory(id) {
    try {
      const item = await (await api(`/cases/${encodeURIComponent(id)}`)).json();
      openCase(item, { focus: true });
    } catch (error) {
      report(error);
      if (error instanceof ApiError && error.status === 404) loadHistory().catch(report);
    }
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    $("signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) {
        showMessage("Enter your access token to sign in.");
        $("token-input").focus();
        return;
      }
      const button = $("signin-button");
      button.disabled = true;
      try {
        await signIn(token);
        clearMessage();
      } catch (error) {
        report(error);
      } finally {
        button.disabled = false;
      }
    });
    $("signout-button").addEventListener("click", () => {
      signOut();
      showMessage("Signed out.", "info");
    });

    $("choose-file-button").addEventListener("click", () => $("file-input").click());
    $("camera-button").addEventListener("click", () => $("camera-input").click());
    for (const id of ["file-input", "camera-input"]) {
      $(id).addEventListener("change", (event) => choosePendingFile(event.target.files[0]));
    }
    $("clear-file-button").addEventListener("click", clearPendingFile);
    $("selected-preview").addEventListener("error", () => { $("selected-preview").hidden = true; });
    $("upload-form").addEventListener("submit", uploadCase);
    setUpDropzone();

    $("overlay-opacity").addEventListener("input", applyOpacity);
    $("verify-button").addEventListener("click", verifyCase);
    $("correct-form").addEventListener("submit", correctCase);
    $("erase-button").addEventListener("click", askErase);
    $("erase-dialog").addEventListener("close", onEraseDialogClose);

    $("history-status").addEventListener("change", (event) => {
      state.historyStatus = event.target.value;
      loadHistory(1).catch(report);
    });
    $("history-prev").addEventListener("click", () => loadHistory(state.historyPage - 1).catch(report));
    $("history-next").addEventListener("click", () => loadHistory(state.historyPage + 1).catch(report));

    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      signIn(saved).catch((error) => {
        report(error);
        $("token-input").focus();
      });
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
