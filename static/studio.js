/* The studio: data, a new run, its job, compare, evaluate and ship, all through /api/studio.
 *
 * Five tabs (the URL's hash says which). Everything a model, a file or a log wrote is put in the page with
 * textContent, never as HTML. A job's progress streams from its server-sent events route while it is on screen.
 *
 * The page's own words come from i18n.js's catalogue: t(id, vars) for a string, say(el, id, vars) and live(el, fn)
 * for an element's text, which a language switch then re-applies. What the server, a model, a file or a log wrote
 * (errors, help, notes, config keys, commands) is shown as it is.
 */
(function () {
  "use strict";

  const { t, text: say, live, attr, has, word } = window.i18n;

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
  /** An element with the catalogue's text `id` (re-applied on a language switch). */
  const makeT = (tag, className, id, vars) => say(make(tag, className), id, vars);
  /** The catalogue's word for a value the server names (`prefix + value`: a state, a source, a job kind), else the
   * value itself. */
  const known = (prefix, value) => (has(prefix + value) ? t(prefix + value) : String(value ?? ""));
  /** A cell or badge showing such a value; its text follows the language. */
  const knownEl = (el, prefix, value) => {
    if (has(prefix + value)) return say(el, prefix + value);
    say(el, null).textContent = String(value ?? ""); // unmarked: a switch leaves it as the server said it
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
    constructor(message, data, status) {
      super(message);
      this.data = data || {};
      this.status = status || 0;
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
    if (!res.ok) throw new ApiFailure((data && data.error) || `${method} ${url} failed: HTTP ${res.status}`, data, res.status);
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

  /** A red problem box belongs to the action that made it: the next action clears it. */
  function clearProblems() {
    $("upload-problems-box").hidden = true;
    showError("");
  }

  const fmt = (v, digits = 3) => (typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "–");

  function duration(s) {
    if (typeof s !== "number" || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return h ? t("dur.hm", { h, m: pad(m) }) : m ? t("dur.ms", { m, s: pad(sec) }) : t("dur.s", { s: sec });
  }

  function when(time) {
    if (!time) return "–";
    const d = new Date(typeof time === "number" ? time * 1000 : time);
    return isNaN(d) ? String(time) : d.toLocaleTimeString();
  }

  /** The select's options, [value, label] each; a label that is a function is the page's own words (live). */
  function options(select, items, keep) {
    const before = select.value;
    select.replaceChildren(...items.map(([value, label]) => {
      const opt = typeof label === "function" ? live(make("option"), label) : make("option", "", label);
      opt.value = value;
      return opt;
    }));
    if (keep && items.some(([v]) => v === before)) select.value = before;
  }

  // ---- tabs ------------------------------------------------------------------------------------------------------

  function showTab(name) {
    if (!TABS.includes(name)) name = "data";
    for (const tab of TABS) $("tab-" + tab).hidden = tab !== name;
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
      tr.append(make("td", "", ds.name), knownEl(make("td"), "source.", ds.source));
      for (const s of ["train", "valid", "test"]) tr.append(make("td", "num", splits[s] ?? "–"));
      const td = make("td");
      const actions = make("div", "row-actions");
      td.append(actions);
      const preview = makeT("button", "preview", "data.preview");
      preview.type = "button";
      preview.addEventListener("click", () => showPreview(ds));
      const use = makeT("button", "use", "data.use");
      use.type = "button";
      use.addEventListener("click", () => { $("run-data").value = ds.name; refreshForm(); showTab("run"); });
      actions.append(preview, use);
      if (ds.source !== "uploaded") {
        // A shipped set is inspected where it is; a recipe's data is prepared on first use.
        const take = makeT("button", "take", ds.path ? "data.statistics" : "data.prepare");
        take.type = "button";
        take.addEventListener("click", () => takeListed(ds));
        actions.prepend(take);
      }
      preview.disabled = use.disabled = !ds.path;
      tr.append(td);
      body.append(tr);
    }
    options($("run-datasets"), state.datasets.map((d) => [d.name, () => known("source.", d.source)]));
  }

  function showDatasetReport(ds) {
    $("upload-problems-box").hidden = true;
    $("upload-result").hidden = false;
    const facts = $("upload-facts");
    facts.replaceChildren();
    const splits = ds.splits || {};
    const stats = ds.stats || {};
    const tokens = stats.tokens || {};
    // [the fact's key (data-fact, as the tests name it), its catalogue id, its value: text, or a function of the
    // language for the page's own words]
    const rows = [
      ["name", "fact.name", ds.name],
      ["format", "fact.format", ds.format],
      ["splits", "fact.splits", ["train", "valid", "test"].map((s) => `${s} ${splits[s] ?? 0}`).join(" · ")],
      ["tokens per example", "fact.tokens",
        () => t("fact.tokensValue", { min: tokens.min ?? "–", mean: fmt(tokens.mean, 1), max: tokens.max ?? "–" })],
      ["over max_seq_length", "fact.over",
        () => t("fact.overValue", { n: stats.over_max_seq_length ?? "–", limit: stats.max_seq_length ?? "–" })],
      ["stored", "fact.stored", () => t(ds.stored ? "fact.yes" : "fact.checkedOnly")],
    ];
    for (const [k, id, v] of rows) {
      const div = make("div");
      div.dataset.fact = k;
      div.append(makeT("dt", "", id), typeof v === "function" ? live(make("dd"), v) : make("dd", "", v));
      facts.append(div);
    }
    $("upload-notes").replaceChildren(...(ds.notes || []).map((n) => make("li", "", n)));
    showLong(ds);
  }

  // What happens to an example longer than max_seq_length (datasets.py `long`'s fates), in the page's words: the
  // catalogue's fate.cut, fate.prompt_cut, fate.left_out and fate.skipped.
  const LONG_SHOWN = 10;

  /** The examples longer than max_seq_length, the first few by where the user's file has them, and a button per way
   * to keep them (`fixes`) that sends the same upload again with the fix's fields. A checked upload is checked
   * again; a stored one cannot be replaced (the name is taken), so a fix stores a new set beside it, under the
   * name its button says. Only uploads are offered fixes: a shipped set is used as it is. */
  function showLong(ds) {
    const long = ds.long || [];
    const fixes = state.lastUpload && state.lastUpload.name === ds.name ? ds.fixes || [] : [];
    const box = $("upload-long");
    box.hidden = !long.length;
    $("upload-fixes").replaceChildren();
    say($("upload-fixes-note"), null);
    if (box.hidden) return;
    const limit = (ds.stats || {}).max_seq_length;
    const skipped = long.every((x) => x.fate === "skipped");
    live($("upload-long-title"), () => {
      const n = long.length === 1 ? t("long.one") : t("long.many", { n: long.length });
      return t(skipped ? "long.titleSkipped" : "long.title", { n, limit });
    });
    const items = long.slice(0, LONG_SHOWN).map((x) => {
      const li = make("li");
      li.dataset.fate = x.fate;
      li.append(make("code", "", x.where), live(make("span"), () =>
        t("long.item", { tokens: number(x.tokens), fate: known("fate.", x.fate) })));
      return li;
    });
    if (long.length > LONG_SHOWN) items.push(makeT("li", "more muted", "long.more", { n: long.length - LONG_SHOWN }));
    $("upload-long-list").replaceChildren(...items);
    if (!fixes.length) return;
    if (ds.stored) say($("upload-fixes-note"), "long.fixesStored", { name: ds.name });
    else say($("upload-fixes-note"), "long.fixesChecked");
    $("upload-fixes").replaceChildren(...fixes.map((fix) => {
      const name = ds.stored ? freeName(ds.name, fix) : null;
      // The fix's label is the server's words; only "Store as NAME" is the page's.
      const b = name ? makeT("button", "fix", "long.storeAs", { name, label: fix.label }) : make("button", "fix", fix.label);
      b.type = "button";
      b.dataset.fix = fix.id;
      b.addEventListener("click", () => applyFix(fix, ds.stored, name));
      return b;
    }));
  }

  /** A name for a fixed copy of a stored set: its name and what the fix does, not taken yet. */
  function freeName(name, fix) {
    const fields = fix.fields || {};
    const what = fix.id === "raise" ? `len${fields.max_seq_length ?? ""}` : fix.id === "truncate" ? "prompt-cut"
      : fix.id === "skip" ? "skip-long" : String(fix.id || "fixed");
    const taken = new Set(state.datasets.map((d) => d.name));
    const stem = `${name}-${what}`.slice(0, 96);
    let out = stem;
    for (let i = 2; taken.has(out); i += 1) out = `${stem}-${i}`;
    return out;
  }

  /** Send the last upload again, its files and options as they were, with the fix's fields; the form is set to
   * what is sent, so a later Upload sends the same. */
  function applyFix(fix, stored, name) {
    const last = state.lastUpload;
    if (!last) return;
    const fields = { ...last.fields, ...(fix.fields || {}) };
    if (name) fields.name = name;
    setUploadFields(fields);
    send(!stored, last.files, fields);
  }

  /** The upload form's options, as the upload route takes them ("" or false: not sent). */
  function uploadFields() {
    const fields = {};
    for (const [field, id] of UPLOAD_INPUTS) fields[field] = $(id).value.trim();
    fields.skip_long = $("upload-skip-long").checked;
    return fields;
  }

  function setUploadFields(fields) {
    for (const [field, id] of UPLOAD_INPUTS) if (field in fields) $(id).value = String(fields[field] ?? "");
    if ("skip_long" in fields) $("upload-skip-long").checked = Boolean(fields.skip_long);
  }

  const UPLOAD_INPUTS = [["name", "upload-name"], ["format", "upload-format"], ["model", "upload-model"],
    ["max_seq_length", "upload-max-seq"], ["truncate", "upload-truncate"]];

  function showProblems(err) {
    $("upload-result").hidden = true;
    const problems = (err.data && err.data.problems) || [];
    if (problems.length) say($("upload-problems-title"), problems.length === 1 ? "data.problem" : "data.problems", { n: problems.length });
    else $("upload-problems-title").textContent = err.message;
    $("upload-problems").replaceChildren(...problems.map((p) => make("li", "problem", p)));
    $("upload-problems-box").hidden = false;
  }

  async function upload(e) {
    e.preventDefault();
    // A folder's files keep their paths inside it, so a dataset_info.json finds the files it names.
    const files = [...$("upload-files").files].map((f) => [f, f.name])
      .concat([...$("upload-folder").files].map((f) => [f, f.webkitRelativePath || f.name]));
    if (!files.length) { clearProblems(); say($("upload-status"), "data.chooseFirst"); return; }
    await send(!(e.submitter && e.submitter.id === "upload-store"), files, uploadFields());
  }

  /** POST the files with the fields: a check (dry run) or a store. The files and fields are kept for the fixes. */
  async function send(dryRun, files, fields) {
    clearProblems();
    const body = new FormData();
    for (const [f, path] of files) body.append("files", f, path);
    for (const [field, v] of Object.entries(fields)) {
      if (v === true) body.append(field, "1");
      else if (v !== false && v !== null && v !== undefined && String(v) !== "") body.append(field, String(v));
    }
    if (dryRun) body.append("dry_run", "1");
    const status = $("upload-status");
    say(status, dryRun ? "data.checking" : "data.uploading");
    $("upload-check").disabled = $("upload-store").disabled = true;
    try {
      const data = await api("POST", "/api/studio/datasets", body);
      state.lastUpload = { files, fields, name: data.dataset.name };
      if (data.dataset.stored) await loadDatasets(); // first: a fix's new name must not be one of them
      showDatasetReport(data.dataset);
      if (data.dataset.stored) say(status, "data.storedAs", { name: data.dataset.name });
      else say(status, "data.checked");
      if (data.dataset.stored) {
        const ds = state.datasets.find((d) => d.name === data.dataset.name);
        if (ds) { $("run-data").value = ds.name; refreshForm(); }
      }
    } catch (err) {
      say(status, null);
      showProblems(err);
    } finally {
      $("upload-check").disabled = $("upload-store").disabled = false;
    }
  }

  async function takeListed(ds) {
    clearProblems();
    const status = $("upload-status");
    say(status, "data.reading", { name: ds.name });
    state.lastUpload = null; // a listed set is not sent again with a fix
    try {
      const data = await api("POST", "/api/studio/datasets", { [ds.source === "recipe" ? "recipe" : "shipped"]: ds.name });
      showDatasetReport(data.dataset);
      if (data.dataset.stored) say(status, "data.prepared", { name: data.dataset.name });
      else say(status, "data.statsOnly", { name: ds.name });
      if (data.dataset.stored) await loadDatasets();
      $("upload-result").scrollIntoView({ block: "nearest" });
    } catch (err) {
      say(status, null);
      showProblems(err);
    }
  }

  async function showPreview(ds) {
    clearProblems();
    const q = new URLSearchParams({ n: "3", split: "train" });
    const model = $("upload-model").value;
    if (model) q.set("model", model);
    const maxSeq = $("upload-max-seq").value.trim(); // cut where the form's checks cut
    if (maxSeq) q.set("max_seq_length", maxSeq);
    try {
      const data = await api("GET", `/api/studio/datasets/${encodeURIComponent(ds.name)}/preview?${q}`);
      $("preview-name").textContent = ds.name;
      const box = $("preview-examples");
      box.replaceChildren();
      for (const ex of data.examples || []) {
        const note = ex.left_out ? "preview.leftOut" : ex.prompt_cut ? "preview.promptCut" : ex.truncated ? "preview.cut" : null;
        box.append(live(make("div", "muted small"), () => (ex.where || "") + (note ? t(note) : "")));
        box.append(ex.pair ? pairView(ex.pair) : segmentsPre(ex.segments, "example"));
      }
      $("preview-card").hidden = false;
      $("preview-card").scrollIntoView({ block: "nearest" });
    } catch (err) { showError(err.message); }
  }

  /** Text runs ({text, learned}) in a <pre>, the learned ones marked. */
  function segmentsPre(segments, className) {
    const pre = make("pre", className);
    for (const seg of segments || []) pre.append(make(seg.learned ? "mark" : "span", seg.learned ? "learned" : "", seg.text));
    return pre;
  }

  /** A preference pair: the prompt both answers share, once, then the chosen and the rejected answer side by side. */
  function pairView(pair) {
    const box = make("div", "pair");
    box.append(segmentsPre(pair.prompt, "example pair-prompt"));
    const sides = make("div", "pair-sides");
    for (const side of ["chosen", "rejected"]) {
      const col = make("div", "pair-side " + side);
      col.dataset.side = side;
      col.append(makeT("div", "pair-label small", "pair." + side), segmentsPre(pair[side], "example"));
      sides.append(col);
    }
    box.append(sides);
    return box;
  }

  // ---- New run ---------------------------------------------------------------------------------------------------
  //
  // The form is built from the schema GET /api/studio/form gives (config.py's types, choices, bounds and help), in
  // five groups: Basics, Adapter (not for a full fine-tune), Preference (beta and the reference only where the
  // objective uses them), GRPO (its rewards and sampling, for train_mode grpo only) and Advanced (collapsed). Every change is sent to POST /api/studio/form after a pause: its
  // answer is the config, the command and the estimate, or the server's own words about the first bad value, shown
  // at the field it names. A field that does not apply (hidden) or that a warm start decides (locked) is not sent.

  // The controls the template holds (everything else is made from the schema).
  const STATIC = { start_from: "run-start-from", model: "run-model", data: "run-data", method: "run-method", name: "run-name" };
  // What a warm start takes from its run (its adapter's shapes): shown, filled in and locked.
  const LOCKED_BY_START = ["model", "method", "num_layers", "lora_parameters.rank", "lora_parameters.keys"];
  const JSON_PLACEHOLDER = {
    lr_schedule: '{"name": "cosine_decay", "arguments": [2e-4, 1000], "warmup": 10}',
    optimizer_config: '{"adamw": {"weight_decay": 0.01}}',
  };
  const GROUPS = ["basics", "adapter", "preference", "grpo", "advanced"];
  const HIDEABLE_GROUPS = ["adapter", "preference", "grpo"]; // hidden when none of their fields applies

  const schemaList = () => (state.form && state.form.schema) || [];
  const schemaOf = (key) => schemaList().find((f) => f.key === key);
  const controlOf = (key) => document.querySelector(`#run-form [data-key="${CSS.escape(key)}"]`);
  const fieldOf = (key) => document.querySelector(`#run-form .field[data-field="${CSS.escape(key)}"]`);
  const valueAt = (obj, key) => key.split(".").reduce((at, k) => (at && typeof at === "object" ? at[k] : undefined), obj);

  function runOptions(select, emptyId) {
    const runs = (state.form && state.form.runs) || [];
    options(select, [["", () => t(emptyId)], ...runs.map((r) => [r.name, () => t("run.runOption", {
      name: r.name, method: r.method + (r.train_mode !== "sft" ? ", " + r.train_mode : ""), base: String(r.model).split("/").pop(),
    })])], true);
  }

  function makeControl(f) {
    let el;
    if (f.type === "choice") {
      el = make("select");
      const items = (f.choices || []).map((c) => [String(c), String(c)]);
      options(el, f.nullable ? [["", () => t("common.noneParen")], ...items] : items);
    } else if (f.type === "run") {
      el = make("select");
    } else if (f.type === "rewards") {
      el = rewardsEditor(f);
    } else if (f.type === "bool") {
      el = make("input");
      el.type = "checkbox";
    } else if (f.type === "int" || f.type === "float") {
      el = make("input");
      el.type = "number";
      el.step = f.type === "int" ? "1" : "any";
      const b = f.bounds;
      if (b) {
        const lows = [b.lo, ...(b.also || [])].filter((x) => typeof x === "number");
        if (lows.length) el.min = String(Math.min(...lows));
        if (typeof b.hi === "number") el.max = String(b.hi);
      }
      if (f.nullable) attr(el, "placeholder", "run.notSet");
    } else if (f.type === "json") {
      el = make("textarea");
      el.rows = 2;
      if (JSON_PLACEHOLDER[f.key]) el.placeholder = JSON_PLACEHOLDER[f.key];
      else attr(el, "placeholder", "run.notSetJson");
    } else {
      el = make("input");
      el.type = "text";
      if (f.type === "list") attr(el, "placeholder", "run.listDefault");
      else if (f.nullable) attr(el, "placeholder", "run.notSet");
    }
    el.dataset.key = f.key;
    el.id = "key-" + f.key.replace(/\./g, "-");
    return el;
  }

  // ---- GRPO's rewards: the built-ins only, each a row (its name, weight and options); the server checks each ----

  /** The editor of the `rewards` key: a row per reward, "Add a reward" below. Its value is read by readRewards. */
  function rewardsEditor(f) {
    const el = make("div", "rewards-editor");
    el.rewardKinds = f.rewards || [];
    const rows = make("div", "reward-rows");
    const add = makeT("button", "reward-add", "run.rewardAdd");
    add.type = "button";
    add.addEventListener("click", () => {
      const used = new Set(readRewards(el).map((r) => r.name));
      const next = el.rewardKinds.find((k) => !used.has(k.name)) || el.rewardKinds[0];
      rows.append(rewardRow(el, { name: next ? next.name : "", weight: 1 }));
      refreshForm();
    });
    el.append(rows, add);
    return el;
  }

  function rewardRow(editor, spec) {
    const row = make("div", "reward-row");
    const name = make("select", "reward-name");
    options(name, editor.rewardKinds.map((k) => [k.name, k.name]));
    name.value = spec.name;
    const weight = make("input", "reward-weight");
    weight.type = "number";
    weight.step = "any";
    weight.value = spec.weight === undefined || spec.weight === null ? "" : String(spec.weight);
    attr(weight, "placeholder", "run.rewardWeightDefault");
    const opts = make("span", "reward-options");
    const remove = make("button", "reward-remove", "×");
    remove.type = "button";
    attr(remove, "title", "run.rewardRemove");
    attr(remove, "aria-label", "run.rewardRemove");
    remove.addEventListener("click", () => {
      row.remove();
      refreshForm();
    });
    const labelled = (id, control) => {
      const label = make("label");
      label.append(makeT("span", "", id), control);
      return label;
    };
    // A name's own options, rebuilt when the name changes (before the form hears of the change: this listener is
    // the select's own, the form's is further up).
    const fill = (values) => {
      const kind = editor.rewardKinds.find((k) => k.name === name.value);
      opts.replaceChildren(...((kind && kind.options) || []).map((o) => {
        const control = rewardOption(o, values[o.key]);
        const label = make("label");
        label.append(make("code", "key", o.key), control);
        return label;
      }));
    };
    name.addEventListener("input", () => fill({}));
    fill(spec);
    row.append(labelled("run.rewardName", name), labelled("run.rewardWeight", weight), opts, remove);
    return row;
  }

  /** One option's control: a regex or labels as text, a schema as JSON, min and max as whole numbers. */
  function rewardOption(o, value) {
    let el;
    if (o.type === "json") {
      el = make("textarea");
      el.rows = 2;
      el.placeholder = '{"type": "object", "properties": {"answer": {"type": "string"}}}';
    } else {
      el = make("input");
      el.type = o.type === "int" ? "number" : "text";
      if (o.type === "int") { el.min = "0"; el.step = "1"; }
      if (o.type === "labels") attr(el, "placeholder", "run.rewardLabels");
      if (o.type === "regex") attr(el, "placeholder", "run.rewardPattern");
    }
    el.dataset.option = o.key;
    el.dataset.kind = o.type;
    if (value !== undefined && value !== null) {
      el.value = Array.isArray(value) ? value.join(", ") : typeof value === "object" ? JSON.stringify(value) : String(value);
    }
    return el;
  }

  function setRewards(editor, value) {
    const list = Array.isArray(value) ? value : [];
    editor.querySelector(".reward-rows").replaceChildren(...list.map((spec) => rewardRow(editor, spec || {})));
  }

  /** The rewards as the config takes them: [{name, weight, ...options}], options left empty left out. */
  function readRewards(editor) {
    return [...editor.querySelectorAll(".reward-row")].map((row) => {
      const spec = { name: row.querySelector(".reward-name").value };
      const w = row.querySelector(".reward-weight").value.trim();
      if (w !== "") spec.weight = Number(w);
      for (const el of row.querySelectorAll("[data-option]")) {
        const text = el.value.trim();
        if (text === "") continue;
        const kind = el.dataset.kind;
        spec[el.dataset.option] = kind === "int" ? Number(text) : kind === "json" ? parseLoose(text)
          : kind === "labels" ? text.split(",").map((x) => x.trim()).filter(Boolean) : el.value;
      }
      return spec;
    });
  }

  function fieldBox(f, el) {
    const box = make("div", "field");
    box.dataset.field = f.key;
    box.dataset.type = f.type;
    const label = make("label", f.type === "bool" ? "check" : "");
    label.htmlFor = el.id;
    if (f.type === "bool") label.append(el);
    // The server's label, in the page's language where the catalogue knows it; the config key as it is.
    label.append(live(make("span"), () => word(f.label)), document.createTextNode(" "), make("code", "key", f.key));
    box.append(label);
    if (f.type !== "bool") box.append(el);
    box.append(make("p", "help", f.help || ""));
    const err = make("p", "field-error");
    err.setAttribute("role", "alert");
    err.hidden = true;
    box.append(err);
    return box;
  }

  function buildForm() {
    const form = state.form;
    let advanced = 0;
    for (const g of GROUPS) {
      if (g !== "basics") $("fields-" + g).replaceChildren();
    }
    for (const f of schemaList()) {
      if (STATIC[f.key]) {
        const help = document.querySelector(`#run-form [data-help="${CSS.escape(f.key)}"]`);
        if (help) help.textContent = f.help || "";
        continue;
      }
      const el = makeControl(f);
      $("fields-" + f.group).append(fieldBox(f, el));
      if (f.group === "advanced") advanced += 1;
    }
    state.advancedCount = advanced;
    options($("run-method"), (form.methods || []).map((m) => [m, m]));
    options($("run-models"), (form.models || []).map((m) => [m.id, m.label || m.id]));
    options($("run-preset"), [["", () => t("common.noneParen")], ...(form.presets || []).map((p) => [p.name, p.name])]);
    refreshRunMenus();
    if (form.formats) options($("upload-format"), [["", () => t("data.detect")], ...form.formats.map((f) => [f, f])]);
    const maxSeq = schemaOf("max_seq_length");
    if (maxSeq && typeof maxSeq.default === "number") attr($("upload-max-seq"), "placeholder", "data.theDefault", { n: maxSeq.default });
    state.exportTypes = { gguf: form.gguf_types || [], adapter: form.adapter_types || [] };
    syncExportType();
    syncExportNote();
    resetForm();
  }

  /** The runs a new run may start from or take as reference, again (a train job has just ended). */
  async function refreshFormRuns() {
    const f = await api("GET", "/api/studio/form");
    if (!state.form) return;
    state.form.runs = f.runs || [];
    refreshRunMenus();
    syncExportNote();
  }

  /** The menus of runs with an adapter: start_from and DPO's reference. */
  function refreshRunMenus() {
    runOptions($("run-start-from"), "run.newAdapter");
    const ref = controlOf("reference_adapter_file");
    if (ref) runOptions(ref, "run.refBase");
  }

  function setControl(el, f, value) {
    if (f && f.type === "rewards") setRewards(el, value);
    else if (el.type === "checkbox") el.checked = Boolean(value);
    else if (value === null || value === undefined) el.value = "";
    else if (f && f.type === "list" && Array.isArray(value)) el.value = value.join(", ");
    else el.value = typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  /** A control's value as the config takes it (null: not set). */
  function readControl(el, f) {
    if (f.type === "rewards") return readRewards(el);
    if (el.type === "checkbox") return el.checked;
    const text = el.value.trim();
    if (f.type === "int" || f.type === "float") return text === "" ? null : Number(text);
    if (text === "") return f.type === "str" && !f.nullable ? "" : null;
    if (f.type === "json") return parseLoose(text);
    if (f.type === "list") return text.split(",").map((s) => s.trim()).filter(Boolean);
    return el.value;
  }

  /** A value typed for a mapping key (lr_schedule, optimizer_config): JSON when it parses, else the text, which the
   * server then refuses in its own words. */
  function parseLoose(text) {
    try { return JSON.parse(text); } catch (_) { return text.trim(); }
  }

  function resetForm() {
    const d = state.form.defaults || {};
    $("run-model").value = d.model ?? "";
    $("run-data").value = d.data ?? "";
    $("run-method").value = d.method ?? (state.form.methods || [])[0] ?? "";
    $("run-name").value = "";
    $("run-preset").value = "";
    $("run-start-from").value = "";
    for (const f of schemaList()) {
      const el = !STATIC[f.key] && controlOf(f.key);
      if (el) setControl(el, f, f.default);
    }
    applyStartFrom();
  }

  function applyPreset() {
    const preset = (state.form.presets || []).find((p) => p.name === $("run-preset").value);
    if (!preset) return;
    const v = preset.values || {};
    if (v.model !== undefined) $("run-model").value = v.model;
    if (v.data !== undefined) $("run-data").value = v.data ?? "";
    if (v.method !== undefined) $("run-method").value = v.method;
    // Each key along its dotted path: an object-valued key (lr_schedule) stays whole; one the preset leaves out
    // goes back to its default.
    for (const f of schemaList()) {
      const el = !STATIC[f.key] && controlOf(f.key);
      if (!el) continue;
      const value = valueAt(v, f.key);
      setControl(el, f, value === undefined ? f.default : value);
    }
    applyStartFrom();
  }

  /** A warm start: the run's base, method and adapter shapes, filled in and locked; unlocked when none. */
  function applyStartFrom() {
    const name = $("run-start-from").value;
    const run = ((state.form && state.form.runs) || []).find((r) => r.name === name);
    for (const key of LOCKED_BY_START) {
      const el = controlOf(key);
      if (!el) continue;
      el.disabled = Boolean(run);
      if (run) setControl(el, schemaOf(key), key === "method" ? run.method : key === "model" ? run.model : valueAt(run, key));
    }
    $("adapter-locked").hidden = !run;
    say($("adapter-locked"), run ? "run.locked" : null, run ? { name: run.name } : undefined);
    syncForm();
  }

  /** What the reference menu's first entry means: the warm start's adapter for DPO, the base otherwise (GRPO's
   * reference is the base with the adapter off, as in the terminal). */
  function syncReferenceLabel(mode) {
    const ref = controlOf("reference_adapter_file");
    const name = $("run-start-from").value;
    const fromStart = Boolean(name) && mode === "dpo";
    if (ref) say(ref.options[0], fromStart ? "run.refFromStart" : "run.refBase", fromStart ? { name } : undefined);
  }

  /** Hide the fields that do not apply (and the groups left empty), say what DoRA means for export. */
  function syncForm() {
    const current = { method: $("run-method").value, train_mode: (controlOf("train_mode") || {}).value };
    for (const f of schemaList()) {
      const box = fieldOf(f.key);
      if (!box) continue;
      box.hidden = !Object.entries(f.when || {}).every(([k, allowed]) => allowed.includes(current[k]));
    }
    for (const g of HIDEABLE_GROUPS) {
      $("group-" + g).hidden = ![...$("fields-" + g).querySelectorAll(".field")].some((b) => !b.hidden);
    }
    syncReferenceLabel(current.train_mode);
    const epochs = controlOf("epochs"), iters = controlOf("iters");
    if (epochs && iters) iters.disabled = epochs.value.trim() !== "";
    const note = $("run-method-note");
    note.hidden = current.method !== "dora";
    say(note, current.method === "dora" ? "run.doraNote" : null);
    refreshForm();
  }

  /** The form's values: model, data, method, name and start_from, plus every key that applies and differs from its
   * default (nested as in lora_config.yaml), so the command shows only what was changed. */
  function formValues() {
    const values = {};
    const start = $("run-start-from").value;
    if (start) values.start_from = start;
    if (!$("run-model").disabled) values.model = $("run-model").value.trim();
    values.data = $("run-data").value.trim();
    if (!$("run-method").disabled) values.method = $("run-method").value;
    const name = $("run-name").value.trim();
    if (name) values.name = name;
    for (const f of schemaList()) {
      if (STATIC[f.key]) continue;
      const el = controlOf(f.key), box = fieldOf(f.key);
      if (!el || el.disabled || !box || box.hidden) continue;
      const v = readControl(el, f);
      if (JSON.stringify(v) === JSON.stringify(f.default ?? null)) continue;
      const path = f.key.split(".");
      let at = values;
      for (const p of path.slice(0, -1)) at = at[p] = at[p] || {};
      at[path[path.length - 1]] = v;
    }
    return values;
  }

  // ---- the server's answer: the command, the YAML, the estimate, or the field it refuses ----

  /** The form key a server message names: "config key 'lora_parameters.dropout' must …", "key 'method': …",
   * "run name 'x': …"; a nested path (lr_schedule.arguments[0]) is its top key's field. */
  function keyOfError(message) {
    let m = /^(?:unknown )?(?:config )?key '([^']+)'/.exec(message);
    if (m) {
      let key = m[1];
      if (key === "fine_tune_type" || key === "quantize") return "method";
      while (key && !fieldOf(key)) {
        const shorter = key.replace(/(\.[^.[\]]*|\[\d+\])$/, "");
        key = shorter === key ? "" : shorter;
      }
      return key || null;
    }
    if (/^run name /.test(message)) return "name";
    if (/cannot pack; set pack: false/.test(message)) return "pack";
    return null;
  }

  function clearFieldErrors() {
    for (const row of document.querySelectorAll("#run-form .reward-row.invalid")) row.classList.remove("invalid");
    for (const box of document.querySelectorAll("#run-form .field.invalid")) {
      box.classList.remove("invalid");
      const err = box.querySelector(".field-error");
      err.hidden = true;
      err.textContent = "";
    }
  }

  function markField(message) {
    const key = keyOfError(message);
    const box = key && fieldOf(key);
    if (!box || box.hidden) return false;
    box.classList.add("invalid");
    // A reward the message names by its place (rewards[1]) is marked itself; the list as a whole otherwise.
    const place = /^config key 'rewards\[(\d+)\]'/.exec(message);
    const rows = [...box.querySelectorAll(".reward-row")];
    for (const [i, row] of rows.entries()) row.classList.toggle("invalid", !place || Number(place[1]) === i);
    const err = box.querySelector(".field-error");
    err.textContent = message;
    err.hidden = false;
    const details = box.closest("details");
    if (details) details.open = true;
    return true;
  }

  /** "(17 settings, 3 changed)": what the collapsed group holds, and how much of it differs from the defaults. */
  function countAdvanced() {
    const changed = schemaList().filter((f) => {
      const el = f.group === "advanced" && controlOf(f.key), box = fieldOf(f.key);
      return el && !el.disabled && box && !box.hidden && JSON.stringify(readControl(el, f)) !== JSON.stringify(f.default ?? null);
    }).length;
    const all = state.advancedCount ?? 0;
    say($("advanced-count"), changed ? "run.advancedChanged" : "run.advancedCount", { all, changed });
  }

  /** Until the server has answered for the form as it is now, what the panel shows is not the form's. */
  function markResolved(stale) {
    $("run-resolved").classList.toggle("stale", stale);
    say($("run-resolved-note"), stale ? "run.updating" : null);
  }

  function refreshForm() {
    state.formSeq = (state.formSeq || 0) + 1;
    countAdvanced();
    $("run-start").disabled = true;
    markResolved(true);
    clearTimeout(state.formTimer);
    state.formTimer = setTimeout(resolveForm, 300);
  }

  async function resolveForm() {
    const seq = state.formSeq;
    const status = $("run-status");
    let spec = null, failure = null;
    try {
      spec = await api("POST", "/api/studio/form", { values: formValues() });
    } catch (err) { failure = err; }
    if (seq !== state.formSeq) return; // the form changed meanwhile: a newer answer is on its way
    clearFieldErrors();
    markResolved(false);
    if (spec) {
      $("run-yaml").textContent = spec.yaml;
      $("run-yaml").hidden = false;
      $("run-command").textContent = spec.command;
      $("run-start").disabled = false;
      say(status, "run.folder", { name: spec.name });
      status.classList.remove("error");
      renderEstimate(spec.estimate);
      return;
    }
    // Nothing that was shown still holds: no command, no config, no estimate.
    say($("run-command"), "run.formProblem");
    $("run-yaml").textContent = "";
    $("run-yaml").hidden = true;
    renderEstimate(null);
    $("run-start").disabled = true;
    const marked = markField(failure.message);
    if (marked) say(status, "run.fixMarked");
    else status.textContent = failure.message;
    status.classList.add("error");
  }

  function renderEstimate(est) {
    $("run-estimate").hidden = !est;
    if (!est) return;
    const tokens = typeof est.tokens === "number" ? est.tokens.toLocaleString("en-US") : "–";
    if (typeof est.steps === "number") say($("est-tokens"), "est.tokensInSteps", { tokens, steps: est.steps });
    else $("est-tokens").textContent = tokens;
    live($("est-time"), () => (typeof est.seconds === "number" ? t("est.about", { what: duration(est.seconds) }) : t("est.unmeasured")));
    live($("est-memory"), () => (typeof est.peak_memory_gb === "number"
      ? t("est.about", { what: `${fmt(est.peak_memory_gb, 2)} GB` }) : t("est.unmeasured")));
    $("est-time").classList.toggle("unmeasured", typeof est.seconds !== "number");
    $("est-memory").classList.toggle("unmeasured", typeof est.peak_memory_gb !== "number");
    $("est-basis").textContent = est.basis || "";
  }

  async function startRun(e) {
    e.preventDefault();
    clearProblems();
    $("run-start").disabled = true;
    try {
      const data = await api("POST", "/api/studio/jobs", { kind: "train", values: formValues() });
      jobUpdated(data.job);
      showTab("jobs");
      selectJob(data.job.id);
    } catch (err) {
      if (markField(err.message)) say($("run-status"), "run.fixMarked");
      else $("run-status").textContent = err.message;
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
    if (job.kind === "train" && (p.step !== undefined || p.iters !== undefined)) return `${p.step ?? 0} / ${p.iters ?? "?"}`;
    return typeof p.total === "number" ? `${p.done ?? 0} / ${p.total}` : "";
  }

  const number = (v) => (typeof v === "number" && isFinite(v) ? v.toLocaleString("en-US", { maximumFractionDigits: 1 }) : "");

  /** A job's progress (`progress`: stage, done, total, unit, rate, rate_unit, eta_s, line) into `box`: a bar with
   * done / total, the rate and the ETA, and the job's own progress line word for word. Hidden when the job says
   * nothing of its progress. */
  function renderProgress(box, job) {
    const p = (job && job.progress) || {};
    const known = typeof p.total === "number" || typeof p.done === "number" || p.line;
    box.hidden = !known;
    if (box.hidden) { box.replaceChildren(); return; }
    const bar = make("progress");
    bar.max = typeof p.total === "number" && p.total > 0 ? p.total : 1;
    if (typeof p.total === "number" && typeof p.done === "number") bar.value = Math.min(p.done, bar.max);
    else bar.removeAttribute("value"); // indeterminate: the work has no known size yet
    attr(bar, "aria-label", p.stage ? "progress.stage" : "progress.label", { stage: p.stage });
    const facts = [];
    if (typeof p.done === "number") facts.push(typeof p.total === "number"
      ? `${number(p.done)} / ${number(p.total)}${p.unit ? " " + p.unit : ""}` : `${number(p.done)}${p.unit ? " " + p.unit : ""}`);
    if (typeof p.rate === "number") facts.push(`${number(p.rate)} ${p.rate_unit || ""}`.trim());
    // The numbers and units are the job's own; "ETA" and the duration's units are the page's.
    const head = make("div", "progress-head");
    const stage = p.stage ? make("span", "progress-stage", p.stage) : knownEl(make("span", "progress-stage"), "state.", job.state);
    head.append(stage, live(make("span", "progress-facts"), () =>
      facts.concat(typeof p.eta_s === "number" ? [t("progress.eta", { d: duration(p.eta_s) })] : []).join(" · ")));
    box.replaceChildren(head, bar);
    if (p.line) box.append(make("div", "progress-line", p.line));
  }

  function badge(job) {
    return knownEl(make("span", "badge state-" + job.state), "state.", job.state);
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
      tr.append(make("td", "", job.id), knownEl(make("td"), "kind.", job.kind), make("td", "", job.run ?? "–"), st,
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
      if (job.kind === "train") { loadModels().catch(() => {}); refreshFormRuns().catch(() => {}); }
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
    live($("job-title"), () => t("jobs.title", { kind: known("kind.", job.kind), id: job.id }) + (job.run ? ` · ${job.run}` : ""));
    const st = $("job-state");
    knownEl(st, "state.", job.state);
    st.className = "badge state-" + job.state;
    $("job-stop").hidden = job.state !== "running";
    $("job-resume").hidden = !RESUMABLE.has(job.state);
    $("job-cancel").hidden = job.state !== "queued";
    $("job-error").hidden = !job.error;
    $("job-error-text").textContent = job.error || "";
    renderProgress($("job-progress"), job);
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
    $("job-charts").hidden = job.kind !== "train";
    if (job.kind !== "train") showGrpo(null);
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
    const rows = state.metrics.get(job.run) || [];
    const series = [window.lossChart.series(job.run || "run", COLORS[0], rows)];
    const grpo = rows.some((r) => typeof r.reward === "number" || typeof r.val_reward === "number");
    showGrpo(grpo ? rows : null);
    let reward = 0;
    if (grpo) {
      const rewards = [window.lossChart.series(job.run || "run", COLORS[1], rows, { train: "reward", val: "val_reward" })];
      reward = window.lossChart.draw($("job-reward-chart"), rewards, t("jobs.noReward"), { id: "chart.reward", english: "reward" });
    }
    window.studioChart = { drawn: window.lossChart.draw($("job-chart"), series, t("jobs.noLoss")), reward };
  }

  /** A GRPO run's own figures from its newest training row (reward, groups without signal, sampling and update time
   * per step) and the answers it last sampled; `rows` null: none of it (not a GRPO run). What a model wrote goes in
   * with textContent only. */
  function showGrpo(rows) {
    const train = (rows || []).filter((r) => typeof r.reward === "number");
    const last = train[train.length - 1];
    $("job-reward-wrap").hidden = !rows;
    for (const el of document.querySelectorAll("#job-stats .grpo-stat")) el.hidden = !rows;
    $("job-reward").textContent = last ? fmt(last.reward) : "–";
    $("job-no-signal").textContent = last && typeof last.no_signal === "number" ? `${Math.round(last.no_signal * 100)}%` : "–";
    const sample = last && last.sample_s, step = last && last.step_s;
    $("job-sample-time").textContent = typeof sample === "number" && typeof step === "number"
      ? `${fmt(sample, 2)} s / ${fmt(Math.max(0, step - sample), 2)} s` : "–";
    const withSamples = train.filter((r) => Array.isArray(r.samples) && r.samples.length);
    const latest = withSamples[withSamples.length - 1];
    const box = $("job-samples");
    box.hidden = !latest;
    if (!latest) { box.querySelector("tbody").replaceChildren(); return; }
    say($("job-samples-title"), "jobs.samplesTitle", { step: latest.step });
    box.querySelector("tbody").replaceChildren(...latest.samples.map((sample) => {
      const tr = make("tr");
      const reward = typeof sample.reward === "number" ? fmt(sample.reward) : "–";
      tr.append(make("td", "", String(sample.prompt ?? "")), make("td", "", String(sample.answer ?? "")), make("td", "num", reward));
      return tr;
    }));
  }

  async function jobAction(action) {
    clearProblems();
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
    options($("upload-model"), [["", () => t("data.servedModel")], ...runs.map((m) => [m.id, m.label || m.id])], true);
    options($("ship-run"), runs.map((m) => [m.run, m.run]), true);
    $("eval-start").disabled = $("export-start").disabled = runs.length === 0;
    syncCompareDefaults();
    shipRunChanged();
  }

  async function compare(e) {
    e.preventDefault();
    clearProblems();
    const models = [$("compare-a").value, $("compare-b").value];
    const own = !$("compare-defaults-box").hidden && $("compare-defaults").checked;
    const body = {
      message: $("compare-message").value,
      models,
      max_tokens: Math.round(Number($("compare-max-tokens").value)),
      temperature: Number($("compare-temperature").value),
    };
    if (own) body.use_model_defaults = true; // each model's generation defaults win where it has them
    const status = $("compare-status");
    const box = $("compare-answers");
    say(status, "compare.answering");
    $("compare-send").disabled = true;
    const columns = models.map((id) => answerColumn(id));
    box.replaceChildren(...columns.map((c) => c.el));
    try {
      const streamed = await compareStream({ ...body, stream: true }, columns);
      if (!streamed) { // a server that answers in one piece
        const data = await api("POST", "/api/studio/compare", body);
        (data.answers || []).forEach((a, i) => columns[i] && finishColumn(columns[i], a, a.text));
      }
      say(status, null);
    } catch (err) {
      say(status, null);
      box.replaceChildren();
      showError(err.message);
    } finally {
      $("compare-send").disabled = false;
    }
  }

  /** POST /api/studio/compare with "stream": each model's answer appears as it is written (server-sent events:
   * {model, delta}, then {model, done, tokens, seconds, ttft_s, settings} or {model, error}; {done} ends it).
   * False when the server does not stream compare (it answers JSON or refuses the field). */
  async function compareStream(body, columns) {
    const res = await fetch("/api/studio/compare", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
    });
    const type = res.headers.get("Content-Type") || "";
    if (!type.startsWith("text/event-stream")) {
      let data = null;
      try { data = await res.json(); } catch (_) { /* not JSON */ }
      if (res.ok && data && data.answers) {
        data.answers.forEach((a, i) => columns[i] && finishColumn(columns[i], a, a.text));
        return true;
      }
      if (res.status === 400 && data && /\bstream\b/.test(data.error || "")) return false;
      throw new ApiFailure((data && data.error) || `compare failed: HTTP ${res.status}`, data);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const columnFor = (id) => columns.find((c) => c.id === id && !c.done) || columns.find((c) => c.id === id);
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue;
        let msg;
        try { msg = JSON.parse(data); } catch (_) { continue; }
        const col = typeof msg.index === "number" ? columns[msg.index] : msg.model !== undefined ? columnFor(msg.model) : null;
        if (col && typeof msg.delta === "string") {
          col.text += msg.delta;
          col.textEl.textContent = col.text;
        } else if (col && msg.error) {
          col.done = true;
          col.el.classList.remove("pending");
          col.textEl.textContent = col.text;
          col.el.append(make("div", "small error", msg.error));
          if (msg.settings) col.el.append(makeT("div", "muted small answer-settings", "compare.settings", { settings: settingsText(msg.settings) }));
        } else if (col && msg.done) {
          finishColumn(col, msg, col.text);
        }
      }
      if (done) break;
    }
    for (const col of columns) if (!col.done) finishColumn(col, {}, col.text);
    return true;
  }

  /** A compare column: the model's name, its generation defaults when it has any, and its answer as text. */
  function answerColumn(id) {
    const model = state.models.find((m) => m.id === id);
    const el = make("div", "card answer pending");
    el.dataset.model = id;
    el.append(make("h2", "", model ? model.label || id : id));
    const defaults = model && model.generation_defaults;
    if (defaults && typeof defaults === "object" && Object.keys(defaults).length) {
      el.append(makeT("div", "muted small answer-defaults", "compare.defaults", { settings: settingsText(defaults) }));
    }
    const textEl = make("div", "answer-text", "…");
    el.append(textEl);
    return { id, el, textEl, text: "", done: false };
  }

  function settingsText(settings) {
    return Object.entries(settings || {})
      .filter(([, v]) => v !== null && v !== undefined && typeof v !== "object")
      .map(([k, v]) => `${k} ${v}`).join(" · ");
  }

  /** The answer's end: its text, tokens, time (to the first token too), its prompt tokens read from the prompt cache
   * and the settings it was generated with. */
  function finishColumn(col, answer, text) {
    col.done = true;
    col.el.classList.remove("pending");
    col.textEl.textContent = text ?? "";
    if (answer.error) col.el.append(make("div", "small error", answer.error));
    const meta = () => [
      answer.tokens === 1 ? t("compare.oneToken") : t("compare.tokens", { n: answer.tokens ?? "?" }),
      `${fmt(answer.seconds, 2)} s`,
      ...(typeof answer.ttft_s === "number" ? [t("compare.firstToken", { s: fmt(answer.ttft_s, 2) })] : []),
      ...(typeof answer.switch_ms === "number" ? [t("compare.switch", { ms: fmt(answer.switch_ms, 1) })] : []),
      ...(typeof answer.cached_tokens === "number" && typeof answer.prompt_tokens === "number"
        ? [t("compare.cached", { cached: answer.cached_tokens, prompt: answer.prompt_tokens })] : []),
    ].join(" · ");
    col.el.append(live(make("div", "muted small answer-meta"), meta));
    if (answer.settings) col.el.append(makeT("div", "muted small answer-settings", "compare.settings", { settings: settingsText(answer.settings) }));
  }

  function syncCompareDefaults() {
    const has = state.models.some((m) => m.generation_defaults && Object.keys(m.generation_defaults).length);
    $("compare-defaults-box").hidden = !has;
    const own = has && $("compare-defaults").checked;
    $("compare-max-tokens").disabled = $("compare-temperature").disabled = own;
  }

  // ---- Evaluate and ship -----------------------------------------------------------------------------------------

  async function startJob(body, status) {
    say(status, "ship.starting");
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
    clearProblems();
    $("eval-result").hidden = true;
    const job = await startJob({ kind: "eval", run: $("ship-run").value, ...evalOptions() }, $("eval-status"));
    if (job) { state.evalJob = job.id; renderEval(job); }
  }

  /** The eval's limit and max_tokens, where given. */
  function evalOptions() {
    const out = {};
    const limit = $("eval-limit").value.trim(), maxTokens = $("eval-max-tokens").value.trim();
    if (limit) out.limit = Number(limit);
    if (maxTokens) out.max_tokens = Number(maxTokens);
    return out;
  }

  /** What the eval will cost, before Start (POST /api/studio/jobs/estimate); nothing where the server has no
   * estimate to give. */
  function refreshEvalEstimate() {
    clearTimeout(state.evalEstimateTimer);
    state.evalEstimateTimer = setTimeout(async () => {
      const el = $("eval-estimate");
      const run = $("ship-run").value;
      const seq = (state.evalEstimateSeq = (state.evalEstimateSeq || 0) + 1);
      if (!run) { el.textContent = ""; return; }
      try {
        const est = await api("POST", "/api/studio/jobs/estimate", { kind: "eval", run, ...evalOptions() });
        if (seq !== state.evalEstimateSeq) return;
        const line = () => {
          const parts = [];
          if (typeof est.examples === "number") parts.push(est.examples === 1 ? t("long.one") : t("long.many", { n: number(est.examples) }));
          if (typeof est.budget_tokens === "number") {
            const upTo = { n: number(est.budget_tokens), passes: est.passes };
            parts.push(t(typeof est.passes === "number" ? "ship.upToPasses" : "ship.upTo", upTo));
          }
          parts.push(typeof est.seconds === "number" ? t("est.about", { what: duration(est.seconds) }) : t("ship.timeUnmeasured"));
          return t("ship.estimate", { parts: parts.join(" · ") });
        };
        el.replaceChildren(live(make("span", "estimate-line"), line));
        if (est.basis) el.append(make("span", "estimate-basis", est.basis));
        el.classList.remove("error");
      } catch (err) {
        if (seq !== state.evalEstimateSeq) return;
        const unsupported = err.status === 404 || err.status === 405;
        el.textContent = unsupported ? "" : err.message; // a server without estimates says nothing
        el.classList.toggle("error", !unsupported);
      }
    }, 300);
  }

  function shipRunChanged() {
    if (state.shipRun === $("ship-run").value) return;
    state.shipRun = $("ship-run").value;
    $("eval-result").hidden = true;
    refreshEvalEstimate();
    loadEvals();
    syncExportNote();
  }

  function jobStatusText(job) {
    if (job.state === "failed") return job.error ? t("ship.failed", { error: job.error }) : t("ship.failedSeeJobs");
    const p = job.progress || {};
    const head = t("ship.jobState", { id: job.id, state: known("state.", job.state) });
    if (p.line || typeof p.total === "number") return head; // the bar below says the rest
    const last = (job.log_tail || []).filter((l) => l.trim()).slice(-1)[0];
    return head + (last && !TERMINAL.has(job.state) ? ` · ${last}` : "");
  }

  function renderEval(job) {
    live($("eval-status"), () => jobStatusText(job));
    renderProgress($("eval-progress"), job);
    if (job.state !== "done" || !job.result) return;
    $("eval-progress").hidden = true; // the scores below say it has finished
    if (job.run !== $("ship-run").value) return;
    const summary = job.result.metrics || {};
    const entry = { ...entryOf(summary), job: job.id, time: job.ended };
    showEval(entry, job.result.predictions || []);
    // The server's labelled entry of this eval, the one a reload shows, where it keeps them.
    api("GET", `/api/studio/runs/${encodeURIComponent(job.run)}/evals`).then((data) => {
      const labelled = (data.evals || []).find((e) => e.job === job.id);
      if (labelled && state.evalJob === job.id) showEval(labelled, job.result.predictions || []);
    }).catch(() => {});
  }

  // What `eval` reports (inference/evaluate.py METRICS): label and how values show, for a result the server has
  // not labelled (a job's metrics.json as it was written).
  const SCORES = [
    ["loss", "Loss", "decimal", 3], ["perplexity", "Perplexity", "decimal", 2], ["pairs", "Pairs", "integer"],
    ["preference_accuracy", "Preference accuracy", "percent"], ["logp_margin", "Log-prob margin", "decimal", 3],
    ["n", "Answers scored", "integer"], ["exact_match", "Exact match", "percent"],
    ["label_accuracy", "Label accuracy", "percent"], ["bleu4", "BLEU-4", "decimal", 3],
    ["rouge_l", "ROUGE-L", "decimal", 3], ["length_ratio", "Length ratio", "decimal", 2],
  ];

  function shownValue(v, kind, digits) {
    if (v === null || v === undefined) return t("ship.na");
    if (kind === "percent") return `${(v * 100).toFixed(1)}%`;
    if (kind === "integer") return String(Math.round(v));
    return v.toFixed(digits ?? 3);
  }

  /** Columns of raw scores ({base: {loss: …}, tuned: {…}}) as the server's labelled rows. */
  function labelRows(columns) {
    const names = Object.keys(columns || {});
    const known = SCORES.map(([key]) => key);
    const keys = [...known, ...new Set(names.flatMap((n) => Object.keys(columns[n])).filter((k) => !known.includes(k)))];
    return keys.filter((key) => names.some((n) => key in columns[n] && (columns[n][key] === null || typeof columns[n][key] === "number")))
      .map((key) => {
        const [, label, kind, digits] = SCORES.find(([k]) => k === key) || [key, key.replace(/_/g, " "), "decimal", 3];
        const values = Object.fromEntries(names.map((n) => [n, columns[n][key] ?? null]));
        const shown = Object.fromEntries(names.map((n) => [n, key in columns[n] ? shownValue(columns[n][key], kind, digits) : "-"]));
        return { key, label, kind, digits, values, shown };
      });
  }

  /** A job's metrics.json in the shape of GET /api/studio/runs/<name>/evals' entries. */
  function entryOf(summary) {
    const columns = summary.metrics || {};
    const groups = summary.groups || {};
    const values = [...new Set(Object.values(groups).flatMap((g) => Object.keys(g)))].sort();
    return {
      split: summary.split, limit: summary.limit ?? null, columns: Object.keys(columns), metrics: labelRows(columns),
      by_field: summary.by_field || null,
      groups: Object.fromEntries(values.map((v) => [v, labelRows(Object.fromEntries(Object.entries(groups).map(([c, g]) => [c, g[v] || {}])))])),
    };
  }

  function showEval(entry, predictions) {
    const split = entry.split ?? "test";
    if (typeof entry.limit === "number") say($("eval-where"), "ship.whereLimit", { split, n: entry.limit });
    else say($("eval-where"), "ship.where", { split });
    $("eval-when").textContent = entry.time ? `· ${when(entry.time)}` : "";
    const columns = entry.columns || [];
    const tables = [[() => t("ship.all"), entry.metrics || []]];
    for (const [v, rows] of Object.entries(entry.groups || {})) tables.push([`${entry.by_field} = ${v}`, rows]);
    $("eval-tables").replaceChildren(...tables.map(([title, rows]) => scoreTable(title, columns, rows)));
    $("eval-predictions-box").hidden = !predictions.length;
    predictionsTable(predictions, columns);
    $("eval-result").hidden = false;
  }

  /** A run's finished evals (GET /api/studio/runs/<name>/evals), so they show after a reload too: the newest in
   * the result panel, unless a job's result is showing. Quiet where the server keeps none. */
  async function loadEvals() {
    const run = $("ship-run").value;
    if (!run) return;
    let data;
    try {
      data = await api("GET", `/api/studio/runs/${encodeURIComponent(run)}/evals`);
    } catch (_) { return; }
    if (run !== $("ship-run").value || !$("eval-result").hidden) return; // another run picked, or a job's result shown
    const newest = (data.evals || [])[0];
    if (newest) showEval(newest, []);
  }

  /** One table: a row per score (its label), a column per model ("base", "tuned"), and the change when both are
   * there, shown as the score is (a percent as a percent; no change for a count). */
  function scoreTable(title, columns, rows) {
    const both = columns.length === 2 && columns[0] === "base" && columns[1] === "tuned";
    const table = make("table", "runs-table score-table");
    const head = make("tr");
    // The title is the page's "all" (a function) or the server's `field = value`; base and tuned are eval's names.
    head.append(typeof title === "function" ? live(make("th"), title) : make("th", "", title));
    for (const c of columns) head.append(knownEl(make("th", "num"), "column.", c));
    if (both) head.append(makeT("th", "num", "ship.change"));
    table.append(head);
    for (const row of rows) {
      const tr = make("tr");
      tr.dataset.metric = row.key;
      tr.append(live(make("td"), () => word(row.label || row.key)));
      for (const c of columns) tr.append(make("td", "num", (row.shown || {})[c] ?? "-"));
      if (both) {
        const [a, b] = columns.map((c) => (row.values || {})[c]);
        const ok = typeof a === "number" && typeof b === "number" && row.kind !== "integer";
        const d = ok ? b - a : 0;
        const digits = row.digits ?? (SCORES.find(([k]) => k === row.key) || [])[3] ?? 3;
        tr.append(make("td", "num", ok ? (d >= 0 ? "+" : "−") + shownValue(Math.abs(d), row.kind, digits) : ""));
      }
      table.append(tr);
    }
    return table;
  }

  function predictionsTable(rows, columns) {
    const table = $("eval-predictions");
    const head = make("tr");
    for (const id of ["ship.colWhere", "ship.colPrompt", "ship.colExpected"]) head.append(makeT("th", "", id));
    for (const c of columns) head.append(knownEl(make("th"), "column.", c));
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
    clearProblems();
    $("export-result").hidden = true;
    const format = $("export-format").value;
    const body = { kind: "export", run: $("ship-run").value, format };
    const type = $("export-type").value;
    if (format !== "hf" && type) body.type = type;
    const job = await startJob(body, $("export-status"));
    if (job) { state.exportJob = job.id; renderExport(job); }
  }

  /** llama.cpp's command for an export job's files: the model alone, or (`--adapter-only`) the base with the
   * adapter, RUN-lora-TYPE.gguf (a run may have "-lora-" in its own name: a fused RUN-TYPE.gguf is no adapter). */
  function llamaLine(files, job) {
    const gguf = files.filter((f) => /\.gguf$/i.test(f)).map((f) => f.split("/").pop());
    const adapterOnly = /(^|\s)--adapter-only(\s|$)/.test(job.command || "");
    const adapter = adapterOnly
      ? gguf.find((f) => job.run && f.startsWith(`${job.run}-lora-`)) || gguf.find((f) => /-lora-/.test(f)) : undefined;
    const base = gguf.find((f) => f !== adapter);
    if (adapter && base) return `llama-server -m ${base} --lora ${adapter}`;
    return base ? `llama-server -m ${base}` : "";
  }

  function renderExport(job) {
    live($("export-status"), () => jobStatusText(job));
    renderProgress($("export-progress"), job);
    if (job.state !== "done" || !job.result) return;
    $("export-progress").hidden = true; // the files below say it has finished
    const files = job.result.files || [];
    $("export-files").replaceChildren(...files.map((name) => {
      const li = make("li");
      const a = make("a", "download", name);
      a.href = `/api/studio/jobs/${encodeURIComponent(job.id)}/files/${encodeURIComponent(name)}`;
      a.setAttribute("download", name.split("/").pop());
      li.append(a);
      return li;
    }));
    const llama = llamaLine(files, job);
    $("ollama-box").hidden = !job.result.ollama;
    $("ollama-line").textContent = job.result.ollama || "";
    $("llama-box").hidden = !llama;
    $("llama-line").textContent = llama;
    say($("ollama-copied"), null);
    say($("llama-copied"), null);
    $("ollama-adapter-note").hidden = !(job.result.ollama && /--lora/.test(llama));
    $("run-lines").hidden = !job.result.ollama && !llama;
    $("export-result").hidden = false;
  }

  async function copyLine(lineId, statusId) {
    const text = $(lineId).textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      // No clipboard permission: select the line so Ctrl-C copies it.
      const range = document.createRange();
      range.selectNodeContents($(lineId));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      say($(statusId), "ship.selected");
      return;
    }
    say($(statusId), "ship.copied");
  }

  /** What the chosen format is for (llama.cpp, Ollama), and that a DoRA run has no adapter form. */
  function syncExportNote() {
    const format = $("export-format").value;
    for (const note of document.querySelectorAll("#export-form .export-note")) note.hidden = note.dataset.format !== format;
    const run = ((state.form && state.form.runs) || []).find((r) => r.name === $("ship-run").value);
    $("export-dora-note").hidden = !(run && run.fine_tune_type === "dora");
  }

  function syncExportType() {
    // A full GGUF and a LoRA adapter GGUF take different types; a fused HF folder none.
    const format = $("export-format").value;
    const types = (state.exportTypes || {})[format] || [];
    options($("export-type"), [["", () => t("ship.exportDefault")], ...types.map((type) => [type, type])], true);
    $("export-type").disabled = format === "hf";
  }

  // ---- start -----------------------------------------------------------------------------------------------------

  for (const b of document.querySelectorAll(".tabs [data-tab]")) {
    b.addEventListener("click", () => { clearProblems(); showTab(b.dataset.tab); });
  }
  window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
  $("upload-form").addEventListener("submit", upload);
  $("run-form").addEventListener("input", (e) => {
    const key = e.target.dataset.key;
    if (e.target.id === "run-preset" || key === "start_from") return; // their change handlers fill the form
    if (key === "method" || key === "train_mode" || key === "epochs") syncForm();
    else refreshForm();
  });
  $("run-preset").addEventListener("change", applyPreset);
  $("run-start-from").addEventListener("change", applyStartFrom);
  $("run-reset").addEventListener("click", resetForm);
  $("run-form").addEventListener("submit", startRun);
  $("job-stop").addEventListener("click", () => jobAction("stop"));
  $("job-resume").addEventListener("click", () => jobAction("resume"));
  $("job-cancel").addEventListener("click", () => jobAction("cancel"));
  $("compare-form").addEventListener("submit", compare);
  $("eval-form").addEventListener("submit", startEval);
  $("export-form").addEventListener("submit", startExport);
  $("export-format").addEventListener("change", () => { syncExportType(); syncExportNote(); });
  $("ollama-copy").addEventListener("click", () => copyLine("ollama-line", "ollama-copied"));
  $("llama-copy").addEventListener("click", () => copyLine("llama-line", "llama-copied"));
  $("ship-run").addEventListener("change", shipRunChanged);
  $("eval-limit").addEventListener("input", refreshEvalEstimate);
  $("eval-max-tokens").addEventListener("input", refreshEvalEstimate);
  $("compare-defaults").addEventListener("change", syncCompareDefaults);
  let resizeFrame = 0;
  window.addEventListener("resize", () => {
    if (!resizeFrame) resizeFrame = requestAnimationFrame(() => { resizeFrame = 0; drawJobChart(); });
  });
  document.addEventListener("i18n:change", drawJobChart); // the chart's words are drawn, not marked

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
