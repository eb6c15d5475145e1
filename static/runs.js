/* Runs dashboard: a table of the training runs and their loss chart (chart.js).
 *
 * One run is selected (click its row); others can be ticked to overlay their curves, and the keys on which the
 * overlaid runs' configs differ are listed. While a plotted run is still training its metrics are fetched again
 * every 2 s and the chart redrawn. The page's words come from i18n.js (t); run names, configs and numbers as they are.
 */
(function () {
  "use strict";

  const { t, text: say, live, attr, has } = window.i18n;

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
    diffCard: $("diff-card"),
    diff: $("config-diff"),
    diffNone: $("no-diff"),
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
      attr(box, "title", "runs.overlay");
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
      // The studio's word for the run (its newest job's state, else its folder's): done, running, stopped, …
      const status = run.status || (run.running ? "running" : "stopped");
      badge.className = "badge state-" + status;
      // A state the catalogue does not know shows as the server says it.
      if (has("state." + status)) say(badge, "state." + status); else badge.textContent = status;
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

  function draw() {
    const series = plotted().map((n) => window.lossChart.series(n, colorOf(n), state.metrics.get(n) || []));
    const names = series.map((s) => s.name).join(", ");
    live(els.title, () => (series.length ? t("runs.lossOf", { names }) : t("runs.loss")));
    const empty = t(series.length ? "chart.noMetrics" : "runs.selectRun");
    window.runsChart = { series, drawn: window.lossChart.draw(els.canvas, series, empty) };
    showDiff();
  }

  // ---- config differences of the plotted runs ----------------------------------------------------------------------

  /** A config as flat dotted keys ("lora_parameters.rank"); values as text (JSON for lists), so they compare. */
  function flatten(obj, prefix, out) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
      else out[key] = typeof v === "string" ? v : JSON.stringify(v);
    }
    return out;
  }

  /** The keys whose values are not the same in every config, each with its value per config ("–": absent). */
  function configDiff(configs) {
    const flat = configs.map((c) => flatten(c, "", {}));
    const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
    return keys
      .filter((k) => new Set(flat.map((f) => (k in f ? f[k] : undefined))).size > 1)
      .map((k) => ({ key: k, values: flat.map((f) => (k in f ? f[k] : "–")) }));
  }

  function showDiff() {
    const names = plotted();
    const runs = names.map((n) => state.runs.find((r) => r.name === n)).filter(Boolean);
    els.diffCard.hidden = runs.length < 2;
    if (runs.length < 2) return;
    const rows = configDiff(runs.map((r) => r.config || {}));
    const head = document.createElement("tr");
    const keyHead = document.createElement("th");
    head.append(say(keyHead, "runs.key"));
    for (const label of runs.map((r) => r.name)) {
      const th = document.createElement("th");
      th.textContent = label;
      head.append(th);
    }
    const body = rows.map((row) => {
      const tr = document.createElement("tr");
      for (const text of [row.key, ...row.values]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    els.diff.replaceChildren(head, ...body);
    els.diffNone.hidden = rows.length > 0;
  }

  // ---- start -----------------------------------------------------------------------------------------------------

  let resizeFrame = 0;
  window.addEventListener("resize", () => {
    if (!resizeFrame) resizeFrame = requestAnimationFrame(() => { resizeFrame = 0; draw(); });
  });
  document.addEventListener("i18n:change", () => draw()); // the chart's words are drawn, not marked

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

  window.runsApp = { state, select, toggleCompare, draw, configDiff };
  start();
})();
