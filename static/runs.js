/* Runs dashboard: a table of the training runs and a loss chart drawn on a <canvas> (no chart library).
 *
 * One run is selected (click its row); others can be ticked to overlay their curves. Training loss is a solid line,
 * validation loss a dashed line with dots, each run in its own colour. While a plotted run is still training its
 * metrics are fetched again every 2 s and the chart redrawn.
 */
(function () {
  "use strict";

  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  const POLL_MS = 2000; // while a plotted run is training
  const IDLE_POLL_MS = 10000; // otherwise: only the table, to notice new runs

  const $ = (id) => document.getElementById(id);
  const els = {
    body: $("runs-body"),
    noRuns: $("no-runs"),
    error: $("runs-error"),
    canvas: $("chart"),
    title: $("chart-title"),
    configCard: $("config-card"),
    configName: $("config-name"),
    config: $("run-config"),
  };

  const state = {
    runs: [], // from /api/runs
    selected: null, // name of the selected run
    compare: new Set(), // names ticked for overlay
    metrics: new Map(), // name -> rows
    colors: new Map(), // name -> colour, stable while the page lives
    timer: null,
  };

  async function getJson(url) {
    const res = await fetch(url, { headers: { Accept: "application/json" } });
    let data = null;
    try { data = await res.json(); } catch (_) { /* not JSON */ }
    if (!res.ok) throw new Error((data && data.error) || `GET ${url} failed: HTTP ${res.status}`);
    return data;
  }

  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = !message;
  }

  function colorOf(name) {
    if (!state.colors.has(name)) state.colors.set(name, COLORS[state.colors.size % COLORS.length]);
    return state.colors.get(name);
  }

  const fmt = (v, digits = 4) => (typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "–");

  // ---- table -----------------------------------------------------------------------------------------------------

  function renderTable() {
    els.body.replaceChildren();
    els.noRuns.hidden = state.runs.length > 0;
    for (const run of state.runs) {
      const tr = document.createElement("tr");
      tr.dataset.name = run.name;
      if (run.name === state.selected) tr.classList.add("selected");

      const tdCmp = document.createElement("td");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.className = "compare";
      box.title = "Overlay this run on the chart";
      box.checked = state.compare.has(run.name) || run.name === state.selected;
      box.disabled = run.name === state.selected;
      box.addEventListener("click", (e) => e.stopPropagation());
      box.addEventListener("change", () => toggleCompare(run.name, box.checked));
      tdCmp.append(box);

      const tdName = document.createElement("td");
      tdName.className = "run-name";
      if (run.name === state.selected || state.compare.has(run.name)) {
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = colorOf(run.name);
        tdName.append(sw);
      }
      tdName.append(document.createTextNode(run.name));
      tdName.title = run.path || "";

      const cells = [
        run.model == null ? "–" : String(run.model),
        run.fine_tune_type == null ? "–" : String(run.fine_tune_type),
      ].map((t) => { const td = document.createElement("td"); td.textContent = t; return td; });

      const tdStep = document.createElement("td");
      tdStep.className = "num";
      tdStep.textContent = `${run.step ?? 0} / ${run.iters ?? "?"}`;
      const tdLoss = document.createElement("td");
      tdLoss.className = "num";
      tdLoss.textContent = fmt(run.loss);
      const tdBest = document.createElement("td");
      tdBest.className = "num";
      tdBest.textContent = fmt(run.best_val_loss);
      const tdStatus = document.createElement("td");
      const badge = document.createElement("span");
      badge.className = "badge " + (run.running ? "running" : "muted");
      badge.textContent = run.running ? "running" : "stopped";
      tdStatus.append(badge);

      tr.append(tdCmp, tdName, ...cells, tdStep, tdLoss, tdBest, tdStatus);
      tr.addEventListener("click", () => select(run.name));
      els.body.append(tr);
    }
  }

  async function loadRuns() {
    const data = await getJson("/api/runs");
    state.runs = data.runs || [];
    const names = new Set(state.runs.map((r) => r.name));
    for (const n of [...state.compare]) if (!names.has(n)) state.compare.delete(n);
    if (state.selected && !names.has(state.selected)) state.selected = null;
    renderTable();
  }

  // ---- selection and polling -------------------------------------------------------------------------------------

  function plotted() {
    const names = state.selected ? [state.selected] : [];
    for (const n of state.compare) if (n !== state.selected) names.push(n);
    return names;
  }

  async function fetchMetrics(name) {
    const data = await getJson("/api/runs/" + encodeURIComponent(name) + "/metrics");
    state.metrics.set(name, data.rows || []);
  }

  async function refreshPlotted(names) {
    await Promise.all(names.map((n) => fetchMetrics(n).catch((err) => showError(err.message))));
    draw();
  }

  async function select(name) {
    state.selected = name;
    state.compare.delete(name);
    if (location.hash !== "#" + encodeURIComponent(name)) {
      history.replaceState(null, "", location.pathname + "#" + encodeURIComponent(name));
    }
    renderTable();
    showConfig();
    await refreshPlotted(plotted().filter((n) => n === name || !state.metrics.has(n)));
    schedulePoll();
  }

  async function toggleCompare(name, on) {
    if (on) state.compare.add(name); else state.compare.delete(name);
    renderTable();
    if (on && !state.metrics.has(name)) await refreshPlotted([name]);
    else draw();
    schedulePoll();
  }

  function showConfig() {
    const run = state.runs.find((r) => r.name === state.selected);
    els.configCard.hidden = !run;
    if (!run) return;
    els.configName.textContent = run.name;
    els.config.textContent = JSON.stringify(run.config || {}, null, 2);
  }

  function runningPlotted() {
    const names = new Set(plotted());
    return state.runs.filter((r) => r.running && names.has(r.name)).map((r) => r.name);
  }

  function schedulePoll() {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, runningPlotted().length ? POLL_MS : IDLE_POLL_MS);
  }

  async function poll() {
    state.timer = null;
    const before = runningPlotted();
    try {
      await loadRuns(); // step, loss and the running flag change too
      showError("");
    } catch (err) { showError(err.message); }
    // Runs training now, plus those that just stopped (their last rows).
    const live = [...new Set(before.concat(runningPlotted()))];
    if (live.length) await refreshPlotted(live);
    schedulePoll();
  }

  // ---- chart -----------------------------------------------------------------------------------------------------

  /** About `count` round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]. */
  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
    const raw = (hi - lo) / Math.max(1, count);
    const pow = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * pow).find((s) => s >= raw) || 10 * pow;
    const start = Math.floor(lo / step) * step;
    const end = Math.ceil(hi / step) * step;
    const ticks = [];
    for (let v = start; v <= end + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
    return { ticks, lo: start, hi: end, step };
  }

  function tickLabel(v, step) {
    const exp = Math.floor(Math.log10(step));
    const mantissa = step / Math.pow(10, exp); // 1, 2, 2.5 or 5
    const digits = Math.max(0, Math.min(6, -exp + (mantissa === 2.5 ? 1 : 0)));
    return Math.abs(v) >= 1e5 ? v.toExponential(1) : v.toFixed(digits);
  }

  function seriesOf(name) {
    const rows = state.metrics.get(name) || [];
    const pts = (key) => rows
      .filter((r) => typeof r.step === "number" && typeof r[key] === "number" && isFinite(r[key]))
      .map((r) => [r.step, r[key]])
      .sort((a, b) => a[0] - b[0]);
    return { name, color: colorOf(name), train: pts("loss"), val: pts("val_loss") };
  }

  function draw() {
    const canvas = els.canvas;
    const dpr = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || 800;
    const cssH = canvas.clientHeight || 380;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);

    const style = getComputedStyle(document.documentElement);
    const textColor = style.getPropertyValue("--text").trim() || "#1c2330";
    const mutedColor = style.getPropertyValue("--muted").trim() || "#6b7385";
    const gridColor = style.getPropertyValue("--border").trim() || "#d9dde5";
    const font = "12px system-ui, sans-serif";

    const series = plotted().map(seriesOf);
    const all = series.flatMap((s) => s.train.concat(s.val));
    els.title.textContent = series.length ? "Loss: " + series.map((s) => s.name).join(", ") : "Loss";
    window.runsChart = { series, drawn: all.length };

    ctx.font = font;
    if (!all.length) {
      ctx.fillStyle = mutedColor;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText(series.length ? "No metrics yet." : "Select a run to plot its loss.", cssW / 2, cssH / 2);
      return;
    }

    const xs = all.map((p) => p[0]);
    const ys = all.map((p) => p[1]);
    const xT = niceTicks(Math.min(0, ...xs), Math.max(...xs), Math.max(2, Math.floor(cssW / 110)));
    const yT = niceTicks(Math.min(...ys), Math.max(...ys), Math.max(2, Math.floor(cssH / 60)));

    const yLabels = yT.ticks.map((v) => tickLabel(v, yT.step));
    const left = 16 + Math.max(...yLabels.map((l) => ctx.measureText(l).width)) + 8;
    const m = { left, right: 16, top: 16, bottom: 42 };
    const pw = cssW - m.left - m.right;
    const ph = cssH - m.top - m.bottom;
    const X = (v) => m.left + ((v - xT.lo) / (xT.hi - xT.lo)) * pw;
    const Y = (v) => m.top + ph - ((v - yT.lo) / (yT.hi - yT.lo)) * ph;

    // grid and ticks
    ctx.lineWidth = 1;
    ctx.strokeStyle = gridColor;
    ctx.fillStyle = mutedColor;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    yT.ticks.forEach((v, i) => {
      const y = Math.round(Y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(m.left, y); ctx.lineTo(m.left + pw, y); ctx.stroke();
      ctx.fillText(yLabels[i], m.left - 8, y);
    });
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const v of xT.ticks) {
      const x = Math.round(X(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(x, m.top); ctx.lineTo(x, m.top + ph); ctx.stroke();
      ctx.beginPath(); ctx.moveTo(x, m.top + ph); ctx.lineTo(x, m.top + ph + 5); ctx.strokeStyle = textColor;
      ctx.stroke(); ctx.strokeStyle = gridColor;
      ctx.fillText(tickLabel(v, xT.step), x, m.top + ph + 8);
    }
    // axes
    ctx.strokeStyle = textColor;
    ctx.beginPath();
    ctx.moveTo(m.left + 0.5, m.top);
    ctx.lineTo(m.left + 0.5, m.top + ph + 0.5);
    ctx.lineTo(m.left + pw, m.top + ph + 0.5);
    ctx.stroke();
    ctx.fillStyle = textColor;
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    ctx.fillText("step", m.left + pw / 2, cssH - 2);
    ctx.save();
    ctx.translate(12, m.top + ph / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle";
    ctx.fillText("loss", 0, 0);
    ctx.restore();

    // curves, clipped to the plot area
    ctx.save();
    ctx.beginPath();
    ctx.rect(m.left, m.top - 4, pw + 4, ph + 8);
    ctx.clip();
    ctx.lineJoin = "round";
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      if (s.train.length) {
        ctx.lineWidth = 2;
        ctx.setLineDash([]);
        ctx.beginPath();
        s.train.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
        ctx.stroke();
        if (s.train.length === 1) dot(ctx, X(s.train[0][0]), Y(s.train[0][1]), 3);
      }
      if (s.val.length) {
        ctx.lineWidth = 2;
        ctx.setLineDash([6, 4]);
        ctx.beginPath();
        s.val.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
        ctx.stroke();
        ctx.setLineDash([]);
        for (const [x, y] of s.val) dot(ctx, X(x), Y(y), 3);
      }
    }
    ctx.restore();

    // legend, top right inside the plot
    const entries = [];
    for (const s of series) {
      if (s.train.length) entries.push({ label: `${s.name} train`, color: s.color, dash: false });
      if (s.val.length) entries.push({ label: `${s.name} val`, color: s.color, dash: true });
    }
    const lw = Math.max(...entries.map((e) => ctx.measureText(e.label).width)) + 44;
    const lh = entries.length * 18 + 8;
    const lx = m.left + pw - lw - 8;
    const ly = m.top + 8;
    ctx.fillStyle = style.getPropertyValue("--panel").trim() || "#fff";
    ctx.globalAlpha = 0.9;
    ctx.fillRect(lx, ly, lw, lh);
    ctx.globalAlpha = 1;
    ctx.strokeStyle = gridColor;
    ctx.lineWidth = 1;
    ctx.strokeRect(lx + 0.5, ly + 0.5, lw, lh);
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    entries.forEach((e, i) => {
      const y = ly + 13 + i * 18;
      ctx.strokeStyle = e.color;
      ctx.fillStyle = e.color;
      ctx.lineWidth = 2;
      ctx.setLineDash(e.dash ? [6, 4] : []);
      ctx.beginPath(); ctx.moveTo(lx + 8, y); ctx.lineTo(lx + 32, y); ctx.stroke();
      ctx.setLineDash([]);
      if (e.dash) dot(ctx, lx + 20, y, 3);
      ctx.fillStyle = textColor;
      ctx.fillText(e.label, lx + 38, y);
    });
  }

  function dot(ctx, x, y, r) {
    ctx.beginPath();
    ctx.arc(x, y, r, 0, Math.PI * 2);
    ctx.fill();
  }

  // ---- start -----------------------------------------------------------------------------------------------------

  let resizeFrame = 0;
  window.addEventListener("resize", () => {
    if (!resizeFrame) resizeFrame = requestAnimationFrame(() => { resizeFrame = 0; draw(); });
  });

  async function start() {
    try {
      await loadRuns();
      const wanted = decodeURIComponent(location.hash.slice(1));
      const first = state.runs.find((r) => r.name === wanted) || state.runs.find((r) => r.running) || state.runs[0];
      if (first) await select(first.name);
      else { draw(); schedulePoll(); }
    } catch (err) {
      showError(err.message);
      draw();
      schedulePoll();
    } finally {
      document.body.dataset.ready = "1";
    }
  }

  window.runsApp = { state, select, toggleCompare, draw, niceTicks };
  start();
})();
