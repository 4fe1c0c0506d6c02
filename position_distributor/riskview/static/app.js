// The risk view page: loads the whole view from /events (a "snapshot" event), then applies the
// "changes" pushed by the node. Renders at most four times a second; never blanks: a broken
// stream keeps the last view on screen, marked "reconnecting" then "stale", until a fresh
// snapshot replaces it. Timestamps (ns, above 2^53) stay strings. No dependencies.
"use strict";

(function () {
  const RENDER_INTERVAL = 250; // ms between renders at most
  const STALE_AFTER = 12000; // ms without any event (the node pings every 5 s)
  const MAX_EXPOSURE_ROWS = 500; // the largest |net| symbols shown (breaches always are)
  const SEP = "\u0000";
  const MAX_FLASH = 50; // rows changed in one render that still flash

  const view = {
    positions: new Map(), // "strategy\0symbol" -> [strategy, symbol, net, "ts"]
    status: null,
    lastChange: null,
    conn: "connecting",
    lastHeard: 0,
    snapshots: 0,
    renders: 0,
    lastRenderMs: 0,
    firstRenderMs: null, // time from navigation start to the first full render
    lastFullRenderMs: 0,
    maxRenderMs: 0,
    changeEvents: 0,
  };
  window.pdView = view; // for tests and for the curious

  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 6 });
  const esc = (text) =>
    String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const num = (x) => fmt.format(x);
  const counter = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const fmtCount = (n) => counter.format(n);
  const side = (x) => (x > 0 ? "long" : x < 0 ? "short" : "flat");

  function timeOfNs(ts) {
    // "1742308549773254000" -> local time with milliseconds; exact digits stay in the string.
    if (!ts) return "-";
    const ms = Number(BigInt(ts) / 1000000n);
    const d = new Date(ms);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    const today = new Date();
    const date = d.toDateString() === today.toDateString() ? "" :
      `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `;
    return `${date}${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function timeOfIso(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleTimeString();
  }

  function newerTs(a, b) {
    // Compare decimal strings of ns timestamps without losing digits.
    if (b === null || b === undefined) return true;
    if (a.length !== b.length) return a.length > b.length;
    return a > b;
  }

  // Filters.
  let filterStrategy = "";
  let filterSymbol = "";
  const matches = (p) =>
    (!filterStrategy || p[0].toLowerCase().includes(filterStrategy)) &&
    (!filterSymbol || p[1].toLowerCase().includes(filterSymbol));

  // What changed since the last render.
  let fullRender = true;
  const changedKeys = new Set();
  let statusDirty = true;
  let lastRender = 0;
  let renderTimer = null;
  let lastStale = "";

  function scheduleRender() {
    if (renderTimer !== null) return;
    const wait = Math.max(0, lastRender + RENDER_INTERVAL - performance.now());
    renderTimer = setTimeout(() => {
      renderTimer = null;
      requestAnimationFrame(render);
    }, wait);
  }

  // Stream.
  let source = null;
  let retry = 500;
  let reconnectTimer = null;

  function connect() {
    reconnectTimer = null;
    source = new EventSource("/events");
    source.addEventListener("snapshot", (e) => {
      heard();
      const data = JSON.parse(e.data);
      const next = new Map();
      for (const p of data.positions) next.set(p[0] + SEP + p[1], p);
      view.positions = next; // replaced whole, only once the new view is in hand
      view.lastChange = data.last_change;
      view.snapshots += 1;
      fullRender = true;
      changedKeys.clear();
      scheduleRender();
    });
    source.addEventListener("changes", (e) => {
      heard();
      view.changeEvents += 1;
      const data = JSON.parse(e.data);
      for (const p of data.positions) {
        const key = p[0] + SEP + p[1];
        view.positions.set(key, p);
        changedKeys.add(key);
      }
      if (data.last_change && newerTs(data.last_change, view.lastChange)) view.lastChange = data.last_change;
      scheduleRender();
    });
    source.addEventListener("status", (e) => {
      heard();
      view.status = JSON.parse(e.data);
      statusDirty = true;
      scheduleRender();
    });
    source.addEventListener("ping", heard);
    source.onerror = () => {
      // The browser's own retry gives up on some errors (a 401, a 503): retry here, always.
      source.close();
      source = null;
      setConn(view.lastHeard && performance.now() - view.lastHeard > STALE_AFTER ? "stale" : "reconnecting");
      if (reconnectTimer === null) reconnectTimer = setTimeout(connect, retry);
      retry = Math.min(retry * 2, 5000);
    };
  }

  function heard() {
    view.lastHeard = performance.now();
    retry = 500;
    setConn("live");
  }

  function setConn(state) {
    if (view.conn === state) return;
    view.conn = state;
    document.body.dataset.conn = state;
    $("conn").textContent = state;
  }

  setInterval(() => {
    if (view.lastHeard && performance.now() - view.lastHeard > STALE_AFTER) {
      setConn("stale");
      if (source !== null) {
        // Open but silent: the connection is dead somewhere on the way; start afresh.
        source.close();
        source = null;
        if (reconnectTimer === null) reconnectTimer = setTimeout(connect, 0);
      }
    }
  }, 1000);

  // Rendering.

  function render() {
    const started = performance.now();
    lastRender = started;
    let full = fullRender;
    fullRender = false;
    if (statusDirty) {
      renderStatus();
      // Rows of strategies that went stale (or came back) change style.
      const signature = [...staleStrategies().keys()].sort().join(SEP);
      if (signature !== lastStale) {
        lastStale = signature;
        full = true;
      }
    }
    if (full) renderPositionsFully();
    else if (changedKeys.size) renderPositionChanges();
    if (full || changedKeys.size || statusDirty) {
      renderExposureAndStrategies();
    }
    statusDirty = false;
    changedKeys.clear();
    $("last-change").textContent = timeOfNs(view.lastChange);
    $("last-change").title = view.lastChange || "";
    $("counts").textContent = `${view.positions.size} positions`;
    const took = performance.now() - started;
    view.renders += 1;
    view.lastRenderMs = took;
    if (took > view.maxRenderMs) view.maxRenderMs = took;
    if (full) {
      view.lastFullRenderMs = took;
      if (view.firstRenderMs === null && view.snapshots) {
        view.firstRenderMs = performance.now();
        document.body.dataset.loaded = "1";
      }
    }
  }

  function staleStrategies() {
    const stale = new Map();
    const status = view.status;
    if (!status) return stale;
    for (const peer of status.peers) {
      if (peer.name && !peer.connected) stale.set(peer.name, peer.stale_since);
    }
    return stale;
  }

  // Positions: a row per position, sorted by strategy then symbol; changes update rows in place.
  let order = []; // keys rendered, sorted
  const rowOf = new Map(); // key -> <tr>
  const flashing = []; // rows to flash after this render

  function positionRow(p, stale) {
    const cls = side(p[2]) + (stale.has(p[0]) ? " stale" : "");
    return `<tr class="${cls}" data-key="${esc(p[0] + "|" + p[1])}"><td>${esc(p[0])}</td><td>${esc(p[1])}</td>` +
      `<td class="num net">${num(p[2])}</td><td>${timeOfNs(p[3])}</td><td class="ts">${p[3]}</td></tr>`;
  }

  function compareKeys(a, b) {
    return a < b ? -1 : a > b ? 1 : 0;
  }

  function renderPositionsFully() {
    const stale = staleStrategies();
    const keys = [];
    for (const [key, p] of view.positions) if (matches(p)) keys.push(key);
    keys.sort(compareKeys);
    const html = new Array(keys.length);
    for (let i = 0; i < keys.length; i++) html[i] = positionRow(view.positions.get(keys[i]), stale);
    const body = $("positions").tBodies[0];
    body.innerHTML = html.join("");
    order = keys;
    rowOf.clear();
    const rows = body.rows;
    for (let i = 0; i < keys.length; i++) rowOf.set(keys[i], rows[i]);
    $("positions-count").textContent = keys.length === view.positions.size ? "" :
      `${keys.length} of ${view.positions.size} shown`;
  }

  function renderPositionChanges() {
    const stale = staleStrategies();
    const body = $("positions").tBodies[0];
    // A few changed rows flash; a burst does not (animating thousands of rows costs seconds).
    const flash = changedKeys.size <= MAX_FLASH;
    if (!flash) {
      for (const tr of flashing) tr.classList.remove("flash");
      flashing.length = 0;
    }
    for (const key of changedKeys) {
      const p = view.positions.get(key);
      if (!matches(p)) continue;
      const row = rowOf.get(key);
      if (row !== undefined) {
        row.className = side(p[2]) + (stale.has(p[0]) ? " stale" : "");
        const cells = row.cells;
        cells[2].textContent = num(p[2]);
        cells[3].textContent = timeOfNs(p[3]);
        cells[4].textContent = p[3];
        if (flash) flashing.push(row);
        continue;
      }
      // A new position: insert it where it sorts.
      let lo = 0;
      let hi = order.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (order[mid] < key) lo = mid + 1;
        else hi = mid;
      }
      const template = document.createElement("tbody");
      template.innerHTML = positionRow(p, stale);
      const tr = template.rows[0];
      if (flash) flashing.push(tr);
      body.insertBefore(tr, lo < order.length ? rowOf.get(order[lo]) : null);
      order.splice(lo, 0, key);
      rowOf.set(key, tr);
    }
    if (flash && flashing.length) {
      const rows = flashing.splice(0);
      for (const tr of rows) tr.classList.add("flash");
      setTimeout(() => {
        for (const tr of rows) tr.classList.remove("flash");
      }, 1000);
    }
  }

  function renderExposureAndStrategies() {
    const status = view.status || { limits: {}, default_limit: null, peers: [], node: "" };
    const exposure = new Map();
    const totals = new Map();
    for (const p of view.positions.values()) {
      const net = p[2];
      exposure.set(p[1], (exposure.get(p[1]) || 0) + net);
      let t = totals.get(p[0]);
      if (t === undefined) totals.set(p[0], (t = { count: 0, long: 0, short: 0 }));
      t.count += 1;
      if (net > 0) t.long += net;
      else t.short += net;
    }
    // Exposure: largest |net| first; every breach shown whatever its rank.
    const rows = [];
    for (const [symbol, net] of exposure) {
      if (filterSymbol && !symbol.toLowerCase().includes(filterSymbol)) continue;
      const limit = symbol in status.limits ? status.limits[symbol] : status.default_limit;
      const breach = limit !== null && limit !== undefined && Math.abs(net) > limit;
      rows.push([symbol, net, limit, breach]);
    }
    rows.sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]) || compareKeys(a[0], b[0]));
    const shown = [];
    let hidden = 0;
    for (let i = 0; i < rows.length; i++) {
      if (i < MAX_EXPOSURE_ROWS || rows[i][3]) shown.push(rows[i]);
      else hidden += 1;
    }
    $("exposure").tBodies[0].innerHTML = shown.map(([symbol, net, limit, breach]) => {
      const used = limit ? `${Math.round((Math.abs(net) / limit) * 100)}%` : limit === 0 && net ? "over" : "";
      const label = net > 0 ? "\u25b2 long" : net < 0 ? "\u25bc short" : "flat";
      return `<tr class="${side(net)}${breach ? " breach" : ""}" data-symbol="${esc(symbol)}"><td>${esc(symbol)}</td>` +
        `<td class="num net">${num(net)}</td><td class="side">${label}${breach ? " \u2013 LIMIT BREACH" : ""}</td>` +
        `<td class="num">${limit === null || limit === undefined ? "" : num(limit)}</td><td class="num used">${used}</td></tr>`;
    }).join("");
    $("exposure-more").textContent = hidden ?
      `Showing ${fmtCount(shown.length)} of ${fmtCount(rows.length)} symbols (the ` +
      `${fmtCount(MAX_EXPOSURE_ROWS)} largest and every breach): filter by symbol to see the rest.` : "";
    // Strategies.
    const stale = staleStrategies();
    const names = [...totals.keys()].sort(compareKeys);
    $("strategies").tBodies[0].innerHTML = names
      .filter((name) => !filterStrategy || name.toLowerCase().includes(filterStrategy))
      .map((name) => {
        const t = totals.get(name);
        let node = "";
        if (name === status.node) node = '<span class="state-live">this node</span>';
        else if (stale.has(name)) node = `<span class="state-down">stale since ${esc(timeOfIso(stale.get(name)))}</span>`;
        else if (status.peers.some((peer) => peer.name === name)) node = '<span class="state-live">live</span>';
        return `<tr class="${stale.has(name) ? "stale" : ""}" data-strategy="${esc(name)}"><td>${esc(name)}</td>` +
          `<td class="num">${t.count}</td><td class="num long">${num(t.long)}</td><td class="num short">${num(t.short)}</td>` +
          `<td class="num">${num(t.long - t.short)}</td><td class="num net">${num(t.long + t.short)}</td><td>${node}</td></tr>`;
      }).join("");
    const list = $("strategy-names");
    if (list.options.length !== names.length) list.innerHTML = names.map((n) => `<option value="${esc(n)}">`).join("");
  }

  function renderStatus() {
    const status = view.status;
    if (!status) return;
    $("node").textContent = status.node;
    document.title = `Risk view · ${status.node}`;
    $("node-state").textContent = status.state === "running" ? "" : status.state;
    $("peers").tBodies[0].innerHTML = status.peers.map((peer) =>
      `<tr class="${peer.connected ? "" : "stale"}"><td>${esc(peer.name || "?")}</td><td>${esc(peer.address)}</td>` +
      `<td class="${peer.connected ? "state-live" : "state-down"}">${esc(peer.state)}</td>` +
      `<td>${peer.stale_since ? esc(timeOfIso(peer.stale_since)) : ""}</td></tr>`).join("") ||
      '<tr><td colspan="4" class="more">no peers</td></tr>';
  }

  function onFilter() {
    filterStrategy = $("f-strategy").value.trim().toLowerCase();
    filterSymbol = $("f-symbol").value.trim().toLowerCase();
    fullRender = true;
    statusDirty = true;
    scheduleRender();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("f-strategy").addEventListener("input", onFilter);
    $("f-symbol").addEventListener("input", onFilter);
    connect();
  });
})();
