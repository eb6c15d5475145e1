/* The studio: data, a new run, its job, compare, evaluate and ship, all through /api/studio.
 *
 * Five tabs (the URL's hash says which). Everything a model, a file or a log wrote is put in the page with
 * textContent, never as HTML. A job's progress streams from its server-sent events route while it is on screen.
 */
(function () {
  "use strict";

  const TERMINAL = new Set(["stopped", "interrupted", "failed", "done", "cancelled"]);
  const RESUMABLE = new Set(["stopped", "interrupted"]);
  const TABS = ["data", "run", "jobs", "compare", "ship"];
  const COLORS = ["#2563eb", "#16a34a"];
  const LIVE_POLL_MS = 2000; // the jobs table while a job is queued or running
  const IDLE_POLL_MS = 10000;

  const $ = (id) => document.getElementById(id);
  const make = (tag, className, text) => {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined && text !== null) el.textContent = String(text);
    return el;
  };

  const state = {
    form: null, // GET /api/studio/form
    datasets: [],
    models: [], // GET /api/studio/models
    loaded: null,
    jobs: [], // newest first
    selected: null, // id of the job shown in the Jobs tab
    streams: new Map(), // job id -> EventSource
    metrics: new Map(), // run name -> metrics rows
    metricsStep: new Map(), // run name -> step those rows were fetched at
    evalJob: null,
    exportJob: null,
    exportTypes: {},
    formTimer: 0,
    pollTimer: 0,
  };

  // ---- HTTP and errors -------------------------------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(message, data) {
      super(message);
      this.data = data || {};
    }
  }

  async function api(method, url, body) {
    const opts = { method, headers: { Accept: "application/json" } };
    if (body instanceof FormData) opts.body = body;
    else if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(url, opts);
    let data = null;
    try { data = await res.json(); } catch (_) { /* empty or not JSON */ }
    if (!res.ok) throw new ApiFailure((data && data.error) || `${method} ${url} failed: HTTP ${res.status}`, data);
    return data;
  }

  let errorTimer = 0;
  function showError(message) {
    const el = $("studio-error");
    el.textContent = message;
    el.hidden = !message;
    clearTimeout(errorTimer);
    if (message) errorTimer = setTimeout(() => { el.hidden = true; }, 10000);
  }

  const fmt = (v, digits = 3) => (typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "–");

  function duration(s) {
    if (typeof s !== "number" || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? `${h}h ${String(m).padStart(2, "0")}m` : m ? `${m}m ${String(sec).padStart(2, "0")}s` : `${sec}s`;
  }

  function when(t) {
    if (!t) return "–";
    const d = new Date(typeof t === "number" ? t * 1000 : t);
    return isNaN(d) ? String(t) : d.toLocaleTimeString();
  }

  function options(select, items, keep) {
    const before = select.value;
    select.replaceChildren(...items.map(([value, label]) => {
      const opt = make("option", "", label);
      opt.value = value;
      return opt;
    }));
    if (keep && items.some(([v]) => v === before)) select.value = before;
  }

  // ---- tabs ------------------------------------------------------------------------------------------------------

  function showTab(name) {
    if (!TABS.includes(name)) name = "data";
    for (const t of TABS) $("tab-" + t).hidden = t !== name;
    for (const b of document.querySelectorAll(".tabs [data-tab]")) {
      b.setAttribute("aria-selected", String(b.dataset.tab === name));
    }
    if (location.hash !== "#" + name) history.replaceState(null, "", location.pathname + "#" + name);
    if (name === "jobs") drawJobChart();
  }

  // ---- Data ------------------------------------------------------------------------------------------------------

  async function loadDatasets() {
    const data = await api("GET", "/api/studio/datasets");
    state.datasets = data.datasets || [];
    const body = $("datasets-body");
    body.replaceChildren();
    $("no-datasets").hidden = state.datasets.length > 0;
    for (const ds of state.datasets) {
      const tr = make("tr");
      tr.dataset.name = ds.name;
      const splits = ds.splits || {};
      tr.append(make("td", "", ds.name), make("td", "", ds.source));
      for (const s of ["train", "valid", "test"]) tr.append(make("td", "num", splits[s] ?? "–"));
      const td = make("td");
      const actions = make("div", "row-actions");
      td.append(actions);
      const preview = make("button", "preview", "Preview");
      preview.type = "button";
      preview.addEventListener("click", () => showPreview(ds));
      const use = make("button", "use", "Use for a run");
      use.type = "button";
      use.addEventListener("click", () => { $("run-data").value = ds.name; refreshForm(); showTab("run"); });
      actions.append(preview, use);
      if (ds.source !== "uploaded") {
        // A shipped set is inspected where it is; a recipe's data is prepared on first use.
        const take = make("button", "take", ds.path ? "Statistics" : "Prepare");
        take.type = "button";
        take.addEventListener("click", () => takeListed(ds));
        actions.prepend(take);
      }
      preview.disabled = use.disabled = !ds.path;
      tr.append(td);
      body.append(tr);
    }
    options($("run-datasets"), state.datasets.map((d) => [d.name, d.source]));
  }

  function showDatasetReport(ds) {
    $("upload-problems-box").hidden = true;
    $("upload-result").hidden = false;
    const facts = $("upload-facts");
    facts.replaceChildren();
    const splits = ds.splits || {};
    const stats = ds.stats || {};
    const tokens = stats.tokens || {};
    const rows = [
      ["name", ds.name],
      ["format", ds.format],
      ["splits", ["train", "valid", "test"].map((s) => `${s} ${splits[s] ?? 0}`).join(" · ")],
      ["tokens per example", `min ${tokens.min ?? "–"} · mean ${fmt(tokens.mean, 1)} · max ${tokens.max ?? "–"}`],
      ["over max_seq_length", `${stats.over_max_seq_length ?? "–"} (cut at ${stats.max_seq_length ?? "–"} tokens)`],
      ["stored", ds.stored ? "yes" : "no (checked only)"],
    ];
    for (const [k, v] of rows) {
      const div = make("div");
      div.dataset.fact = k;
      div.append(make("dt", "", k), make("dd", "", v));
      facts.append(div);
    }
    $("upload-notes").replaceChildren(...(ds.notes || []).map((n) => make("li", "", n)));
  }

  function showProblems(err) {
    $("upload-result").hidden = true;
    const problems = (err.data && err.data.problems) || [];
    $("upload-problems-title").textContent = problems.length
      ? `Nothing was stored: ${problems.length} problem${problems.length === 1 ? "" : "s"}`
      : err.message;
    $("upload-problems").replaceChildren(...problems.map((p) => make("li", "problem", p)));
    $("upload-problems-box").hidden = false;
  }

  async function upload(e) {
    e.preventDefault();
    const dryRun = !(e.submitter && e.submitter.id === "upload-store");
    // A folder's files keep their paths inside it, so a dataset_info.json finds the files it names.
    const files = [...$("upload-files").files].map((f) => [f, f.name])
      .concat([...$("upload-folder").files].map((f) => [f, f.webkitRelativePath || f.name]));
    if (!files.length) { $("upload-status").textContent = "Choose files or a folder first."; return; }
    const body = new FormData();
    for (const [f, path] of files) body.append("files", f, path);
    for (const [field, id] of [["name", "upload-name"], ["format", "upload-format"], ["model", "upload-model"],
      ["max_seq_length", "upload-max-seq"]]) {
      const v = $(id).value.trim();
      if (v) body.append(field, v);
    }
    if (dryRun) body.append("dry_run", "1");
    const status = $("upload-status");
    status.textContent = dryRun ? "Checking…" : "Uploading…";
    try {
      const data = await api("POST", "/api/studio/datasets", body);
      showDatasetReport(data.dataset);
      status.textContent = data.dataset.stored ? `Stored as ${data.dataset.name}.` : "Checked: nothing stored.";
      if (data.dataset.stored) {
        await loadDatasets();
        const ds = state.datasets.find((d) => d.name === data.dataset.name);
        if (ds) { $("run-data").value = ds.name; refreshForm(); }
      }
    } catch (err) {
      status.textContent = "";
      showProblems(err);
    }
  }

  async function takeListed(ds) {
    const status = $("upload-status");
    status.textContent = `Reading ${ds.name}…`;
    try {
      const data = await api("POST", "/api/studio/datasets", { [ds.source === "recipe" ? "recipe" : "shipped"]: ds.name });
      showDatasetReport(data.dataset);
      status.textContent = data.dataset.stored ? `Prepared ${data.dataset.name}.` : `${ds.name}: statistics only.`;
      if (data.dataset.stored) await loadDatasets();
      $("upload-result").scrollIntoView({ block: "nearest" });
    } catch (err) {
      status.textContent = "";
      showProblems(err);
    }
  }

  async function showPreview(ds) {
    const q = new URLSearchParams({ n: "3", split: "train" });
    const model = $("upload-model").value;
    if (model) q.set("model", model);
    try {
      const data = await api("GET", `/api/studio/datasets/${encodeURIComponent(ds.name)}/preview?${q}`);
      $("preview-name").textContent = ds.name;
      const box = $("preview-examples");
      box.replaceChildren();
      for (const ex of data.examples || []) {
        const note = ex.left_out ? " (left out: nothing to learn within max_seq_length)"
          : ex.truncated ? " (cut at max_seq_length)" : "";
        box.append(make("div", "muted small", (ex.where || "") + note));
        const pre = make("pre", "example");
        for (const seg of ex.segments || []) pre.append(make(seg.learned ? "mark" : "span", seg.learned ? "learned" : "", seg.text));
        box.append(pre);
      }
      $("preview-card").hidden = false;
      $("preview-card").scrollIntoView({ block: "nearest" });
    } catch (err) { showError(err.message); }
  }

  // ---- New run ---------------------------------------------------------------------------------------------------

  // Keys with their own control above the grid (model, data, method) or none.
  const OWN_CONTROL = new Set(["model", "data", "fine_tune_type", "method", "name"]);

  function flatDefaults(obj, prefix, out) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatDefaults(v, key, out);
      else out.push([key, v]);
    }
    return out;
  }

  function buildForm() {
    const form = state.form;
    const defaults = form.defaults || {};
    const grid = $("run-keys");
    grid.replaceChildren();
    for (const [key, value] of flatDefaults(defaults, "", [])) {
      if (OWN_CONTROL.has(key)) continue;
      const label = make("label", "", key);
      const input = make("input");
      input.dataset.key = key;
      input.id = "key-" + key.replace(/\./g, "-");
      if (typeof value === "boolean") {
        input.type = "checkbox";
        label.classList.add("check");
      } else if (typeof value === "number") {
        input.type = "number";
        input.step = "any";
      } else {
        input.type = "text";
        if (value === null) input.placeholder = "null";
      }
      input.dataset.default = JSON.stringify(value);
      label.append(input);
      grid.append(label);
    }
    options($("run-method"), (form.methods || []).map((m) => [m, m]));
    options($("run-models"), (form.models || []).map((m) => [m.id, m.label || m.id]));
    options($("run-preset"), [["", "(none)"], ...(form.presets || []).map((p) => [p.name, p.name])]);
    if (form.formats) options($("upload-format"), [["", "detect"], ...form.formats.map((f) => [f, f])]);
    state.exportTypes = { gguf: form.gguf_types || [], adapter: form.adapter_types || [] };
    syncExportType();
    resetForm();
  }

  function setInput(input, value) {
    if (input.type === "checkbox") input.checked = Boolean(value);
    else if (value === null || value === undefined) input.value = "";
    else input.value = typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function resetForm() {
    const d = state.form.defaults || {};
    $("run-model").value = d.model ?? "";
    $("run-data").value = d.data ?? "";
    $("run-method").value = d.method ?? d.fine_tune_type ?? (state.form.methods || [])[0] ?? "";
    $("run-name").value = "";
    $("run-preset").value = "";
    for (const input of $("run-keys").querySelectorAll("input[data-key]")) setInput(input, JSON.parse(input.dataset.default));
    refreshForm();
  }

  function applyPreset() {
    const preset = (state.form.presets || []).find((p) => p.name === $("run-preset").value);
    if (!preset) return;
    const v = preset.values || {};
    if (v.model !== undefined) $("run-model").value = v.model;
    if (v.data !== undefined) $("run-data").value = v.data ?? "";
    if (v.method !== undefined) $("run-method").value = v.method;
    // Each key the grid shows, looked up along its dotted path: an object-valued key (lr_schedule) stays whole.
    for (const input of $("run-keys").querySelectorAll("input[data-key]")) {
      const value = input.dataset.key.split(".").reduce((at, k) => (at && typeof at === "object" ? at[k] : undefined), v);
      if (value !== undefined) setInput(input, value);
    }
    refreshForm();
  }

  /** The form's values: model, data, method and name, plus every key that differs from its default (nested as in
   * lora_config.yaml), so the command shows only what was changed. */
  function formValues() {
    const values = { model: $("run-model").value.trim(), data: $("run-data").value.trim(), method: $("run-method").value };
    const name = $("run-name").value.trim();
    if (name) values.name = name;
    for (const input of $("run-keys").querySelectorAll("input[data-key]")) {
      const def = JSON.parse(input.dataset.default);
      let v;
      if (input.type === "checkbox") v = input.checked;
      else if (input.type === "number") v = input.value === "" ? null : Number(input.value);
      else if (def === null) v = input.value.trim() === "" ? null : parseLoose(input.value);
      else v = input.value;
      if (JSON.stringify(v) === JSON.stringify(def)) continue;
      const path = input.dataset.key.split(".");
      let at = values;
      for (const p of path.slice(0, -1)) at = at[p] = at[p] || {};
      at[path[path.length - 1]] = v;
    }
    return values;
  }

  /** A value typed for a key whose default is null (epochs, lr_schedule, …): JSON when it parses, else text. */
  function parseLoose(text) {
    try { return JSON.parse(text); } catch (_) { return text.trim(); }
  }

  function refreshForm() {
    clearTimeout(state.formTimer);
    state.formTimer = setTimeout(resolveForm, 250);
  }

  async function resolveForm() {
    const status = $("run-status");
    try {
      const spec = await api("POST", "/api/studio/form", { values: formValues() });
      $("run-yaml").textContent = spec.yaml;
      $("run-command").textContent = spec.command;
      $("run-start").disabled = false;
      status.textContent = `run folder: ${spec.name}`;
      status.classList.remove("error");
    } catch (err) {
      $("run-start").disabled = true;
      status.textContent = err.message;
      status.classList.add("error");
    }
  }

  async function startRun(e) {
    e.preventDefault();
    $("run-start").disabled = true;
    try {
      const data = await api("POST", "/api/studio/jobs", { kind: "train", values: formValues() });
      jobUpdated(data.job);
      showTab("jobs");
      selectJob(data.job.id);
    } catch (err) {
      $("run-status").textContent = err.message;
      $("run-status").classList.add("error");
    } finally {
      $("run-start").disabled = false;
    }
  }

  // ---- Jobs ------------------------------------------------------------------------------------------------------

  async function loadJobs() {
    const data = await api("GET", "/api/studio/jobs");
    state.jobs = data.jobs || [];
    renderJobs();
    for (const job of state.jobs) if (!TERMINAL.has(job.state) && !state.streams.has(job.id)) follow(job.id);
    if (state.selected) renderJob();
  }

  function schedulePoll() {
    clearTimeout(state.pollTimer);
    const live = state.jobs.some((j) => !TERMINAL.has(j.state));
    state.pollTimer = setTimeout(async () => {
      try { await loadJobs(); } catch (err) { showError(err.message); }
      schedulePoll();
    }, live ? LIVE_POLL_MS : IDLE_POLL_MS);
  }

  function stepText(job) {
    const p = job.progress || {};
    return job.kind === "train" ? `${p.step ?? 0} / ${p.iters ?? "?"}` : "";
  }

  function badge(job) {
    return make("span", "badge state-" + job.state, job.state);
  }

  function renderJobs() {
    const body = $("jobs-body");
    body.replaceChildren();
    $("no-jobs").hidden = state.jobs.length > 0;
    const active = state.jobs.filter((j) => !TERMINAL.has(j.state)).length;
    $("jobs-count").textContent = String(active);
    $("jobs-count").hidden = active === 0;
    for (const job of state.jobs) {
      const tr = make("tr");
      tr.dataset.id = job.id;
      if (job.id === state.selected) tr.classList.add("selected");
      const st = make("td");
      st.append(badge(job));
      tr.append(make("td", "", job.id), make("td", "", job.kind), make("td", "", job.run ?? "–"), st,
        make("td", "num", stepText(job)), make("td", "", when(job.started)), make("td", "", job.error ? "⚠" : ""));
      tr.addEventListener("click", () => selectJob(job.id));
      body.append(tr);
    }
  }

  function jobUpdated(job) {
    const i = state.jobs.findIndex((j) => j.id === job.id);
    if (i >= 0) state.jobs[i] = job; else state.jobs.unshift(job);
    renderJobs();
    if (job.id === state.selected) renderJob();
    if (job.id === state.evalJob) renderEval(job);
    if (job.id === state.exportJob) renderExport(job);
    if (TERMINAL.has(job.state)) {
      const es = state.streams.get(job.id);
      if (es) { es.close(); state.streams.delete(job.id); }
      if (job.kind === "train") loadModels().catch(() => {});
    } else follow(job.id);
  }

  /** Stream the job's changes (server-sent events) until it ends. */
  function follow(id) {
    if (state.streams.has(id)) return;
    const es = new EventSource(`/api/studio/jobs/${encodeURIComponent(id)}/events`);
    state.streams.set(id, es);
    es.onmessage = (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch (_) { return; }
      if (data && data.job) jobUpdated(data.job);
    };
    es.onerror = () => {
      // The stream ends after a terminal state; a broken one is retried by the browser, and polled meanwhile.
      const job = state.jobs.find((j) => j.id === id);
      if (!job || TERMINAL.has(job.state)) { es.close(); state.streams.delete(id); }
    };
  }

  function selectJob(id) {
    state.selected = id;
    renderJobs();
    renderJob();
    const job = state.jobs.find((j) => j.id === id);
    if (job && !TERMINAL.has(job.state)) follow(id);
  }

  function renderJob() {
    const job = state.jobs.find((j) => j.id === state.selected);
    $("job-card").hidden = !job;
    if (!job) return;
    const p = job.progress || {};
    $("job-title").textContent = `${job.kind} job ${job.id}` + (job.run ? ` · ${job.run}` : "");
    const st = $("job-state");
    st.textContent = job.state;
    st.className = "badge state-" + job.state;
    $("job-stop").hidden = job.state !== "running";
    $("job-resume").hidden = !RESUMABLE.has(job.state);
    $("job-cancel").hidden = job.state !== "queued";
    $("job-error").hidden = !job.error;
    $("job-error-text").textContent = job.error || "";
    $("job-stats").hidden = job.kind !== "train";
    $("job-step").textContent = stepText(job);
    $("job-loss").textContent = fmt(p.loss);
    $("job-val-loss").textContent = fmt(p.val_loss);
    $("job-tps").textContent = fmt(p.tokens_per_sec, 1);
    $("job-ltps").textContent = fmt(p.learned_tokens_per_sec, 1);
    $("job-mem").textContent = typeof p.peak_memory_gb === "number" ? `${fmt(p.peak_memory_gb, 2)} GB` : "–";
    $("job-eta").textContent = job.state === "running" ? duration(p.eta_s) : "–";
    $("job-command").textContent = job.command || "";
    const log = $("job-log");
    const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 20;
    log.textContent = (job.log_tail || []).join("\n");
    if (atEnd) log.scrollTop = log.scrollHeight;
    $("job-chart").parentElement.hidden = job.kind !== "train";
    if (job.kind === "train" && job.run) refreshMetrics(job);
  }

  async function refreshMetrics(job) {
    const step = (job.progress || {}).step ?? 0;
    const key = job.run;
    if (state.metricsStep.get(key) === `${step}/${job.state}`) { drawJobChart(); return; }
    state.metricsStep.set(key, `${step}/${job.state}`);
    try {
      const data = await api("GET", `/api/runs/${encodeURIComponent(key)}/metrics`);
      state.metrics.set(key, data.rows || []);
    } catch (_) { /* no metrics yet: the run folder appears with its first report */ }
    drawJobChart();
  }

  function drawJobChart() {
    const job = state.jobs.find((j) => j.id === state.selected);
    if (!job || job.kind !== "train" || $("tab-jobs").hidden) return;
    const series = [window.lossChart.series(job.run || "run", COLORS[0], state.metrics.get(job.run) || [])];
    window.studioChart = { drawn: window.lossChart.draw($("job-chart"), series, "No loss reported yet.") };
  }

  async function jobAction(action) {
    if (!state.selected) return;
    try {
      const data = await api("POST", `/api/studio/jobs/${encodeURIComponent(state.selected)}/${action}`);
      jobUpdated(data.job);
    } catch (err) { showError(err.message); }
  }

  // ---- models: compare and the run menus -------------------------------------------------------------------------

  async function loadModels() {
    const data = await api("GET", "/api/studio/models");
    state.models = data.models || [];
    state.loaded = data.loaded || null;
    const items = state.models.map((m) => [m.id, m.label || m.id]);
    const hadA = $("compare-a").value, hadB = $("compare-b").value;
    options($("compare-a"), items);
    options($("compare-b"), items);
    const runs = state.models.filter((m) => m.kind === "run");
    $("compare-a").value = items.some(([v]) => v === hadA) ? hadA : (state.loaded || (items[0] || [""])[0]);
    $("compare-b").value = items.some(([v]) => v === hadB) && hadB !== $("compare-a").value ? hadB
      : (runs[0] ? runs[0].id : $("compare-a").value);
    // Token counts and previews take the ids of this list (a run's template is its base's), not the form's sources.
    options($("upload-model"), [["", "(the served model)"], ...runs.map((m) => [m.id, m.label || m.id])], true);
    options($("ship-run"), runs.map((m) => [m.run, m.run]), true);
    $("eval-start").disabled = $("export-start").disabled = runs.length === 0;
  }

  async function compare(e) {
    e.preventDefault();
    const models = [$("compare-a").value, $("compare-b").value];
    const body = {
      message: $("compare-message").value,
      models,
      max_tokens: Math.round(Number($("compare-max-tokens").value)),
      temperature: Number($("compare-temperature").value),
    };
    const status = $("compare-status");
    const box = $("compare-answers");
    status.textContent = "Answering…";
    $("compare-send").disabled = true;
    box.replaceChildren(...models.map((id) => answerColumn(id, null)));
    try {
      const data = await api("POST", "/api/studio/compare", body);
      box.replaceChildren(...(data.answers || []).map((a) => answerColumn(a.model, a)));
      status.textContent = "";
    } catch (err) {
      status.textContent = "";
      box.replaceChildren();
      showError(err.message);
    } finally {
      $("compare-send").disabled = false;
    }
  }

  function answerColumn(id, answer) {
    const model = state.models.find((m) => m.id === id);
    const col = make("div", "card answer" + (answer ? "" : " pending"));
    col.dataset.model = id;
    col.append(make("h2", "", model ? model.label || id : id));
    col.append(make("div", "answer-text", answer ? answer.text : "…"));
    if (answer) {
      const meta = [`${answer.tokens ?? "?"} tokens`, `${fmt(answer.seconds, 2)} s`];
      if (typeof answer.switch_ms === "number") meta.push(`switch ${fmt(answer.switch_ms, 1)} ms`);
      col.append(make("div", "muted small answer-meta", meta.join(" · ")));
    }
    return col;
  }

  // ---- Evaluate and ship -----------------------------------------------------------------------------------------

  async function startJob(body, status) {
    status.textContent = "Starting…";
    try {
      const data = await api("POST", "/api/studio/jobs", body);
      jobUpdated(data.job);
      return data.job;
    } catch (err) {
      status.textContent = err.message;
      return null;
    }
  }

  async function startEval(e) {
    e.preventDefault();
    $("eval-result").hidden = true;
    const job = await startJob({ kind: "eval", run: $("ship-run").value }, $("eval-status"));
    if (job) { state.evalJob = job.id; renderEval(job); }
  }

  function jobStatusText(job) {
    if (job.state === "failed") return `failed: ${job.error || "see the Jobs tab"}`;
    const last = (job.log_tail || []).filter((l) => l.trim()).slice(-1)[0];
    return `job ${job.id}: ${job.state}` + (last && !TERMINAL.has(job.state) ? ` · ${last}` : "");
  }

  function renderEval(job) {
    $("eval-status").textContent = jobStatusText(job);
    if (job.state !== "done" || !job.result) return;
    const summary = job.result.metrics || {};
    $("eval-where").textContent = `${summary.data ?? "?"} (${summary.split ?? "?"})`;
    const tables = [["all", summary.metrics || {}]];
    const groups = summary.groups || {};
    const values = [...new Set(Object.values(groups).flatMap((g) => Object.keys(g)))].sort();
    for (const v of values) {
      tables.push([`${summary.by_field} = ${v}`, Object.fromEntries(Object.entries(groups).map(([c, g]) => [c, g[v] || {}]))]);
    }
    $("eval-tables").replaceChildren(...tables.map(([title, columns]) => scoreTable(title, columns)));
    predictionsTable(job.result.predictions || [], Object.keys(summary.metrics || {}));
    $("eval-result").hidden = false;
  }

  /** One table: a row per score, a column per model ("base", "tuned"), and the change when both are there. */
  function scoreTable(title, columns) {
    const names = Object.keys(columns);
    const both = names.length === 2 && names[0] === "base" && names[1] === "tuned";
    const table = make("table", "runs-table score-table");
    const head = make("tr");
    for (const h of [title, ...names, ...(both ? ["change"] : [])]) head.append(make("th", h === title ? "" : "num", h));
    table.append(head);
    const keys = [...new Set(names.flatMap((n) => Object.keys(columns[n])))]
      .filter((k) => names.some((n) => columns[n][k] === null || typeof columns[n][k] === "number"));
    for (const key of keys) {
      const tr = make("tr");
      tr.dataset.metric = key;
      tr.append(make("td", "", key));
      const vals = names.map((n) => columns[n][key]);
      for (const v of vals) tr.append(make("td", "num", v === undefined ? "-" : v === null ? "n/a" : fmt(v, key === "n" ? 0 : 3)));
      if (both) {
        const ok = vals.every((v) => typeof v === "number");
        const d = ok ? vals[1] - vals[0] : null;
        tr.append(make("td", "num", ok ? (d >= 0 ? "+" : "") + fmt(d, key === "n" ? 0 : 3) : ""));
      }
      table.append(tr);
    }
    return table;
  }

  function predictionsTable(rows, columns) {
    const table = $("eval-predictions");
    const head = make("tr");
    for (const h of ["where", "prompt", "expected", ...columns]) head.append(make("th", "", h));
    const body = rows.map((row) => {
      const tr = make("tr");
      const prompt = Array.isArray(row.input) ? (row.input.filter((m) => m.role === "user").pop() || {}).content : "";
      const where = String(row.where ?? "").split("/").pop(); // test.jsonl:3; the data folder is in the heading
      for (const text of [where, prompt, row.expected, ...columns.map((c) => row[c])]) tr.append(make("td", "", text ?? ""));
      return tr;
    });
    table.replaceChildren(head, ...body);
  }

  async function startExport(e) {
    e.preventDefault();
    $("export-result").hidden = true;
    const format = $("export-format").value;
    const body = { kind: "export", run: $("ship-run").value, format };
    const type = $("export-type").value;
    if (format !== "hf" && type) body.type = type;
    const job = await startJob(body, $("export-status"));
    if (job) { state.exportJob = job.id; renderExport(job); }
  }

  function renderExport(job) {
    $("export-status").textContent = jobStatusText(job);
    if (job.state !== "done" || !job.result) return;
    const files = job.result.files || [];
    $("export-files").replaceChildren(...files.map((name) => {
      const li = make("li");
      const a = make("a", "download", name);
      a.href = `/api/studio/jobs/${encodeURIComponent(job.id)}/files/${encodeURIComponent(name)}`;
      a.setAttribute("download", name.split("/").pop());
      li.append(a);
      return li;
    }));
    $("ollama-box").hidden = !job.result.ollama;
    $("ollama-line").textContent = job.result.ollama || "";
    $("ollama-copied").textContent = "";
    $("export-result").hidden = false;
  }

  async function copyOllama() {
    const text = $("ollama-line").textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      // No clipboard permission: select the line so Ctrl-C copies it.
      const range = document.createRange();
      range.selectNodeContents($("ollama-line"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      $("ollama-copied").textContent = "Selected: press Ctrl-C (⌘-C) to copy.";
      return;
    }
    $("ollama-copied").textContent = "Copied.";
  }

  function syncExportType() {
    // A full GGUF and a LoRA adapter GGUF take different types; a fused HF folder none.
    const format = $("export-format").value;
    const types = (state.exportTypes || {})[format] || [];
    options($("export-type"), [["", "(export's default)"], ...types.map((t) => [t, t])], true);
    $("export-type").disabled = format === "hf";
  }

  // ---- start -----------------------------------------------------------------------------------------------------

  for (const b of document.querySelectorAll(".tabs [data-tab]")) b.addEventListener("click", () => showTab(b.dataset.tab));
  window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
  $("upload-form").addEventListener("submit", upload);
  $("run-form").addEventListener("input", (e) => { if (e.target.id !== "run-preset") refreshForm(); });
  $("run-preset").addEventListener("change", applyPreset);
  $("run-reset").addEventListener("click", resetForm);
  $("run-form").addEventListener("submit", startRun);
  $("job-stop").addEventListener("click", () => jobAction("stop"));
  $("job-resume").addEventListener("click", () => jobAction("resume"));
  $("job-cancel").addEventListener("click", () => jobAction("cancel"));
  $("compare-form").addEventListener("submit", compare);
  $("eval-form").addEventListener("submit", startEval);
  $("export-form").addEventListener("submit", startExport);
  $("export-format").addEventListener("change", syncExportType);
  $("ollama-copy").addEventListener("click", copyOllama);
  let resizeFrame = 0;
  window.addEventListener("resize", () => {
    if (!resizeFrame) resizeFrame = requestAnimationFrame(() => { resizeFrame = 0; drawJobChart(); });
  });

  async function start() {
    showTab(location.hash.slice(1));
    syncExportType();
    const steps = [
      api("GET", "/api/studio/form").then((f) => { state.form = f; buildForm(); }),
      loadDatasets(),
      loadModels(),
      loadJobs().then(() => { if (!state.selected && state.jobs.length) selectJob(state.jobs[0].id); }),
    ];
    const failed = (await Promise.allSettled(steps)).filter((r) => r.status === "rejected");
    if (failed.length) showError(failed.map((r) => r.reason.message).join("; "));
    schedulePoll();
    document.body.dataset.ready = "1";
  }

  window.studioApp = { state, showTab, selectJob, formValues, loadModels, loadDatasets };
  start();
})();
