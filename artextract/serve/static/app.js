// artextract visual search page: vanilla JS over the JSON API (/docs has the schema).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { query: null, faceIdx: null, offset: 0, limit: 12, pose: "off", copies: false };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

function showError(msg) {
  const e = $("error");
  e.textContent = msg; e.hidden = !msg;
}

function status(msg) { $("status").textContent = msg || ""; }

async function api(url, opts) {
  const r = await fetch(url, opts);
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
    throw new Error(`${detail || r.statusText} (HTTP ${r.status})`);
  }
  return body;
}

async function loadInfo() {
  try {
    const i = await api("/api/info");
    $("index-info").textContent = `index version ${i.version}: ${i.vectors} vectors of ${i.images} paintings`;
    state.limit = i.k;
    const sel = $("page-size");
    if (![...sel.options].some((o) => +o.value === i.k)) sel.append(el("option", {}, String(i.k)));
    sel.value = String(i.k);
    if (!i.reports.length) $("reports-link").title = "no reports were found for this index";
  } catch (err) { showError(`cannot load the index: ${err.message}`); }
}

async function findPaintings(q) {
  try {
    const res = await api(`/api/paintings?q=${encodeURIComponent(q)}&limit=50`);
    const ul = $("paintings");
    ul.replaceChildren();
    for (const p of res.items) {
      const label = [p.title, p.artist, p.date].filter(Boolean).join(" · ");
      ul.append(el("li", {}, el("button", { type: "button", onclick: () => openPainting(p.image_id) },
        el("img", { src: p.image_url, alt: "", loading: "lazy" }), label)));
    }
    if (!res.items.length) ul.append(el("li", {}, "no painting matches"));
  } catch (err) { showError(err.message); }
}

function drawQuery(q) {
  $("query").hidden = false;
  $("query-caption").textContent = q.caption;
  const img = $("query-img");
  img.alt = q.caption;
  const canvas = $("canvas");
  const place = () => {  // idempotent: runs on load and, for a cached image, right away
    canvas.querySelectorAll(".face-box").forEach((b) => b.remove());
    const w = q.width || img.naturalWidth, h = q.height || img.naturalHeight;
    q.faces.forEach((f, n) => {
      if (!f.box) return;
      const [x1, y1, x2, y2] = f.box;
      const b = el("button", {
        type: "button", class: "face-box", "data-face": f.face_idx,
        "aria-label": `face ${n + 1}: find similar faces`, title: `face ${n + 1}`,
        onclick: () => search(f.face_idx),
      });
      Object.assign(b.style, { left: `${100 * x1 / w}%`, top: `${100 * y1 / h}%`,
        width: `${100 * (x2 - x1) / w}%`, height: `${100 * (y2 - y1) / h}%` });
      canvas.append(b);
    });
  };
  img.onload = place;
  img.src = q.image_url;
  if (img.complete && img.naturalWidth) place();
}

async function openPainting(imageId) {
  showError("");
  try {
    const p = await api(`/api/paintings/${encodeURIComponent(imageId)}`);
    state.query = { kind: "image", image_id: p.image_id, width: p.width, height: p.height, faces: p.faces,
      image_url: p.image_url, caption: [p.title, p.artist, p.date].filter(Boolean).join(" · ") };
    drawQuery(state.query);
    status(`${p.faces.length} face(s) detected`);
  } catch (err) { showError(err.message); }
}

async function upload(file) {
  showError("");
  if (!file) { showError("choose an image file first"); return; }
  status("uploading and detecting faces…");
  const form = new FormData();
  form.append("file", file);
  try {
    const u = await api("/api/upload", { method: "POST", body: form });
    state.query = { kind: "upload", upload_id: u.upload_id, width: u.width, height: u.height, faces: u.faces,
      image_url: u.image_url, caption: `uploaded: ${file.name}` };
    drawQuery(state.query);
    status(u.note || `${u.faces.length} face(s) detected: click one`);
  } catch (err) {
    status("");
    showError(`upload rejected: ${err.message}`);
  }
}

function search(faceIdx) {
  state.faceIdx = faceIdx; state.offset = 0;
  document.querySelectorAll(".face-box").forEach((b) => b.classList.toggle("active", +b.dataset.face === faceIdx));
  return runSearch();
}

async function runSearch() {
  const q = state.query;
  if (!q) return;
  const who = q.kind === "upload" ? `upload=${q.upload_id}` : `image_id=${encodeURIComponent(q.image_id)}`;
  const url = `/api/search?${who}&face_idx=${state.faceIdx}&offset=${state.offset}&limit=${state.limit}&pose=${state.copies ? "off" : state.pose}&copies=${state.copies}`;
  showError("");
  try {
    const res = await api(url);
    renderResults(res);
  } catch (err) { showError(err.message); }
}

function renderResults(res) {
  $("results-section").hidden = false;
  const ol = $("results");
  ol.replaceChildren();
  for (const h of res.hits) {
    const what = h.face_idx >= 0 ? `face ${h.face_idx + 1} in` : "painting";
    const alt = `${what} ${h.title}${h.artist ? " by " + h.artist : ""}`;
    const li = el("li", { class: "hit", "data-image": h.image_id, "data-face": h.face_idx },
      el("img", { src: h.thumb_url, alt, loading: "lazy" }),
      el("div", { class: "title" }, `#${h.rank} ${h.title}`),
      el("div", {}, h.artist || "unknown artist"),
      el("div", {}, h.date || ""),
      el("div", { class: "score" }, `score ${h.score.toFixed(3)}` +
        (h.pose_distance_deg != null ? ` · pose Δ ${h.pose_distance_deg}°` : "") +
        (h.inliers != null ? ` · ${h.inliers} matching points${h.verified ? " (same picture)" : ""}` : "")));
    const links = el("div", {});
    links.append(el("button", { type: "button", onclick: () => openPainting(h.image_id) }, "open"));
    if (h.iiif) links.append(" ", el("a", { href: h.iiif, target: "_blank", rel: "noopener" }, "IIIF image"));
    li.append(links);
    ol.append(li);
  }
  const from = res.hits.length ? res.offset + 1 : 0;
  $("page-info").textContent = `results ${from}–${res.offset + res.hits.length}`;
  $("prev").disabled = res.offset === 0;
  $("next").disabled = !res.has_more;
  $("results-note").textContent = res.pose_note || (res.hits.length ? "" : "no results (try another pose setting)");
}

$("find-form").addEventListener("submit", (e) => { e.preventDefault(); findPaintings($("find-input").value); });
$("upload-form").addEventListener("submit", (e) => { e.preventDefault(); upload($("upload-input").files[0]); });
$("whole-button").addEventListener("click", () => search(-1));
$("pose").addEventListener("change", (e) => { state.pose = e.target.value; state.offset = 0; runSearch(); });
$("copies").addEventListener("change", (e) => {
  state.copies = e.target.checked; $("pose").disabled = state.copies; state.offset = 0; runSearch();
});
$("page-size").addEventListener("change", (e) => { state.limit = +e.target.value; state.offset = 0; runSearch(); });
$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); runSearch(); });
$("next").addEventListener("click", () => { state.offset += state.limit; runSearch(); });

loadInfo();
findPaintings("");
