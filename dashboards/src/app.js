// The meterstream dashboards: a single page, routed by the URL's hash, talking to the server's
// API with the credentials the user logs in with (kept in sessionStorage for the tab's life).
// Design: docs/dashboards.md.

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const state = { auth: sessionStorage.getItem("meterstream.auth") };
// What the pages drew, for the browser tests and for debugging.
window.meterstream = { charts: {} };

const esc = (s) =>
  String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const enc = (path) => path.split("/").map(encodeURIComponent).join("/");

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.auth) headers.Authorization = state.auth;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    ...options,
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const text = await r.text();
  const body = text ? JSON.parse(text) : null;
  if (r.status === 401) {
    logout();
    throw new ApiError(401, "Your session has ended; log in again.");
  }
  if (!r.ok) throw new ApiError(r.status, body?.error?.message || `${r.status}`);
  return body;
}

function logout() {
  state.auth = null;
  sessionStorage.removeItem("meterstream.auth");
  location.hash = "#/login";
}

document.getElementById("logout").addEventListener("click", logout);

function fmtTime(iso, tz) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { timeZone: tz || undefined, hour12: false });
}

function fmtValue(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3).replace(/\.?0+$/, "");
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// ---- Live updates: Server-Sent Events read through fetch (EventSource cannot send the
// Authorization header). One subscription per page; changing page ends it. ------------------

let live = null;
function subscribe(query, handlers) {
  live?.abort();
  const ctl = new AbortController();
  live = ctl;
  (async () => {
    try {
      const r = await fetch(`/ws/v1/events?${query}`, { headers: { Authorization: state.auth }, signal: ctl.signal });
      if (!r.ok || !r.body) return;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let event = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) event = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data && handlers[event]) handlers[event](JSON.parse(data));
        }
      }
    } catch (e) {
      if (e.name === "AbortError") return;
    }
    // The connection ended (server restart, network): try again in 5 s unless the page changed.
    if (!ctl.signal.aborted) setTimeout(() => live === ctl && subscribe(query, handlers), 5000);
  })();
}

function debounce(f, ms) {
  let t = null;
  return () => {
    if (t === null) t = setTimeout(() => ((t = null), f()), ms);
  };
}

// ---- Login ----------------------------------------------------------------------------------

function loginPage() {
  nav.hidden = true;
  main.innerHTML = `
    <h1>Log in</h1>
    <form class="login" id="login">
      <label>User name <input name="user" autocomplete="username"></label>
      <label>Password <input name="password" type="password" autocomplete="current-password"></label>
      <p class="muted">or</p>
      <label>API key <input name="key" autocomplete="off" placeholder="msk_…"></label>
      <button class="primary" type="submit">Log in</button>
      <p class="error" id="login-error" role="alert"></p>
    </form>`;
  const form = document.getElementById("login");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const key = f.get("key").trim();
    state.auth = key ? `Bearer ${key}` : `Basic ${btoa(`${f.get("user")}:${f.get("password")}`)}`;
    try {
      await api("/ws/v1/streams/folders?size=1");
      sessionStorage.setItem("meterstream.auth", state.auth);
      location.hash = "#/streams/";
    } catch (err) {
      state.auth = null;
      document.getElementById("login-error").textContent =
        err.status === 401 ? "Those credentials were not accepted." : err.message;
    }
  });
  form.querySelector("input").focus();
}

// ---- Streams --------------------------------------------------------------------------------

async function streamsPage(prefix) {
  prefix = prefix.replace(/\/+$/, "");
  const crumbs = ['<a href="#/streams/">all</a>'];
  const segs = prefix.split("/").filter(Boolean);
  segs.forEach((seg, i) => {
    crumbs.push(`<a href="#/streams/${enc(segs.slice(0, i + 1).join("/"))}">${esc(seg)}</a>`);
  });
  main.innerHTML = `<h1>Data streams</h1>
    <form class="bar" id="search" role="search"><label>Find <input name="q" placeholder="gw1/ or */pst04/voltage_l1" size="28"></label>
      <button type="submit">Search</button></form>
    <p class="crumbs">${crumbs.join(" / ")}</p><div id="list">Loading…</div>`;
  document.getElementById("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new FormData(e.target).get("q").trim();
    if (q) location.hash = `#/search?q=${encodeURIComponent(q)}`;
  });
  const folders = [];
  const streams = [];
  let cursor = "";
  for (let i = 0; i < 100; i++) {
    const page = await api(`/ws/v1/streams/folders${prefix ? `/${enc(prefix)}` : ""}?size=1000${cursor}`);
    for (const c of page.list) (c.kind === "folder" ? folders : streams).push(c);
    if (!page.cursor) break;
    cursor = `&cursor=${encodeURIComponent(page.cursor)}`;
  }
  const tree = folders
    .map((f) => `<li><a class="folder" href="#/streams/${enc(f.path)}">${esc(f.name)}/</a> <span class="muted">${f.stream_count}</span></li>`)
    .join("");
  document.getElementById("list").innerHTML = `
    ${folders.length ? `<ul class="tree" aria-label="Folders">${tree}</ul>` : ""}
    ${streams.length ? streamTable(streams) : folders.length ? "" : '<p class="muted">No streams here.</p>'}`;
  followValues(streams);
}

function streamTable(streams) {
  const rows = streams
    .map(
      (s) => `<tr data-stream="${esc(s.id)}">
        <td><a class="stream" href="#/stream/${enc(s.id)}">${esc(s.name || s.id)}</a></td>
        <td class="wide time">${esc(fmtTime(s.timestamp))}</td>
        <td class="num value">${esc(fmtValue(s.value))}</td>
        <td>${esc(s.units || "")}</td>
        <td class="wide">${esc(s.type)}</td></tr>`,
    )
    .join("");
  return `<div class="table-wrap"><table><thead><tr><th>Stream</th><th class="wide">Last updated</th>
    <th>Current value</th><th>Units</th><th class="wide">Data type</th></tr></thead><tbody>${rows}</tbody></table></div>`;
}

// The values of the streams on screen follow new points.
function followValues(streams) {
  if (streams.length) {
    const rowsById = new Map([...main.querySelectorAll("tr[data-stream]")].map((r) => [r.dataset.stream, r]));
    subscribe(`streams=${encodeURIComponent(streams.slice(0, 500).map((s) => s.id).join(","))}`, {
      points: (e) => {
        const row = rowsById.get(e.stream_id);
        const last = e.points.reduce((a, p) => (p[0] > a[0] ? p : a), e.points[0]);
        const shown = Number(row?.dataset.ts || 0);
        if (!row || last[0] < shown) return;
        row.dataset.ts = last[0];
        row.querySelector(".value").textContent = fmtValue(last[1]);
        row.querySelector(".time").textContent = fmtTime(new Date(last[0]).toISOString());
      },
    });
  }
}

// A pattern (`*` = one segment) as a test of paths.
function patternTest(pattern) {
  const segs = pattern.split("/");
  return (path) => {
    const p = path.split("/");
    return p.length === segs.length && segs.every((s, i) => s === "*" || s === p[i]);
  };
}

async function searchPage(params) {
  const q = params.get("q") || "";
  main.innerHTML = `<h1>Streams matching ${esc(q)}</h1><div id="list">Loading…</div>`;
  // The part before the first `*` narrows the listing on the server; the rest is matched here.
  const prefix = q.split("*")[0];
  const test = q.includes("*") ? patternTest(q) : () => true;
  const query = encodeURIComponent(`id startsWith '${prefix.replaceAll("'", "''")}'`);
  const found = [];
  let cursor = "";
  for (let i = 0; i < 20 && found.length < 1000; i++) {
    const page = await api(`/ws/v1/streams/inventory?size=1000&query=${query}${cursor}`);
    found.push(...page.list.filter((x) => test(x.id)));
    if (!page.cursor) break;
    cursor = `&cursor=${encodeURIComponent(page.cursor)}`;
  }
  document.getElementById("list").innerHTML = found.length
    ? `<p class="muted">${found.length}${found.length >= 1000 ? "+" : ""} streams.</p>${streamTable(found)}`
    : '<p class="muted">No streams match.</p>';
  followValues(found);
}

// ---- One stream: chart over a period, raw points ---------------------------------------------

const PERIODS = { hour: 3600e3, day: 86400e3, week: 7 * 86400e3, month: 30 * 86400e3, year: 365 * 86400e3 };
const INTERVALS = [
  ["1m", 60e3],
  ["5m", 300e3],
  ["15m", 900e3],
  ["half", 1800e3],
  ["hour", 3600e3],
  ["day", 86400e3],
  ["week", 7 * 86400e3],
  ["month", 30 * 86400e3],
];

// The finest interval that gives at most one value per two pixels of the chart.
function intervalFor(spanMs, widthPx) {
  const most = Math.max(10, Math.floor(widthPx / 2));
  for (const [name, ms] of INTERVALS) if (spanMs / ms <= most) return name;
  return "month";
}

let uplotLoaded = null;
function loadUplot() {
  if (!uplotLoaded) {
    uplotLoaded = new Promise((resolve, reject) => {
      const css = document.createElement("link");
      css.rel = "stylesheet";
      css.href = "/assets/vendor/uPlot.min.css";
      document.head.appendChild(css);
      const s = document.createElement("script");
      s.src = "/assets/vendor/uPlot.iife.min.js";
      s.onload = () => resolve(window.uPlot);
      s.onerror = reject;
      document.head.appendChild(s);
    });
  }
  return uplotLoaded;
}

async function allPages(url) {
  const out = [];
  let cursor = "";
  for (let i = 0; i < 1000; i++) {
    const page = await api(url + cursor);
    out.push(...page.list);
    if (!page.cursor) return out;
    cursor = `&cursor=${encodeURIComponent(page.cursor)}`;
  }
  return out;
}

async function streamPage(path, params) {
  const info = await api(`/ws/v1/streams/inventory/${enc(path)}`);
  const period = params.get("period") || "day";
  const tz = params.get("tz") || Intl.DateTimeFormat().resolvedOptions().timeZone;
  const end = Number(params.get("end")) || Date.now();
  const start = Number(params.get("start")) || end - (PERIODS[period] || PERIODS.day);
  const numeric = ["DOUBLE", "FLOAT", "INTEGER", "LONG"].includes(info.type);
  const buttons = Object.keys(PERIODS)
    .map((p) => `<button type="button" data-period="${p}" aria-pressed="${p === period && !params.get("start")}">${p}</button>`)
    .join("");
  main.innerHTML = `
    <h1>${esc(path)}</h1>
    <p class="muted">${esc(info.type)}${info.units ? `, ${esc(info.units)}` : ""}${info.description ? ` — ${esc(info.description)}` : ""}.
      Current value <strong id="current">${esc(fmtValue(info.value))}</strong> at <span id="current-time">${esc(fmtTime(info.timestamp, tz))}</span>.</p>
    <div class="bar" role="group" aria-label="Period">${buttons}
      <button type="button" id="earlier" aria-label="Earlier">←</button><button type="button" id="later" aria-label="Later">→</button></div>
    <div class="bar"><label>From <input id="from" type="datetime-local"></label>
      <label>To <input id="to" type="datetime-local"></label><button type="button" id="range">Show</button>
      <label>Time zone <input id="tz" value="${esc(tz)}" size="16"></label></div>
    ${numeric ? `<div class="bar"><label>Overlay <input id="overlay" value="${esc(params.get("overlay") || "")}" placeholder="other stream ids, comma-separated" size="36"></label></div>` : ""}
    ${numeric ? '<div id="chart" role="img" aria-label="Chart"></div><p class="muted" id="chart-note"></p>' : ""}
    <h2>Raw points</h2>
    <p><a id="csv" href="#">Download CSV</a></p>
    <div id="raw"></div>`;
  const go = (q) => {
    location.hash = `#/stream/${enc(path)}?${new URLSearchParams({ ...Object.fromEntries(params), ...q })}`;
  };
  for (const b of main.querySelectorAll("button[data-period]"))
    b.addEventListener("click", () => go({ period: b.dataset.period, start: "", end: "" }));
  document.getElementById("range").addEventListener("click", () => {
    const f = Date.parse(document.getElementById("from").value);
    const t = Date.parse(document.getElementById("to").value);
    if (f < t) go({ start: f, end: t });
  });
  document.getElementById("tz").addEventListener("change", (e) => go({ tz: e.target.value }));
  // Half a range earlier or later (the keyboard's way of panning).
  for (const [id, dir] of [["earlier", -1], ["later", 1]]) {
    document.getElementById(id).addEventListener("click", () => {
      const half = ((end - start) / 2) * dir;
      go({ start: Math.floor(start + half), end: Math.floor(end + half) });
    });
  }
  document.getElementById("overlay")?.addEventListener("change", (e) => go({ overlay: e.target.value.replaceAll(" ", "") }));
  const overlay = (params.get("overlay") || "").split(",").filter(Boolean).slice(0, 8);
  const range = `start_time=${Math.floor(start)}&end_time=${Math.floor(end)}`;
  document.getElementById("csv").addEventListener("click", async (e) => {
    e.preventDefault();
    const r = await fetch(`/ws/v1/streams/history/${enc(path)}?${range}&format=csv&size=100000`, {
      headers: { Authorization: state.auth },
    });
    const url = URL.createObjectURL(await r.blob());
    const a = Object.assign(document.createElement("a"), { href: url, download: `${path.replaceAll("/", "_")}.csv` });
    a.click();
    URL.revokeObjectURL(url);
  });
  rawTable(path, range, "", tz);
  if (numeric) await chart(path, start, end, tz, overlay);
  // New points: the current value at once; a chart of the recent past is drawn again, at most
  // every 5 s, over a period that ends now.
  const following = !params.get("end");
  let newest = Date.parse(info.timestamp || 0) || 0;
  const redraw = debounce(() => {
    const now = Date.now();
    if (numeric) chart(path, now - (PERIODS[period] || PERIODS.day), now, tz, overlay);
  }, 5000);
  subscribe(`streams=${encodeURIComponent(path)}`, {
    points: (e) => {
      for (const [ts, v] of e.points) {
        if (ts >= newest) {
          newest = ts;
          document.getElementById("current").textContent = fmtValue(v);
          document.getElementById("current-time").textContent = fmtTime(new Date(ts).toISOString(), tz);
        }
      }
      if (following) redraw();
    },
  });
}

async function rawTable(path, range, cursor, tz) {
  const page = await api(`/ws/v1/streams/history/${enc(path)}?${range}&order=desc&size=50${cursor}`);
  const rows = page.list
    .map((p) => `<tr><td>${esc(fmtTime(p.timestamp, tz))}</td><td class="num">${esc(fmtValue(p.value))}</td><td class="wide">${esc(p.quality ?? "")}</td></tr>`)
    .join("");
  const raw = document.getElementById("raw");
  raw.innerHTML = `<div class="table-wrap"><table><thead><tr><th>Time</th><th>Value</th><th class="wide">Quality</th></tr></thead>
    <tbody>${rows || '<tr><td colspan="3" class="muted">No points in this range.</td></tr>'}</tbody></table></div>
    ${page.cursor ? '<p><button type="button" id="older">Older points</button></p>' : ""}`;
  document.getElementById("older")?.addEventListener("click", () =>
    rawTable(path, range, `&cursor=${encodeURIComponent(page.cursor)}`, tz),
  );
}

const COLORS = ["#c2410c", "#15803d", "#7c3aed", "#be185d", "#0e7490", "#a16207", "#4d7c0f", "#1d4ed8"];

async function chart(path, start, end, tz, overlay = []) {
  const el = document.getElementById("chart");
  const interval = intervalFor(end - start, el.clientWidth || 800);
  const base = `/ws/v1/streams/rollups/${enc(path)}?interval=${interval}&start_time=${Math.floor(start)}&end_time=${Math.floor(end)}&timezone=${encodeURIComponent(tz)}&size=100000`;
  const others = (p) => base.replace(`/rollups/${enc(path)}?`, `/rollups/${enc(p)}?`) + "&method=average";
  const [avg, min, max, uPlot, ...extra] = await Promise.all([
    allPages(`${base}&method=average`),
    allPages(`${base}&method=min`),
    allPages(`${base}&method=max`),
    loadUplot(),
    ...overlay.map((p) => allPages(others(p)).catch(() => [])),
  ]);
  const ts = avg.map((p) => Date.parse(p.timestamp) / 1000);
  const byTs = (list) => new Map(list.map((p) => [p.timestamp, p.value]));
  const mins = byTs(min);
  const maxs = byTs(max);
  const data = [ts, avg.map((p) => p.value), avg.map((p) => mins.get(p.timestamp)), avg.map((p) => maxs.get(p.timestamp))];
  for (const list of extra) {
    const m = byTs(list);
    data.push(avg.map((p) => m.get(p.timestamp) ?? null));
  }
  window.meterstream.charts[path] = { url: `${base}&method=average`, interval, data };
  document.getElementById("chart-note").textContent = `${interval} averages with their minimum and maximum, ${ts.length} intervals.`;
  el.innerHTML = "";
  const opts = {
    width: el.clientWidth || 800,
    height: 300,
    tzDate: (t) => uPlot.tzDate(new Date(t * 1e3), tz),
    // The chart spans the period asked for, even where the data covers only part of it.
    scales: { x: { time: true, auto: false, min: start / 1000, max: end / 1000 } },
    cursor: { drag: { x: true, y: false } },
    series: [
      {},
      { label: "average", stroke: "#0b63c5", width: 1.5 },
      { label: "min", stroke: "#9bb8dd", width: 1 },
      { label: "max", stroke: "#9bb8dd", width: 1 },
      ...overlay.map((p, i) => ({ label: p, stroke: COLORS[i % COLORS.length], width: 1.5 })),
    ],
    bands: [{ series: [3, 2], fill: "rgba(11,99,197,0.12)" }],
    hooks: {
      // Dragging a range zooms into it: the page reloads the rollups for that range.
      setSelect: [
        (u) => {
          if (u.select.width < 5) return;
          const f = u.posToVal(u.select.left, "x") * 1000;
          const t = u.posToVal(u.select.left + u.select.width, "x") * 1000;
          location.hash = `#/stream/${enc(path)}?${new URLSearchParams({ start: Math.floor(f), end: Math.ceil(t), tz })}`;
        },
      ],
    },
  };
  const u = new uPlot(opts, data, el);
  window.meterstream.charts[path].plot = u;
  panByDragging(u, (f, t) => {
    location.hash = `#/stream/${enc(path)}?${new URLSearchParams({ start: Math.floor(f), end: Math.ceil(t), tz, overlay: overlay.join(",") })}`;
  });
}

// Dragging with Shift held moves the range sideways (plain dragging zooms into it); on release
// `go(from ms, to ms)` loads the new range.
function panByDragging(u, go) {
  let from = null;
  u.over.addEventListener("mousedown", (e) => {
    if (!e.shiftKey) return;
    e.stopPropagation();
    from = { x: e.clientX, min: u.scales.x.min, max: u.scales.x.max };
  }, true);
  let to = null;
  window.addEventListener("mousemove", (e) => {
    if (!from) return;
    const shift = ((e.clientX - from.x) / u.over.clientWidth) * (from.max - from.min);
    to = { min: from.min - shift, max: from.max - shift };
    u.setScale("x", to);
  });
  window.addEventListener("mouseup", () => {
    if (!from) return;
    from = null;
    if (to) go(to.min * 1000, to.max * 1000);
    to = null;
  });
}

// ---- Alarms ---------------------------------------------------------------------------------

async function alarmsPage() {
  main.innerHTML = `<h1>Alarms</h1><div id="statuses">Loading…</div>
    <p class="error" id="alarm-error" role="alert"></p>
    <h2>Rules</h2><div id="rules">Loading…</div>`;
  renderRules();
  await renderAlarms();
  subscribe("alarms=true", { alarm: debounce(renderAlarms, 300) });
}

const OPS = ["<", "<=", ">", ">=", "=", "<>"];

// The alert rules under the statuses: enable, disable, edit, create (DataPoint conditions in a
// form; any rule as JSON).
async function renderRules() {
  const rules = await allPages("/ws/v1/alerts/inventory?size=500");
  const rows = rules
    .map(
      (a) => `<tr data-alert="${esc(a.id)}"><td>${esc(a.name)}</td><td class="sev-${esc(a.severity)}">${esc(a.severity)}</td>
      <td>${esc(a.scope.type)} ${esc(a.scope.value)}</td><td class="wide">${esc(a.rule.type)}</td>
      <td>${a.enabled ? "enabled" : "disabled"}</td>
      <td><button type="button" class="toggle">${a.enabled ? "Disable" : "Enable"}</button>
        <button type="button" class="edit">Edit</button>
        <a href="#/alarms/history/${encodeURIComponent(a.id)}">History</a></td></tr>`,
    )
    .join("");
  const opt = (v) => OPS.map((o) => `<option ${o === v ? "selected" : ""}>${esc(o)}</option>`).join("");
  document.getElementById("rules").innerHTML = `
    <div class="table-wrap"><table><thead><tr><th>Rule</th><th>Severity</th><th>Scope</th><th class="wide">Type</th>
      <th>State</th><th></th></tr></thead><tbody>${rows || '<tr><td colspan="6" class="muted">No rules.</td></tr>'}</tbody></table></div>
    <h3 id="rule-title">New rule</h3>
    <form id="rule" class="login">
      <input type="hidden" name="id">
      <label>Name <input name="name" required></label>
      <label>Severity <select name="severity"><option>critical</option><option selected>major</option><option>minor</option><option>warning</option></select></label>
      <label>Streams (pattern) <input name="pattern" placeholder="*/*/voltage_l1" required></label>
      <fieldset><legend>Fires when</legend><select name="fire_op" aria-label="Fire operator">${opt("<")}</select>
        <input name="fire_threshold" type="number" step="any" value="207" aria-label="Fire threshold">
        for <input name="fire_s" type="number" min="0" value="60" aria-label="Fire duration, seconds" size="5"> s</fieldset>
      <fieldset><legend>Resets when</legend><select name="reset_op" aria-label="Reset operator">${opt(">")}</select>
        <input name="reset_threshold" type="number" step="any" value="210" aria-label="Reset threshold">
        for <input name="reset_s" type="number" min="0" value="300" aria-label="Reset duration, seconds" size="5"> s</fieldset>
      <button class="primary" type="submit">Save</button>
      <p class="error" id="rule-error" role="alert"></p>
    </form>`;
  const byId = new Map(rules.map((a) => [a.id, a]));
  const put = (a) =>
    api(`/ws/v1/alerts/inventory/${encodeURIComponent(a.id)}`, {
      method: "PUT",
      body: { name: a.name, description: a.description, enabled: a.enabled, severity: a.severity, scope: a.scope, rule: a.rule },
    });
  for (const b of main.querySelectorAll("#rules button.toggle")) {
    b.addEventListener("click", async () => {
      const a = byId.get(b.closest("tr").dataset.alert);
      await put({ ...a, enabled: !a.enabled });
      renderRules();
    });
  }
  const form = document.getElementById("rule");
  for (const b of main.querySelectorAll("#rules button.edit")) {
    b.addEventListener("click", () => {
      const a = byId.get(b.closest("tr").dataset.alert);
      if (a.rule.type !== "DataPoint condition" || a.scope.type !== "Resource") {
        document.getElementById("rule-error").textContent = "Only DataPoint conditions on a pattern are edited here; use the API for the others.";
        return;
      }
      document.getElementById("rule-title").textContent = `Edit ${a.name}`;
      const set = (n, v) => (form.elements[n].value = v);
      set("id", a.id);
      set("name", a.name);
      set("severity", a.severity);
      set("pattern", a.scope.value);
      set("fire_op", a.rule.fire.op);
      set("fire_threshold", a.rule.fire.threshold);
      set("fire_s", a.rule.fire.duration_ms / 1000);
      set("reset_op", a.rule.reset.op);
      set("reset_threshold", a.rule.reset.threshold);
      set("reset_s", a.rule.reset.duration_ms / 1000);
      form.elements.name.focus();
    });
  }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const held = (k) => ({ op: f.get(`${k}_op`), threshold: Number(f.get(`${k}_threshold`)), duration_ms: Math.round(Number(f.get(`${k}_s`)) * 1000) });
    const body = {
      name: f.get("name"),
      severity: f.get("severity"),
      scope: { type: "Resource", value: f.get("pattern") },
      rule: { type: "DataPoint condition", fire: held("fire"), reset: held("reset") },
    };
    try {
      const id = f.get("id");
      if (id) await put({ ...byId.get(id), ...body });
      else await api("/ws/v1/alerts/inventory", { method: "POST", body });
      renderRules();
    } catch (err) {
      document.getElementById("rule-error").textContent = err.message;
    }
  });
}

async function alarmHistoryPage(id, params) {
  const cursor = params.get("cursor");
  const page = await api(`/ws/v1/alerts/history/${encodeURIComponent(id)}?size=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
  const rows = page.list
    .map((t) => `<tr><td>${esc(t.source)}</td><td>${esc(t.state)}${t.correction ? " (correction)" : ""}</td>
      <td>${esc(fmtTime(t.changed))}</td><td class="num">${esc(fmtValue(t.value))}</td>
      <td class="wide">${esc(t.acknowledged_by ? `${t.acknowledged_by}${t.note ? `: ${t.note}` : ""}` : "")}</td></tr>`)
    .join("");
  main.innerHTML = `<h1>History of ${esc(id)}</h1><p><a href="#/alarms">Alarms</a></p>
    <div class="table-wrap"><table><thead><tr><th>Source</th><th>State</th><th>Changed</th><th>Value</th><th class="wide">Acknowledged</th></tr></thead>
    <tbody>${rows || '<tr><td colspan="5" class="muted">No transitions.</td></tr>'}</tbody></table></div>
    ${page.cursor ? `<p><a href="#/alarms/history/${encodeURIComponent(id)}?cursor=${encodeURIComponent(page.cursor)}">Next page</a></p>` : ""}`;
}

const SEVERITY = { critical: 0, major: 1, minor: 2, warning: 3 };

async function renderAlarms() {
  const page = await api("/ws/v1/alerts/status?size=1000");
  page.list.sort((a, b) => (SEVERITY[a.severity] ?? 9) - (SEVERITY[b.severity] ?? 9) || b.changed.localeCompare(a.changed));
  const rows = page.list
    .map(
      (s) => `<tr>
      <td class="sev-${esc(s.severity)}">${esc(s.severity)}</td><td>${esc(s.alert_name || s.alert_id)}</td>
      <td>${esc(s.source)}</td><td>${esc(s.state)}</td><td class="wide">${esc(fmtTime(s.changed))}</td>
      <td class="num">${esc(fmtValue(s.value))}</td>
      <td>${
        s.state === "triggered"
          ? `<form class="ack" data-alert="${esc(s.alert_id)}" data-source="${esc(s.source)}">
               <input name="note" placeholder="note" aria-label="Note for ${esc(s.source)}" size="12">
               <button type="submit">Acknowledge</button></form>`
          : esc(s.acknowledged_by ? `by ${s.acknowledged_by}${s.note ? `: ${s.note}` : ""}` : "")
      }</td></tr>`,
    )
    .join("");
  const box = document.getElementById("statuses");
  if (!box) return;
  box.innerHTML = `
    <div class="table-wrap"><table><thead><tr><th>Severity</th><th>Alert</th><th>Source</th><th>State</th>
    <th class="wide">Since</th><th>Value</th><th></th></tr></thead>
    <tbody>${rows || '<tr><td colspan="7" class="muted">No active alarms.</td></tr>'}</tbody></table></div>`;
  for (const f of box.querySelectorAll("form.ack")) {
    f.addEventListener("submit", async (e) => {
      e.preventDefault();
      const note = new FormData(f).get("note").trim();
      try {
        await api(`/ws/v1/alerts/status/${encodeURIComponent(f.dataset.alert)}/${enc(f.dataset.source)}`, {
          method: "PUT",
          body: { state: "acknowledged", ...(note ? { note } : {}) },
        });
        renderAlarms();
      } catch (err) {
        document.getElementById("alarm-error").textContent = err.message;
      }
    });
  }
}

// ---- Devices --------------------------------------------------------------------------------

async function devicesPage() {
  const list = await allPages("/ws/v1/devices/inventory?size=1000");
  const rows = list
    .map(
      (d) => `<tr><td><a href="#/device/${encodeURIComponent(d.id)}">${esc(d.id)}</a>
      <a class="muted" href="#/streams/${enc(d.id)}">streams</a></td>
      <td>${d.connected ? "connected" : "disconnected"}</td><td>${esc(d.health || "")}</td>
      <td class="wide">${esc(fmtTime(d.last_seen))}</td><td class="wide">${esc(d.group || "")}</td></tr>`,
    )
    .join("");
  main.innerHTML = `<h1>Devices</h1><div class="table-wrap"><table><thead><tr><th>Device</th><th>Connection</th>
    <th>Health</th><th class="wide">Last seen</th><th class="wide">Group</th></tr></thead><tbody>${rows}</tbody></table></div>`;
}

// ---- Fleet: one channel summed (or averaged) across a pattern -----------------------------

async function fleetPage(params) {
  const pattern = params.get("pattern") || "*/*/active_power";
  const interval = params.get("interval") || "15m";
  const mode = params.get("mode") || "sum"; // sum: the fleet's total; energy: increase per interval, summed
  const period = params.get("period") || "day";
  const tz = params.get("tz") || Intl.DateTimeFormat().resolvedOptions().timeZone;
  const end = Date.now();
  const start = end - (PERIODS[period] || PERIODS.day);
  const opt = (list, v) => list.map((x) => `<option ${x === v ? "selected" : ""}>${x}</option>`).join("");
  main.innerHTML = `<h1>Fleet</h1>
    <form class="bar" id="fleet">
      <label>Streams <input name="pattern" value="${esc(pattern)}" size="26"></label>
      <label>Interval <select name="interval">${opt(["1m", "5m", "15m", "half", "hour", "day"], interval)}</select></label>
      <label>Show <select name="mode">${opt(["sum", "average", "energy"], mode)}</select></label>
      <label>Period <select name="period">${opt(Object.keys(PERIODS), period)}</select></label>
      <button type="submit">Show</button></form>
    <div id="chart" role="img" aria-label="Fleet chart"></div><p class="muted" id="chart-note"></p>`;
  document.getElementById("fleet").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/fleet?${new URLSearchParams([...new FormData(e.target)])}`;
  });
  const method = mode === "energy" ? "increase" : "average";
  const aggregate = mode === "average" ? "average" : "sum";
  const url = `/ws/v1/streams/rollups/${enc(pattern)}?interval=${interval}&method=${method}&aggregate=${aggregate}&start_time=${start}&end_time=${end}&timezone=${encodeURIComponent(tz)}&size=100000`;
  const [list, uPlot] = await Promise.all([allPages(url), loadUplot()]);
  const data = [list.map((p) => Date.parse(p.timestamp) / 1000), list.map((p) => p.value)];
  window.meterstream.charts.fleet = { url, data };
  const el = document.getElementById("chart");
  document.getElementById("chart-note").textContent =
    `${mode === "energy" ? "Energy per interval (increase of the counters), summed" : `${aggregate} of the ${interval} averages`} over ${pattern}: ${list.length} intervals.`;
  el.innerHTML = "";
  const bars = mode === "energy" && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.8] }) : undefined;
  new uPlot(
    {
      width: el.clientWidth || 800,
      height: 300,
      tzDate: (t) => uPlot.tzDate(new Date(t * 1e3), tz),
      series: [{}, { label: mode, stroke: "#0b63c5", fill: bars ? "rgba(11,99,197,0.35)" : undefined, width: 1.5, paths: bars }],
    },
    data,
    el,
  );
}

// ---- Monitors -------------------------------------------------------------------------------

async function monitorsPage() {
  const page = await api("/ws/v1/monitors/inventory");
  const rows = await Promise.all(
    page.list.map(async (m) => {
      const h = await api(`/ws/v1/monitors/history/${encodeURIComponent(m.id)}?size=5`).catch(() => ({ list: [] }));
      const failures = h.list.filter((d) => !d.ok);
      return `<tr data-monitor="${esc(m.id)}"><td>${esc(m.id)}</td><td>${esc(m.topics.join(", "))}</td>
        <td>${esc(m.url)}</td><td>${esc(m.status)}${m.reason ? `<br><span class="muted">${esc(m.reason)}</span>` : ""}</td>
        <td class="wide">${esc(fmtTime(m.last_sent))}</td>
        <td class="wide">${failures.map((d) => `${esc(fmtTime(d.time))}: ${esc(d.error || d.status)}
          <button type="button" class="replay" data-attempt="${d.attempt}">Replay</button>`).join("<br>")}</td>
        <td><button type="button" class="reset">Reset</button></td></tr>`;
    }),
  );
  main.innerHTML = `<h1>Monitors</h1>
    <div class="table-wrap"><table><thead><tr><th>Id</th><th>Topics</th><th>URL</th><th>Status</th>
      <th class="wide">Last delivery</th><th class="wide">Recent failures</th><th></th></tr></thead>
      <tbody>${rows.join("") || '<tr><td colspan="7" class="muted">No monitors.</td></tr>'}</tbody></table></div>
    <h2>New monitor</h2>
    <form id="new-monitor" class="login">
      <label>Topics <input name="topics" value="AlarmStatus" size="30"></label>
      <label>URL <input name="url" type="url" required size="30"></label>
      <label>Batch size <input name="batch_size" type="number" value="100" min="1" max="10000"></label>
      <label>Batch duration, s <input name="batch_duration" type="number" value="10" min="0" step="0.1"></label>
      <label><input name="persistent" type="checkbox" checked> Keep events while the receiver fails</label>
      <button class="primary" type="submit">Create</button>
      <p id="monitor-out" role="status"></p>
    </form>`;
  for (const b of main.querySelectorAll("button.reset, button.replay")) {
    b.addEventListener("click", async () => {
      const id = encodeURIComponent(b.closest("tr").dataset.monitor);
      const url = b.classList.contains("reset")
        ? `/ws/v1/monitors/inventory/${id}/reset`
        : `/ws/v1/monitors/history/${id}/${b.dataset.attempt}/replay`;
      try {
        await api(url, { method: "POST" });
        monitorsPage();
      } catch (err) {
        document.getElementById("monitor-out").textContent = err.message;
      }
    });
  }
  document.getElementById("new-monitor").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      const m = await api("/ws/v1/monitors/inventory", {
        method: "POST",
        body: {
          topics: f.get("topics").split(",").map((t) => t.trim()).filter(Boolean),
          url: f.get("url"),
          batch_size: Number(f.get("batch_size")),
          batch_duration: Number(f.get("batch_duration")),
          persistent: f.get("persistent") === "on",
        },
      });
      document.getElementById("monitor-out").textContent = `Created ${m.id}. Its signing secret, shown only now: ${m.secret}`;
    } catch (err) {
      document.getElementById("monitor-out").textContent = err.message;
    }
  });
}

// ---- One device: status, meters, commands ---------------------------------------------------

// Adds or updates a command's row on a device's page.
function showCommand(c) {
  const result = `<code>${esc(c.result === null || c.result === undefined ? "" : JSON.stringify(c.result))}</code>`;
  const row = main.querySelector(`tr[data-command="${c.id}"]`);
  if (row) {
    row.querySelector(".status").textContent = c.status;
    row.querySelector(".result").innerHTML = result;
  } else {
    document.getElementById("commands")?.insertAdjacentHTML(
      "afterbegin",
      `<tr data-command="${c.id}"><td>${c.id}</td><td>${esc(c.command)}</td><td class="status">${esc(c.status)}</td><td class="result">${result}</td></tr>`,
    );
  }
}

async function devicePage(id) {
  const d = await api(`/ws/v1/devices/inventory/${encodeURIComponent(id)}`);
  const cmds = await api(`/ws/v1/devices/${encodeURIComponent(id)}/commands?size=20`).catch(() => ({ list: [] }));
  const meters = (d.meters || [])
    .map((m) => `<li><a href="#/streams/${enc(`${id}/${m.name}`)}">${esc(m.name)}</a> (${esc(m.model)}) —
      status <a href="#/stream/${enc(`${id}/${m.name}/status`)}">stream</a></li>`)
    .join("");
  const cmdRows = (cmds.list || [])
    .slice()
    .reverse()
    .map((c) => `<tr data-command="${c.id}"><td>${c.id}</td><td>${esc(c.command)}</td><td class="status">${esc(c.status)}</td>
      <td class="result"><code>${esc(c.result === null || c.result === undefined ? "" : JSON.stringify(c.result))}</code></td></tr>`)
    .join("");
  main.innerHTML = `<h1>${esc(id)}</h1>
    <p>${d.connected ? "Connected" : "Disconnected"}, health <strong>${esc(d.health || "unknown")}</strong>,
      last seen ${esc(fmtTime(d.last_seen))}${d.location ? `, at ${d.location.latitude}, ${d.location.longitude}` : ""}.</p>
    <h2>Meters</h2><ul>${meters || '<li class="muted">none reported</li>'}</ul>
    <h2>Commands</h2>
    <form class="bar" id="send"><label>Command <select name="command">
      <option>get_status</option><option>read_now</option><option>reconnect_meter</option><option>set_interval</option></select></label>
      <label>Parameters <input name="parameters" value="{}" size="20"></label><button type="submit">Send</button></form>
    <div class="table-wrap"><table><thead><tr><th>Id</th><th>Command</th><th>Status</th><th>Result</th></tr></thead>
    <tbody id="commands">${cmdRows}</tbody></table></div><p class="error" id="cmd-error" role="alert"></p>`;
  document.getElementById("send").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      const c = await api(`/ws/v1/devices/${encodeURIComponent(id)}/commands`, {
        method: "POST",
        body: { command: f.get("command"), parameters: JSON.parse(f.get("parameters") || "{}"), lifetime: 300 },
      });
      if (!main.querySelector(`tr[data-command="${c.id}"]`)) showCommand(c);
    } catch (err) {
      document.getElementById("cmd-error").textContent = err.message;
    }
  });
  // Commands change status (sent, succeeded...) as the gateway takes and answers them.
  subscribe(`commands=${encodeURIComponent(id)}`, { command: showCommand });
}

// ---- Router ---------------------------------------------------------------------------------

async function route() {
  const [rawPath, query] = (location.hash.slice(1) || "/streams/").split("?");
  const path = decodeURIComponent(rawPath);
  const params = new URLSearchParams(query || "");
  if (!state.auth && path !== "/login") {
    location.hash = "#/login";
    return;
  }
  for (const a of nav.querySelectorAll("a"))
    a.toggleAttribute("aria-current", path.startsWith(a.getAttribute("href").slice(1).replace(/\/$/, "")));
  for (const a of nav.querySelectorAll("a[aria-current]")) a.setAttribute("aria-current", "page");
  live?.abort();
  live = null;
  try {
    if (path === "/login") return loginPage();
    nav.hidden = false;
    if (path.startsWith("/streams/")) await streamsPage(path.slice("/streams/".length));
    else if (path.startsWith("/stream/")) await streamPage(path.slice("/stream/".length), params);
    else if (path === "/search") await searchPage(params);
    else if (path === "/alarms") await alarmsPage();
    else if (path.startsWith("/alarms/history/")) await alarmHistoryPage(path.slice("/alarms/history/".length), params);
    else if (path === "/devices") await devicesPage();
    else if (path.startsWith("/device/")) await devicePage(path.slice("/device/".length));
    else if (path === "/fleet") await fleetPage(params);
    else if (path === "/monitors") await monitorsPage();
    else main.innerHTML = '<h1>Not found</h1><p><a href="#/streams/">Streams</a></p>';
  } catch (err) {
    if (err.status !== 401) main.innerHTML = `<h1>Something went wrong</h1><p class="error">${esc(err.message)}</p>`;
  }
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
route();
