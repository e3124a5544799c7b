// The operators' live map. No libraries: a canvas in Web Mercator, fed by
// the server's event stream for the viewport in sight. Zoomed out the server
// sends counts per cell; zoomed in, every driver and trip in view.
// What was drawn is kept in `window.dispatchMap` (and on the canvas's data
// attributes) so that tests and screen readers can tell.
"use strict";

(() => {
  const COLORS = {
    available: "#3fb950", offered: "#f0883e", on_trip: "#58a6ff", unavailable: "#6e7681", waiting: "#f85149",
  };
  const KINDS = ["available", "offered", "on_trip", "unavailable", "waiting"];
  const TILE = 256;
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const canvas = document.getElementById("map");
  const ctx = canvas.getContext("2d");
  const state = {
    lat: parseFloat(params.get("lat") || "37.5665"),
    lng: parseFloat(params.get("lng") || "126.978"),
    zoom: parseInt(params.get("zoom") || "12", 10),
    follow: params.get("follow") || null,
    tileUrl: null,
    frame: null,
    frames: 0,
    history: [],
    source: null,
    reconnectTimer: null,
    tiles: new Map(),
  };
  const drawn = { drivers: 0, cells: 0, trips: 0, tripIds: [], driverIds: [], route: [] };
  window.dispatchMap = { state, drawn };

  const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);

  // Web Mercator: world pixels at the current zoom.
  const worldSize = () => TILE * Math.pow(2, state.zoom);
  const project = (lat, lng) => {
    const s = Math.sin((Math.max(-85, Math.min(85, lat)) * Math.PI) / 180);
    return [((lng + 180) / 360) * worldSize(), (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * worldSize()];
  };
  const unproject = (x, y) => {
    const lng = (x / worldSize()) * 360 - 180;
    const n = Math.PI - (2 * Math.PI * y) / worldSize();
    return [(180 / Math.PI) * Math.atan(0.5 * (Math.exp(n) - Math.exp(-n))), lng];
  };
  const size = () => [canvas.clientWidth, canvas.clientHeight];
  const toScreen = (lat, lng) => {
    const [cx, cy] = project(state.lat, state.lng);
    const [x, y] = project(lat, lng);
    const [w, h] = size();
    return [x - cx + w / 2, y - cy + h / 2];
  };
  const fromScreen = (sx, sy) => {
    const [cx, cy] = project(state.lat, state.lng);
    const [w, h] = size();
    return unproject(cx + sx - w / 2, cy + sy - h / 2);
  };
  const bounds = () => {
    const [w, h] = size();
    const [north, west] = fromScreen(0, 0);
    const [south, east] = fromScreen(w, h);
    const clamp = (v, a) => Math.max(-a, Math.min(a, v));
    return { south: clamp(south, 85), west: clamp(west, 180), north: clamp(north, 85), east: clamp(east, 180) };
  };

  // ---------------------------------------------------------------- drawing

  function drawTiles() {
    const [w, h] = size();
    const [cx, cy] = project(state.lat, state.lng);
    const z = state.zoom;
    const n = Math.pow(2, z);
    const x0 = Math.floor((cx - w / 2) / TILE), x1 = Math.floor((cx + w / 2) / TILE);
    const y0 = Math.floor((cy - h / 2) / TILE), y1 = Math.floor((cy + h / 2) / TILE);
    for (let x = x0; x <= x1; x++) {
      for (let y = Math.max(0, y0); y <= Math.min(n - 1, y1); y++) {
        const wx = ((x % n) + n) % n;
        const url = state.tileUrl.replace("{z}", z).replace("{x}", wx).replace("{y}", y);
        let img = state.tiles.get(url);
        if (!img) {
          img = new Image();
          img.onload = () => draw();
          img.src = url;
          state.tiles.set(url, img);
          if (state.tiles.size > 512) state.tiles.delete(state.tiles.keys().next().value);
        }
        if (img.complete && img.naturalWidth) ctx.drawImage(img, x * TILE - cx + w / 2, y * TILE - cy + h / 2);
      }
    }
  }

  function drawGrid() {
    const [w, h] = size();
    const b = bounds();
    const span = Math.max(b.east - b.west, 1e-6);
    const steps = [20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001];
    const step = steps.find((s) => (span / s) * 1 >= w / 160) || steps[steps.length - 1];
    const digits = Math.max(0, Math.ceil(-Math.log10(step)));
    ctx.strokeStyle = "#222a35";
    ctx.fillStyle = "#566074";
    ctx.lineWidth = 1;
    ctx.font = "11px system-ui";
    for (let lng = Math.ceil(b.west / step) * step; lng <= b.east; lng += step) {
      const [x] = toScreen(b.south, lng);
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke();
      ctx.fillText(lng.toFixed(digits) + "°E", x + 3, h - 20);
    }
    for (let lat = Math.ceil(b.south / step) * step; lat <= b.north; lat += step) {
      const [, y] = toScreen(lat, b.west);
      ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke();
      ctx.fillText(lat.toFixed(digits) + "°N", 48, y - 3);
    }
  }

  function drawCells(view) {
    let most = 1;
    for (const c of view.cells) most = Math.max(most, c[2] + c[3] + c[4] + c[5] + c[6]);
    for (const c of view.cells) {
      const [south, west] = c;
      const counts = c.slice(2);
      const total = counts.reduce((a, b) => a + b, 0);
      if (!total) continue;
      const [x0, y0] = toScreen(south + view.cell_deg, west);
      const [x1, y1] = toScreen(south, west + view.cell_deg);
      let top = 0;
      for (let k = 1; k < counts.length; k++) if (counts[k] > counts[top]) top = k;
      ctx.globalAlpha = 0.25 + 0.65 * (Math.log(1 + total) / Math.log(1 + most));
      ctx.fillStyle = COLORS[KINDS[top]];
      ctx.fillRect(x0, y0, Math.max(1, x1 - x0), Math.max(1, y1 - y0));
      ctx.globalAlpha = 1;
      if (x1 - x0 > 34 && y1 - y0 > 16) {
        ctx.fillStyle = "#0d1117";
        ctx.font = "11px system-ui";
        ctx.fillText(String(total), x0 + 3, y0 + 12);
      }
    }
  }

  function drawTrips(view) {
    for (const t of view.trips) {
      if (!t.pickup) continue;
      const [px, py] = toScreen(t.pickup[0], t.pickup[1]);
      if (t.dropoff) {
        const [dx, dy] = toScreen(t.dropoff[0], t.dropoff[1]);
        ctx.strokeStyle = "rgba(200,210,230,0.35)";
        ctx.setLineDash([]);
        ctx.lineWidth = 1;
        ctx.beginPath(); ctx.moveTo(px, py); ctx.lineTo(dx, dy); ctx.stroke();
        ctx.fillStyle = "#d8dee9";
        ctx.fillRect(dx - 3, dy - 3, 6, 6);
      }
      if (t.driver_position) {
        const [qx, qy] = toScreen(t.driver_position[0], t.driver_position[1]);
        const [tx, ty] = t.status === "in_progress" && t.dropoff ? toScreen(t.dropoff[0], t.dropoff[1]) : [px, py];
        ctx.strokeStyle = COLORS.on_trip;
        ctx.lineWidth = 2;
        ctx.setLineDash(t.status === "in_progress" ? [] : [5, 4]);
        ctx.beginPath(); ctx.moveTo(qx, qy); ctx.lineTo(tx, ty); ctx.stroke();
        ctx.setLineDash([]);
      }
      ctx.strokeStyle = t.status === "searching" ? COLORS.waiting : "#d8dee9";
      ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(px, py, 6, 0, 2 * Math.PI); ctx.stroke();
    }
  }

  function drawDrivers(view) {
    const r = state.zoom >= 15 ? 5 : state.zoom >= 13 ? 3.5 : 2.5;
    const byId = new Map(view.trips.map((t) => [t.id, t]));
    for (const [, lat, lng, kind, trip] of view.drivers) {
      const [x, y] = toScreen(lat, lng);
      if (kind === "offered" && byId.has(trip)) {
        const t = byId.get(trip);
        const [px, py] = toScreen(t.pickup[0], t.pickup[1]);
        ctx.strokeStyle = COLORS.offered;
        ctx.lineWidth = 1;
        ctx.setLineDash([2, 3]);
        ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(px, py); ctx.stroke();
        ctx.setLineDash([]);
      }
      ctx.fillStyle = COLORS[kind] || "#fff";
      ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.fill();
    }
  }

  function drawFollowed(f) {
    // A followed trip's way by road, when the server ranks by road: where
    // the car drives next (to the pickup, or to the dropoff).
    drawn.route = f.kind === "trip" && Array.isArray(f.route) ? f.route : [];
    if (drawn.route.length > 1) {
      ctx.strokeStyle = "#e3b341";
      ctx.lineWidth = 3;
      ctx.setLineDash([]);
      ctx.beginPath();
      drawn.route.forEach(([lat, lng], i) => {
        const [x, y] = toScreen(lat, lng);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
    const at = f.kind === "driver" ? f.position : f.driver_position || f.pickup;
    if (!at) return;
    const [x, y] = toScreen(at[0], at[1]);
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(x, y, 12, 0, 2 * Math.PI); ctx.stroke();
  }

  function draw() {
    const dpr = window.devicePixelRatio || 1;
    const [w, h] = size();
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#10141a";
    ctx.fillRect(0, 0, w, h);
    if (state.tileUrl) drawTiles();
    drawGrid();
    const view = state.frame && state.frame.view;
    if (view) {
      drawCells(view);
      drawTrips(view);
      drawDrivers(view);
      drawn.drivers = view.drivers.length;
      drawn.cells = view.cells.length;
      drawn.trips = view.trips.length;
      drawn.tripIds = view.trips.map((t) => t.id);
      drawn.driverIds = view.drivers.map((d) => d[0]);
    }
    if (state.frame && state.frame.followed) drawFollowed(state.frame.followed);
    else drawn.route = [];
    canvas.dataset.driversDrawn = drawn.drivers;
    canvas.dataset.cellsDrawn = drawn.cells;
    canvas.dataset.tripsDrawn = drawn.trips;
    canvas.dataset.routePoints = drawn.route.length;
    canvas.dataset.frames = state.frames;
    document.getElementById("where").textContent =
      `${state.lat.toFixed(4)}, ${state.lng.toFixed(4)} · zoom ${state.zoom}` +
      (view ? ` · ${view.drivers_in_view} drivers, ${view.waiting_in_view} waiting in view` : "");
  }

  // ---------------------------------------------------------------- panel

  const fmtUs = (us) => (us >= 1000 ? (us / 1000).toFixed(1) + " ms" : us + " µs");
  // A number is formatted, text (such as "1 / 20 / 3") shown as it is, and
  // a value the server did not send as a dash, never "NaN" or "undefined".
  const cell = (v) => {
    if (typeof v === "number") return Number.isFinite(v) ? v.toLocaleString() : "–";
    return v === undefined || v === null || v === "" ? "–" : String(v);
  };
  const rows = (id, pairs) => {
    document.getElementById(id).innerHTML = pairs
      .map(([k, v]) => `<tr><td>${k}</td><td class="n">${cell(v)}</td></tr>`)
      .join("");
  };

  function panel(stats) {
    const m = stats.request_to_offer_last_minute;
    document.getElementById("p50").textContent = m.count ? fmtUs(m.p50_us) : "–";
    document.getElementById("p99").textContent = m.count ? fmtUs(m.p99_us) : "–";
    rows("drivers-table", [
      ["available", stats.drivers.available], ["offered", stats.drivers.offered],
      ["on a trip", stats.drivers.on_trip], ["off duty", stats.drivers.unavailable],
    ]);
    rows("trips-table", [
      ["searching", stats.trips_open.searching], ["assigned", stats.trips_open.assigned],
      ["arrived", stats.trips_open.arrived], ["in progress", stats.trips_open.in_progress],
      ["completed", stats.trips_ended.completed], ["cancelled", stats.trips_ended.cancelled],
      ["no driver found", stats.trips_ended.no_driver_found],
    ]);
    const now = performance.now();
    const prev = state.history[state.history.length - 1];
    let perS = 0, updS = 0;
    if (prev) {
      const dt = Math.max(1e-3, (now - prev.t) / 1000);
      perS = Math.max(0, (stats.ride_requests - prev.requests) / dt);
      updS = Math.max(0, (stats.location_updates - prev.updates) / dt);
    }
    state.history.push({ t: now, requests: stats.ride_requests, updates: stats.location_updates, perS, p99: m.p99_us });
    if (state.history.length > 240) state.history.shift();
    rows("flow-table", [
      ["ride requests/s", Math.round(perS * 10) / 10], ["location updates/s", Math.round(updS)],
      ["offers sent", stats.offers.sent], ["offers declined", stats.offers.declined],
      ["offers expired", stats.offers.expired], ["updates shed", stats.location_updates_shed],
      ["fleets / drivers / riders", `${stats.sessions.fleet} / ${stats.sessions.driver} / ${stats.sessions.rider}`],
    ]);
    shardsTable(stats.shards || [], now);
    sparkline();
  }

  // One row per shard of the map: who holds it, its drivers and open
  // trips, and its rides per second since the last frame.
  const escape = (text) =>
    String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  function shardsTable(shards, now) {
    const before = state.shards || {};
    state.shards = {};
    const body = shards.map((s) => {
      const b = before[s.shard];
      let perS = 0;
      if (b && b.node === s.node && s.ride_requests >= b.requests) {
        perS = (s.ride_requests - b.requests) / Math.max(1e-3, (now - b.t) / 1000);
      }
      state.shards[s.shard] = { t: now, requests: s.ride_requests, node: s.node };
      return `<tr><td>${cell(s.shard)}</td><td>${escape(s.node || "this server")}</td>` +
        `<td class="n">${cell(s.drivers_connected)}</td><td class="n">${cell(s.trips_open)}</td>` +
        `<td class="n">${cell(Math.round(perS * 10) / 10)}</td></tr>`;
    });
    document.getElementById("shards-table").innerHTML =
      `<tr><th>shard</th><th>node</th><th class="n">drivers</th><th class="n">trips</th><th class="n">rides/s</th></tr>` +
      body.join("");
  }

  function sparkline() {
    const c = document.getElementById("spark");
    const g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    const h = state.history;
    if (h.length < 2) return;
    const line = (key, color) => {
      const most = Math.max(1, ...h.map((p) => p[key]));
      g.strokeStyle = color;
      g.lineWidth = 1.5;
      g.beginPath();
      h.forEach((p, i) => {
        const x = (i / (h.length - 1)) * c.width;
        const y = c.height - 2 - (p[key] / most) * (c.height - 4);
        if (i) g.lineTo(x, y); else g.moveTo(x, y);
      });
      g.stroke();
    };
    line("perS", COLORS.on_trip);
    line("p99", COLORS.offered);
  }

  function showFollowed(f) {
    const box = document.getElementById("followed");
    if (!state.follow) { box.hidden = true; return; }
    box.hidden = false;
    if (!f) { box.textContent = `${state.follow}: not found`; return; }
    const lines = f.kind === "trip"
      ? [`trip ${f.id}: ${f.status}`, `driver ${f.driver || "–"}`, `pickup ${f.pickup}`, `dropoff ${f.dropoff || "–"}`]
      : [`driver ${f.id}: ${f.state}`, `at ${f.position.map((v) => v.toFixed(5))}`, `trip ${f.trip || "–"}`];
    box.textContent = lines.join("\n");
    const at = f.kind === "driver" ? f.position : f.driver_position || f.pickup;
    if (at) { state.lat = at[0]; state.lng = at[1]; }
  }

  // ---------------------------------------------------------------- feed

  function connect() {
    if (state.source) state.source.close();
    const b = bounds();
    const q = new URLSearchParams({ south: b.south, west: b.west, north: b.north, east: b.east });
    if (state.follow) q.set("follow", state.follow);
    if (params.get("max_drivers")) q.set("max_drivers", params.get("max_drivers"));
    const source = new EventSource(withToken("api/live?" + q));
    state.source = source;
    const status = document.getElementById("connection");
    source.addEventListener("frame", (e) => {
      const frame = JSON.parse(e.data);
      state.frame = frame;
      state.frames += 1;
      status.textContent = "live";
      const before = [state.lat, state.lng];
      if (state.follow) showFollowed(frame.followed);
      panel(frame.stats);
      draw();
      if (before[0] !== state.lat || before[1] !== state.lng) reconnectSoon();
    });
    source.onerror = () => { status.textContent = "reconnecting…"; };
  }

  function reconnectSoon() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, 250);
  }

  // ---------------------------------------------------------------- input

  let drag = null;
  canvas.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, at: project(state.lat, state.lng) };
    canvas.classList.add("dragging");
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    [state.lat, state.lng] = unproject(drag.at[0] - (e.clientX - drag.x), drag.at[1] - (e.clientY - drag.y));
    draw();
  });
  canvas.addEventListener("pointerup", () => {
    if (!drag) return;
    drag = null;
    canvas.classList.remove("dragging");
    reconnectSoon();
  });
  const zoomBy = (d) => {
    state.zoom = Math.max(3, Math.min(19, state.zoom + d));
    draw();
    reconnectSoon();
  };
  canvas.addEventListener("wheel", (e) => { e.preventDefault(); zoomBy(e.deltaY < 0 ? 1 : -1); }, { passive: false });
  document.getElementById("zoom-in").onclick = () => zoomBy(1);
  document.getElementById("zoom-out").onclick = () => zoomBy(-1);
  document.getElementById("search").addEventListener("submit", async (e) => {
    e.preventDefault();
    const q = document.getElementById("search-q").value.trim();
    state.follow = q || null;
    if (q) {
      const r = await fetch(withToken("api/find?q=" + encodeURIComponent(q)));
      showFollowed(r.ok ? await r.json() : null);
      if (r.ok && state.zoom < 14) state.zoom = 15;
    } else {
      showFollowed(null);
    }
    draw();
    connect();
  });
  window.addEventListener("resize", () => { draw(); reconnectSoon(); });

  fetch(withToken("api/config"))
    .then((r) => (r.ok ? r.json() : {}))
    .then((c) => { state.tileUrl = c.tile_url || null; })
    .finally(() => { draw(); connect(); });
})();
