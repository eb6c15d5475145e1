/* The web chat: conversation list, messages, streaming answers, per-conversation settings.
 *
 * A menu picks the model that answers a conversation (its `model` setting: the base, a run or a checkpoint).
 * Text from the user is only ever put in the page with textContent; the model's answers go through
 * renderMarkdown (markdown.js), which escapes everything before adding its own tags. The page's own words come from
 * i18n.js's catalogue (t); i18n.text/live/attr mark them so that a language switch re-applies them.
 */
(function () {
  "use strict";

  const { t, text: say, live, attr, word } = window.i18n;
  // A conversation's title: the server's default one ("New chat") in the page's language, a real one as it is.
  const titleOf = (conv) => (conv.title ? word(conv.title) : t("chat.untitled"));

  const $ = (id) => document.getElementById(id);
  const els = {
    newChat: $("new-chat"),
    list: $("conversation-list"),
    noConversations: $("no-conversations"),
    title: $("conversation-title"),
    settingsToggle: $("settings-toggle"),
    clear: $("clear-chat"),
    settings: $("settings"),
    system: $("set-system"),
    temperature: $("set-temperature"),
    topP: $("set-top-p"),
    maxTokens: $("set-max-tokens"),
    settingsStatus: $("settings-status"),
    messages: $("messages"),
    empty: $("empty-state"),
    error: $("error-banner"),
    composer: $("composer"),
    prompt: $("prompt"),
    send: $("send"),
    stop: $("stop"),
    picker: $("model-picker"),
  };

  let defaults = { temperature: 0.7, top_p: 1.0, max_tokens: 512 };
  try {
    Object.assign(defaults, JSON.parse($("default-settings").textContent || "{}"));
  } catch (_) { /* keep the built-in defaults */ }

  const state = {
    conversations: [], // newest updated first, as the server sends them
    current: null, // the open conversation object (without messages)
    streaming: null, // {controller, conversationId} while an answer streams
    models: [], // from /api/studio/models: what a conversation can be answered by
    loadedModel: null, // the id of the model the server started with
  };

  // ---- HTTP ------------------------------------------------------------------------------------------------------

  async function api(method, url, body) {
    const opts = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(url, opts);
    let data = null;
    try { data = await res.json(); } catch (_) { /* empty or not JSON */ }
    if (!res.ok) throw new Error((data && data.error) || `${method} ${url} failed: HTTP ${res.status}`);
    return data;
  }

  const convUrl = (id) => "/api/conversations/" + encodeURIComponent(id);

  // ---- errors ----------------------------------------------------------------------------------------------------

  let errorTimer = null;
  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = false;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(() => { els.error.hidden = true; }, 8000);
  }
  function clearError() { els.error.hidden = true; }

  // ---- conversation list -----------------------------------------------------------------------------------------

  async function loadConversations() {
    const data = await api("GET", "/api/conversations");
    state.conversations = data.conversations || [];
    renderList();
  }


  // A small button in a conversation row; its click never also opens the conversation.
  function iconButton(kind, label, glyph, onClick) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = `icon ${kind}`;
    attr(button, "title", label);
    attr(button, "aria-label", label);
    button.textContent = glyph;
    button.addEventListener("click", (e) => { e.stopPropagation(); onClick(); });
    return button;
  }

  function renderList() {
    els.list.replaceChildren();
    els.noConversations.hidden = state.conversations.length > 0;
    for (const conv of state.conversations) {
      const li = document.createElement("li");
      li.className = "conversation-item" + (state.current && conv.id === state.current.id ? " active" : "");
      li.dataset.id = conv.id;

      const title = document.createElement("button");
      title.type = "button";
      title.className = "conversation-title";
      live(title, () => titleOf(conv));
      title.title = titleOf(conv);
      title.addEventListener("click", () => openConversation(conv.id));

      const rename = iconButton("rename", "common.rename", "✎", () => startRename(li, conv));
      const del = iconButton("delete", "common.delete", "×", () => deleteConversation(conv));

      li.append(title, rename, del);
      els.list.append(li);
    }
  }

  function startRename(li, conv) {
    const input = document.createElement("input");
    input.type = "text";
    input.className = "rename-input";
    input.value = conv.title || "";
    input.maxLength = 200;
    li.replaceChildren(input);
    input.focus();
    input.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== conv.title) {
        try {
          const updated = await api("PATCH", convUrl(conv.id), { title });
          replaceConversation(updated);
        } catch (err) { showError(err.message); }
      }
      renderList();
      if (state.current) showTitle();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); finish(true); }
      else if (e.key === "Escape") { e.preventDefault(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
  }

  async function deleteConversation(conv) {
    if (!window.confirm(t("chat.confirmDelete", { title: titleOf(conv) }))) return;
    try {
      if (state.streaming && state.streaming.conversationId === conv.id) state.streaming.controller.abort();
      await api("DELETE", convUrl(conv.id));
      state.conversations = state.conversations.filter((c) => c.id !== conv.id);
      if (state.current && state.current.id === conv.id) closeConversation();
      renderList();
    } catch (err) { showError(err.message); }
  }

  function replaceConversation(conv) {
    const i = state.conversations.findIndex((c) => c.id === conv.id);
    if (i >= 0) state.conversations[i] = conv; else state.conversations.unshift(conv);
    if (state.current && state.current.id === conv.id) state.current = conv;
  }

  // ---- one conversation ------------------------------------------------------------------------------------------

  function setHash(id) {
    const hash = id ? "#c=" + encodeURIComponent(id) : "";
    if (location.hash !== hash) history.replaceState(null, "", location.pathname + location.search + hash);
  }

  function hashId() {
    const m = /^#c=(.+)$/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }

  function showTitle() {
    const conv = state.current;
    if (conv) live(els.title, () => titleOf(conv));
    else say(els.title, null);
  }

  function closeConversation() {
    state.current = null;
    setHash(null);
    showTitle();
    els.messages.replaceChildren(els.empty);
    els.empty.hidden = false;
    fillSettings(null);
  }

  async function openConversation(id) {
    if (state.streaming) {
      if (state.streaming.conversationId === id) return;
      state.streaming.controller.abort();
    }
    clearError();
    let conv;
    try {
      conv = await api("GET", convUrl(id));
    } catch (err) {
      showError(err.message);
      return;
    }
    const messages = conv.messages || [];
    delete conv.messages;
    state.current = conv;
    replaceConversation(conv);
    setHash(conv.id);
    showTitle();
    renderList();
    fillSettings(conv);
    showModel(conv);
    els.messages.replaceChildren();
    for (const m of messages) addMessage(m.role, m.content);
    if (!messages.length) showEmptyConversation();
    scrollToBottom(true);
    els.prompt.focus();
  }

  function showEmptyConversation() {
    const hint = document.createElement("div");
    hint.className = "empty-state conversation-empty";
    say(hint, "chat.noMessages");
    els.messages.append(hint);
  }

  async function newConversation() {
    clearError();
    try {
      const conv = await api("POST", "/api/conversations", els.picker.hidden ? {} : { model: els.picker.value });
      state.conversations.unshift(conv);
      await openConversation(conv.id);
      return conv;
    } catch (err) {
      showError(err.message);
      return null;
    }
  }

  // ---- messages --------------------------------------------------------------------------------------------------

  function addMessage(role, content) {
    const hint = els.messages.querySelector(".empty-state");
    if (hint) hint.remove();
    const row = document.createElement("div");
    row.className = "message " + role;
    const who = document.createElement("div");
    who.className = "who";
    say(who, role === "user" ? "chat.you" : "chat.assistant");
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    row.append(who, bubble);
    setBubble(bubble, role, content);
    els.messages.append(row);
    return bubble;
  }

  function setBubble(bubble, role, content) {
    if (role === "user") bubble.textContent = content; // plain text, never HTML
    else bubble.innerHTML = window.renderMarkdown(content); // escaped first by markdown.js
  }

  function nearBottom() {
    const m = els.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  function scrollToBottom(force) {
    if (force || nearBottom()) els.messages.scrollTop = els.messages.scrollHeight;
  }

  // ---- sending and streaming -------------------------------------------------------------------------------------

  function setStreaming(on) {
    els.send.disabled = on;
    els.stop.hidden = !on;
    els.clear.disabled = on;
    document.body.classList.toggle("streaming", on);
  }

  /** Calls onEvent(obj) for each `data:` event of a text/event-stream body. */
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const dispatch = (block) => {
      const data = block.split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) return;
      let obj;
      try { obj = JSON.parse(data); } catch (_) { return; }
      onEvent(obj);
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
    buffer += decoder.decode();
    if (buffer.trim()) dispatch(buffer);
  }

  async function send() {
    const content = els.prompt.value;
    if (!content.trim() || state.streaming) return;
    clearError();
    if (!state.current) {
      const conv = await newConversation();
      if (!conv) return;
    }
    const conv = state.current;
    els.prompt.value = "";
    autoGrow();
    addMessage("user", content);
    const bubble = addMessage("assistant", "");
    const row = bubble.parentElement;
    row.classList.add("pending");
    scrollToBottom(true);

    const controller = new AbortController();
    state.streaming = { controller, conversationId: conv.id };
    setStreaming(true);

    let text = "";
    let finished = null;
    let failed = null;
    let frame = 0;
    const redraw = () => {
      frame = 0;
      setBubble(bubble, "assistant", text);
      scrollToBottom(false);
    };

    try {
      const res = await fetch(convUrl(conv.id) + "/messages", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ content }),
        signal: controller.signal,
      });
      if (!res.ok) {
        let msg = `HTTP ${res.status}`;
        try { msg = (await res.json()).error || msg; } catch (_) { /* not JSON */ }
        throw new Error(msg);
      }
      await readEvents(res, (ev) => {
        if (typeof ev.delta === "string") {
          text += ev.delta;
          row.classList.remove("pending");
          if (!frame) frame = requestAnimationFrame(redraw);
        } else if (ev.error) {
          failed = String(ev.error);
        } else if (ev.done) {
          finished = ev;
        }
      });
    } catch (err) {
      if (err.name !== "AbortError") failed = err.message;
    } finally {
      if (frame) cancelAnimationFrame(frame);
      state.streaming = null;
      setStreaming(false);
    }

    if (finished && finished.message && typeof finished.message.content === "string") text = finished.message.content;
    setBubble(bubble, "assistant", text);
    row.classList.remove("pending");
    if (controller.signal.aborted) appendNote(row, "chat.stopped");
    else if (failed) { appendNote(row, "chat.error", true, { message: failed }); showError(failed); }
    else if (finished && finished.finish_reason === "length") appendNote(row, "chat.lengthStop");
    // Only a whole answer has figures worth reading: a stopped or failed one's would describe a part.
    if (finished && finished.figures && !controller.signal.aborted && !failed) appendFigures(row, finished.figures);
    scrollToBottom(false);

    if (finished && finished.conversation) replaceConversation(finished.conversation);
    try {
      await loadConversations(); // the server may have titled the conversation from the first question
      const fresh = state.conversations.find((c) => c.id === conv.id);
      if (fresh && state.current && state.current.id === conv.id) { state.current = fresh; showTitle(); }
    } catch (err) { showError(err.message); }
    if (state.current && state.current.id === conv.id) els.prompt.focus();
  }

  function appendNote(row, id, isError, vars) {
    const note = document.createElement("div");
    note.className = "note" + (isError ? " error" : "");
    say(note, id, vars);
    row.append(note);
  }

  const num = (v) => typeof v === "number" && isFinite(v);

  /** The answer's figures as one line: tokens, decode speed, time to the first token, prompt tokens from the cache. */
  function figuresText(f) {
    const parts = [f.tokens === 1 ? t("chat.figures.oneToken") : t("chat.figures.tokens", { n: f.tokens ?? "?" })];
    // The first token's time (the prompt's prefill) is shown on its own, so the rate is the decode's alone.
    const decode = num(f.seconds) && num(f.ttft_s) ? f.seconds - f.ttft_s : 0;
    if (num(f.tokens) && f.tokens > 1 && decode > 0) {
      parts.push(t("chat.figures.rate", { rate: ((f.tokens - 1) / decode).toFixed(1) }));
    }
    if (num(f.ttft_s)) parts.push(t("chat.figures.firstToken", { s: f.ttft_s.toFixed(2) }));
    if (num(f.prompt_tokens) && num(f.cached_tokens)) {
      parts.push(f.cached_tokens > 0
        ? t("chat.figures.cached", { cached: f.cached_tokens, prompt: f.prompt_tokens })
        : t("chat.figures.uncached", { prompt: f.prompt_tokens }));
    }
    return parts.join(" · ");
  }

  function appendFigures(row, figures) {
    const line = document.createElement("div");
    line.className = "answer-figures muted small";
    live(line, () => figuresText(figures)); // textContent only, re-made on a language switch
    row.append(line);
  }

  function stop() {
    if (state.streaming) state.streaming.controller.abort();
  }

  async function clearConversation() {
    if (!state.current || state.streaming) return;
    if (!window.confirm(t("chat.confirmClear"))) return;
    try {
      await api("POST", convUrl(state.current.id) + "/clear");
      els.messages.replaceChildren();
      showEmptyConversation();
    } catch (err) { showError(err.message); }
  }

  // ---- settings --------------------------------------------------------------------------------------------------

  function fillSettings(conv) {
    const src = conv || defaults;
    els.system.value = (conv && conv.system) || "";
    els.temperature.value = src.temperature;
    els.topP.value = src.top_p;
    els.maxTokens.value = src.max_tokens;
    say(els.settingsStatus, null);
    for (const el of els.settings.elements) el.disabled = !conv;
  }

  async function saveSettings(e) {
    e.preventDefault();
    if (!state.current) return;
    const system = els.system.value;
    const body = {
      system: system.trim() ? system : null,
      temperature: Number(els.temperature.value),
      top_p: Number(els.topP.value),
      max_tokens: Math.round(Number(els.maxTokens.value)),
    };
    say(els.settingsStatus, "common.saving");
    try {
      const updated = await api("PATCH", convUrl(state.current.id), body);
      replaceConversation(updated);
      fillSettings(updated);
      say(els.settingsStatus, "common.saved");
    } catch (err) {
      say(els.settingsStatus, null);
      showError(err.message);
    }
  }

  function toggleSettings() {
    const open = els.settings.hidden;
    els.settings.hidden = !open;
    els.settingsToggle.setAttribute("aria-expanded", String(open));
  }

  // ---- the model answering --------------------------------------------------------------------------------------

  async function loadModels() {
    try {
      const data = await api("GET", "/api/studio/models");
      state.models = data.models || [];
      state.loadedModel = data.loaded || null;
    } catch (_) {
      state.models = []; // no studio: the conversation is answered by the served model, without a menu
    }
    els.picker.replaceChildren(...state.models.map((m) => {
      const opt = document.createElement("option");
      opt.value = m.id;
      opt.textContent = m.label || m.id;
      return opt;
    }));
    els.picker.hidden = state.models.length === 0;
    // The menu says which model answers; the served adapter's badge beside the label would contradict it.
    $("adapter-label").hidden = !els.picker.hidden;
    showModel(state.current);
  }

  function showModel(conv) {
    if (els.picker.hidden) return;
    const wanted = (conv && conv.model) || state.loadedModel;
    if (state.models.some((m) => m.id === wanted)) els.picker.value = wanted;
  }

  async function pickModel() {
    if (!state.current) return; // the next new chat starts with the picked model
    try {
      const updated = await api("PATCH", convUrl(state.current.id), { model: els.picker.value });
      replaceConversation(updated);
    } catch (err) {
      showError(err.message);
      showModel(state.current);
    }
  }

  // ---- composer --------------------------------------------------------------------------------------------------

  function autoGrow() {
    els.prompt.style.height = "auto";
    els.prompt.style.height = Math.min(els.prompt.scrollHeight, 240) + "px";
  }

  els.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  els.prompt.addEventListener("input", autoGrow);
  els.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
  els.stop.addEventListener("click", stop);
  els.newChat.addEventListener("click", newConversation);
  els.clear.addEventListener("click", clearConversation);
  els.settings.addEventListener("submit", saveSettings);
  els.settingsToggle.addEventListener("click", toggleSettings);
  els.picker.addEventListener("change", pickModel);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.streaming) stop(); });

  // ---- start -----------------------------------------------------------------------------------------------------

  async function start() {
    fillSettings(null);
    try {
      const info = await api("GET", "/api/info");
      if (info && info.defaults) Object.assign(defaults, info.defaults);
      if (!state.current) fillSettings(null);
    } catch (_) { /* the page still carries the model label and defaults */ }
    await loadModels();
    try {
      await loadConversations();
      const wanted = hashId();
      if (wanted && state.conversations.some((c) => c.id === wanted)) await openConversation(wanted);
      else if (state.conversations.length) await openConversation(state.conversations[0].id);
    } catch (err) {
      showError(err.message);
    } finally {
      document.body.dataset.ready = "1";
    }
  }

  window.chatApp = { state, openConversation, newConversation, send, stop, loadModels };
  start();
})();
