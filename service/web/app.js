// ntkcompute's read-only web page: the key's datasets, kernel jobs with live progress (their
// Server-Sent Events streams), a job's heatmap and spectrum, a solve's metrics and learning
// curves. Everything comes from the REST API with the key entered once (session storage).
"use strict";

const KEY = "ntk-api-key";
const streams = new Map();   // job id -> AbortController of its event stream
let selectedJob = null;
let selectedSolve = null;

const $ = (sel) => document.querySelector(sel);

function key() { return sessionStorage.getItem(KEY); }

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${key()}` } });
  if (r.status === 401) { signOut("the key was refused"); throw new Error("401"); }
  if (!r.ok) {
    const p = await r.json().catch(() => ({ detail: r.statusText }));
    throw new Error(`${r.status}: ${p.detail}`);
  }
  return { body: await r.json(), headers: r.headers };
}

// the last `n` rows of a list (its pages are oldest first)
async function newest(path, n = 50) {
  const first = await api(`${path}?limit=${n}`);
  const total = Number(first.headers.get("X-Total-Count") || first.body.length);
  if (total <= n) return first.body;
  return (await api(`${path}?limit=${n}&offset=${total - n}`)).body;
}

function when(iso) { return iso ? iso.replace("T", " ").slice(0, 19) : "–"; }
function num(v, digits = 4) {
  if (v == null) return "–";
  return Number.isInteger(v) ? String(v) : Number(v).toPrecision(digits);
}

function cell(row, cls, text) {
  const td = row.querySelector(`.${cls}`);
  if (td.textContent !== String(text)) td.textContent = text;
}

// jobs -------------------------------------------------------------------------------------
function jobRow(job) {
  let row = document.querySelector(`#jobs tr[data-id="${job.id}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.id = job.id;
    row.innerHTML = `<td class="id"></td><td class="status"></td><td class="tiles"></td>
      <td><div class="bar"><div></div></div></td><td class="eta"></td><td class="rate"></td>
      <td class="created"></td>`;
    row.addEventListener("click", () => showJob(job.id));
    $("#jobs tbody").prepend(row);
  }
  return row;
}

// `streamed`: a state from the job's event stream, kept in the row's history (what the
// page saw happen: data-statuses, data-tiles)
function paintJob(job, streamed = false) {
  const row = jobRow(job);
  if (streamed) {
    const seen = (row.dataset.statuses || "").split(",").filter(Boolean);
    if (seen[seen.length - 1] !== job.status) seen.push(job.status);
    row.dataset.statuses = seen.join(",");
    row.dataset.tiles = [...(row.dataset.tiles || "").split(",").filter(Boolean),
      job.tiles_done].join(",");
  }
  if (Number(row.dataset.revision ?? -1) > job.revision) return;  // older than shown
  row.dataset.revision = job.revision;
  cell(row, "id", job.id);
  cell(row, "status", job.status);
  row.querySelector(".status").className = `status status-${job.status}`;
  cell(row, "tiles", `${job.tiles_done}/${job.tiles_total}`);
  row.querySelector(".bar > div").style.width =
    `${job.tiles_total ? 100 * job.tiles_done / job.tiles_total : 0}%`;
  cell(row, "eta", job.eta_seconds == null ? "–" : `${Math.round(job.eta_seconds)} s`);
  if ("tiles_per_second" in job) cell(row, "rate", num(job.tiles_per_second, 3));  // events
  if (job.created) cell(row, "created", when(job.created));
  if (selectedJob === job.id) {
    $("#job-detail .status").textContent = job.status;
    if (job.status === "succeeded" && !$("#job-detail").dataset.drawn) drawJob(job.id);
  }
}

// one job's Server-Sent Events, read with fetch (EventSource cannot send the key)
async function follow(id) {
  if (streams.has(id)) return;
  const ctl = new AbortController();
  streams.set(id, ctl);
  try {
    // Last-Event-ID 0: every state the service still has, from the job's submission on
    const r = await fetch(`/v1/kernels/${id}/events`, {
      headers: { Authorization: `Bearer ${key()}`, "Last-Event-ID": "0" },
      signal: ctl.signal });
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = chunk.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trim()).join("\n");
        if (data) paintJob(JSON.parse(data), true);
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") console.warn("event stream", id, e);
  } finally {
    streams.delete(id);
  }
}

async function refreshJobs() {
  for (const job of await newest("/v1/kernels")) {
    paintJob(job);
    if (job.status === "queued" || job.status === "running") follow(job.id);
  }
}

async function showJob(id) {
  selectedJob = id;
  const d = $("#job-detail");
  d.hidden = false;
  delete d.dataset.drawn;
  const job = (await api(`/v1/kernels/${id}`)).body;
  d.querySelector(".id").textContent = id;
  d.querySelector(".status").textContent = job.status;
  d.querySelector(".meta").textContent =
    `${job.shape.train[0]} train rows${job.test ? `, ${job.shape.test[0]} test rows` : ""}; ` +
    `kernels ${job.kernels.join(", ")}; ${job.dtype}; tile ${job.tile}`;
  if (job.status === "succeeded") await drawJob(id);
}

async function drawJob(id) {
  const d = $("#job-detail");
  d.dataset.drawn = "1";
  const p = (await api(`/v1/kernels/${id}/preview?kind=ntk&size=96&block=512`)).body;
  d.querySelector(".block").textContent = `${p.block}×${p.block}`;
  heatmap($("#heatmap"), p.heatmap);
  spectrum($("#spectrum"), p.eigenvalues);
  $("#eigs").textContent = p.eigenvalues.slice(0, 5).map((v) => v.toPrecision(6)).join(", ");
  d.dataset.ready = id;
}

function heatmap(canvas, m) {
  const ctx = canvas.getContext("2d");
  const n = m.length;
  const flat = m.flat();
  const lo = Math.min(...flat), hi = Math.max(...flat);
  const img = ctx.createImageData(n, n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const t = hi > lo ? (m[i][j] - lo) / (hi - lo) : 0.5;  // viridis-like ramp
      const k = 4 * (i * n + j);
      img.data[k] = 68 + 185 * t * t;
      img.data[k + 1] = 1 + 230 * t;
      img.data[k + 2] = 84 + 60 * Math.sin(Math.PI * t) - 50 * t;
      img.data[k + 3] = 255;
    }
  }
  const tmp = document.createElement("canvas");
  tmp.width = tmp.height = n;
  tmp.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(tmp, 0, 0, canvas.width, canvas.height);
}

function axes(canvas) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#57606a";
  ctx.beginPath();
  ctx.moveTo(40, 10); ctx.lineTo(40, canvas.height - 25); ctx.lineTo(canvas.width - 10,
    canvas.height - 25);
  ctx.stroke();
  return { ctx, x0: 40, y0: canvas.height - 25, w: canvas.width - 50, h: canvas.height - 35 };
}

function spectrum(canvas, eig) {
  const { ctx, x0, y0, w, h } = axes(canvas);
  const pos = eig.filter((v) => v > 0);
  if (!pos.length) return;
  const lo = Math.log10(pos[pos.length - 1]), hi = Math.log10(pos[0]);
  ctx.fillStyle = "#0969da";
  pos.forEach((v, i) => {
    const x = x0 + (w * i) / Math.max(1, pos.length - 1);
    const y = y0 - (hi > lo ? (h * (Math.log10(v) - lo)) / (hi - lo) : h / 2);
    ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
  });
  ctx.fillStyle = "#1b1f24";
  ctx.fillText(pos[0].toPrecision(3), 2, 14);
  ctx.fillText(pos[pos.length - 1].toPrecision(2), 2, y0);
}

// solves -----------------------------------------------------------------------------------
function best(s) { return (s.metrics && s.metrics.best) || {}; }

async function refreshSolves() {
  for (const s of await newest("/v1/solves")) {
    let row = document.querySelector(`#solves tr[data-id="${s.id}"]`);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.id = s.id;
      row.innerHTML = `<td class="id"></td><td class="kernel"></td><td class="status"></td>
        <td class="lambda"></td><td class="accuracy"></td><td class="mse"></td>
        <td class="created"></td>`;
      row.addEventListener("click", () => showSolve(s.id));
      $("#solves tbody").prepend(row);
    }
    const b = best(s);
    cell(row, "id", s.id); cell(row, "kernel", s.kernel); cell(row, "status", s.status);
    cell(row, "lambda", num(b.lambda, 3)); cell(row, "accuracy", num(b.accuracy));
    cell(row, "mse", num(b.mse)); cell(row, "created", when(s.created));
  }
}

async function showSolve(id) {
  selectedSolve = id;
  const s = (await api(`/v1/solves/${id}`)).body;
  const d = $("#solve-detail");
  d.hidden = false;
  d.querySelector(".id").textContent = id;
  d.querySelector(".status").textContent = s.status;
  const body = $("#metrics tbody");
  body.innerHTML = "";
  for (const m of (s.metrics && s.metrics.per_lambda) || []) {
    const tr = document.createElement("tr");
    tr.innerHTML = [m.lambda, m.iterations, m.seconds, m.accuracy, m.mse]
      .map((v) => `<td>${num(v)}</td>`).join("");
    body.append(tr);
  }
  curves($("#curves"), s.analyses || {});
}

function curves(canvas, analyses) {
  const { ctx, x0, y0, w, h } = axes(canvas);
  const gd = analyses.gd || [];
  const pts = gd.map((g) => [g.t, g.accuracy ?? g.mse]).filter((p) => p[1] != null);
  if (pts.length < 2) {
    ctx.fillStyle = "#57606a";
    ctx.fillText("no gradient-flow times in this solve (analyses.times)", x0 + 10, y0 - h / 2);
    return;
  }
  const ts = pts.map((p) => Math.log10(Math.max(p[0], 1e-12)));
  const vs = pts.map((p) => p[1]);
  const [t0, t1] = [Math.min(...ts), Math.max(...ts)];
  const [v0, v1] = [Math.min(...vs), Math.max(...vs)];
  ctx.strokeStyle = "#cf222e";
  ctx.beginPath();
  pts.forEach((_, i) => {
    const x = x0 + (t1 > t0 ? (w * (ts[i] - t0)) / (t1 - t0) : 0);
    const y = y0 - (v1 > v0 ? (h * (vs[i] - v0)) / (v1 - v0) : h / 2);
    if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
  });
  ctx.stroke();
}

// datasets, cluster ------------------------------------------------------------------------
async function refreshDatasets() {
  const body = $("#datasets tbody");
  for (const d of await newest("/v1/datasets")) {
    if (body.querySelector(`tr[data-id="${d.id}"]`)) continue;
    const tr = document.createElement("tr");
    tr.dataset.id = d.id;
    tr.innerHTML = `<td>${d.id}</td><td>${d.n}</td><td>${d.shape.join("×")}</td>
      <td>${d.dtype}</td><td>${when(d.created)}</td>`;
    body.prepend(tr);
  }
}

async function refreshCluster() {
  const r = await fetch("/readyz");
  const h = await r.json();
  $("#cluster").textContent = `${h.status}: ${h.workers ?? "?"} workers`;
  $("#cluster").dataset.workers = h.workers ?? "";
  if (h.dashboard_url) {
    $("#dashboard").href = h.dashboard_url;
    $("#dashboard").hidden = false;
  }
}

async function refreshAll() {
  if (!key()) return;
  try {
    await Promise.all([refreshJobs(), refreshSolves(), refreshDatasets(), refreshCluster()]);
    document.body.dataset.refreshed = String(Date.now());
  } catch (e) {
    console.warn(e);
  }
}

// sign in / out ----------------------------------------------------------------------------
function signOut(why) {
  sessionStorage.removeItem(KEY);
  document.cookie = "ntk_key=; path=/dashboard; SameSite=Strict; max-age=0";
  for (const c of streams.values()) c.abort();
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = why || "";
}

async function signIn(k) {
  const r = await fetch("/v1/limits", { headers: { Authorization: `Bearer ${k}` } });
  if (!r.ok) {
    $("#login-error").textContent = r.status === 401 ? "unknown, revoked or expired key"
      : `the service answered ${r.status}`;
    return;
  }
  sessionStorage.setItem(KEY, k);
  // the Dask dashboard (proxied at /dashboard) is opened by the browser itself: the key goes
  // as a same-site session cookie, to that path only
  document.cookie = `ntk_key=${encodeURIComponent(k)}; path=/dashboard; SameSite=Strict`;
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  await refreshAll();
}

$("#login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn($("#key").value.trim());
});
$("#logout").addEventListener("click", () => signOut(""));
if (key()) signIn(key());
// new jobs, solves and datasets appear within 2 s; a job's progress comes from its stream
setInterval(refreshAll, 2000);
