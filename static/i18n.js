/* The pages' words in English and Chinese: one catalogue, t(id, vars), and applyI18n(root) for the marked elements.
 *
 * The language: the saved choice (localStorage "mlx_ft_lang"), else the browser's (navigator.language "zh…": zh),
 * else English. The top bar's EN / 中文 switch saves a choice and re-applies the page at once, without a reload.
 *
 * Marks in the templates: data-i18n="id" (the element's text), data-i18n-rich="id" (text with `code`, *em*,
 * ==learned== and [link](href), each built as an element with textContent, never as HTML), data-i18n-title,
 * data-i18n-placeholder and data-i18n-aria-label. The page scripts mark what they build with i18n.text(el, id, vars),
 * i18n.live(el, fn) and i18n.attr(el, name, id, vars), so a switch re-applies those too; an element whose text a
 * script later sets as it is (a server's message, a command) loses its mark at the next switch.
 *
 * Not translated, on purpose: what a model, a file, a log or the server wrote (answers, errors, help texts, notes,
 * fix labels), config keys and values, commands, split and file names. The server's English labels of form fields
 * and scores have Chinese words in WORDS (i18n.word), used where known.
 *
 * The English texts are the templates' own texts, word for word (the browser tests compare them).
 */
(function () {
  "use strict";

  const STORAGE_KEY = "mlx_ft_lang";
  const LANGS = ["en", "zh"];

  const CATALOG = {
    en: {
      // ---- the top bar and what several pages share
      "nav.pages": "Pages",
      "nav.chat": "Chat",
      "nav.runs": "Runs",
      "nav.studio": "Studio",
      "nav.language": "Language",
      "topbar.served": "Model being served",
      "common.adapter": "Adapter",
      "common.model": "Model",
      "common.name": "Name",
      "common.format": "Format",
      "common.run": "Run",
      "common.stop": "Stop",
      "common.save": "Save",
      "common.saving": "Saving…",
      "common.saved": "Saved.",
      "common.noneParen": "(none)",
      "common.temperature": "Temperature",
      "common.topP": "Top-p",
      "common.maxTokens": "Max tokens",
      "common.stepIters": "Step / iters",
      "common.peakMemory": "peak memory",
      "common.rename": "Rename",
      "common.delete": "Delete",
      // ---- a state, a job kind, a data set's source, an eval column, as the server names them
      "state.queued": "queued",
      "state.running": "running",
      "state.stopping": "stopping",
      "state.stopped": "stopped",
      "state.interrupted": "interrupted",
      "state.failed": "failed",
      "state.done": "done",
      "state.cancelled": "cancelled",
      "kind.train": "train",
      "kind.eval": "eval",
      "kind.export": "export",
      "source.uploaded": "uploaded",
      "source.shipped": "shipped",
      "source.recipe": "recipe",
      "column.base": "base",
      "column.tuned": "tuned",
      "dur.hm": "{h}h {m}m",
      "dur.ms": "{m}m {s}s",
      "dur.s": "{s}s",
      // ---- chat
      "chat.conversations": "Conversations",
      "chat.new": "+ New chat",
      "chat.none": "No conversations yet.",
      "chat.baseModel": "base model",
      "chat.pickerTitle": "The model that answers in this conversation",
      "chat.settings": "Settings",
      "chat.clear": "Clear",
      "chat.clearTitle": "Delete every message of this conversation",
      "chat.system": "System prompt",
      "chat.emptyHint": "Start a new chat, or pick one on the left.",
      "chat.placeholder": "Message (Enter to send, Shift+Enter for a new line)",
      "chat.send": "Send",
      "chat.untitled": "New chat",
      "chat.confirmDelete": 'Delete "{title}" and all its messages?',
      "chat.noMessages": "No messages yet. Say something below.",
      "chat.you": "You",
      "chat.assistant": "Assistant",
      "chat.stopped": "stopped",
      "chat.error": "error: {message}",
      "chat.lengthStop": "stopped at the max tokens limit",
      "chat.figures.oneToken": "1 token",
      "chat.figures.tokens": "{n} tokens",
      "chat.figures.rate": "{rate} tokens/s",
      "chat.figures.firstToken": "first token {s} s",
      "chat.figures.cached": "{cached} of {prompt} prompt tokens from cache",
      "chat.figures.uncached": "prompt {prompt} tokens, none cached",
      "chat.confirmClear": "Delete every message of this conversation?",
      // ---- runs
      "runs.title": "Training runs",
      "runs.heading": "Runs",
      "runs.hint": "Click a row to plot it; tick *compare* to overlay other runs. A running run's curve updates every 2 seconds.",
      "runs.compare": "Compare",
      "runs.type": "Type",
      "runs.lastLoss": "Last loss",
      "runs.bestVal": "Best val loss",
      "runs.status": "Status",
      "runs.none": "No runs in the runs folder yet. Train one with `mlx_ft train`.",
      "runs.diffHeading": "How the overlaid runs' configs differ",
      "runs.diffNone": "Their configs are the same.",
      "runs.configOf": "Config of ",
      "runs.overlay": "Overlay this run on the chart",
      "runs.loss": "Loss",
      "runs.lossOf": "Loss: {names}",
      "runs.selectRun": "Select a run to plot its loss.",
      "runs.key": "key",
      "chart.aria": "Training and validation loss by step",
      "chart.noMetrics": "No metrics yet.",
      "chart.step": "step",
      "chart.loss": "loss",
      "chart.train": "{name} train",
      "chart.val": "{name} val",
      "chart.reward": "reward",
      "chart.rewardAria": "Training and validation reward by step",
      // ---- studio: tabs
      "tab.data": "1 · Data",
      "tab.run": "2 · New run",
      "tab.jobs": "3 · Jobs",
      "tab.compare": "4 · Compare",
      "tab.ship": "5 · Evaluate & ship",
      // ---- studio: Data
      "data.uploadHeading": "Upload data",
      "data.uploadHint": "Any file `prepare` reads (JSONL, JSON, CSV, TXT; a `dataset_info.json` with its files). *Check* inspects without storing anything; *Upload* stores the set under the server's data folder.",
      "data.files": "Files",
      "data.folder": "or a folder",
      "data.folderTitle": "a dataset_info.json folder: the files it names keep their paths",
      "data.nameFromFile": "(from the file name)",
      "data.detect": "detect",
      "data.tokenModel": "Model for token counts",
      "data.servedModel": "(the served model)",
      "data.configDefault": "(the config's default)",
      "data.theDefault": "{n} (the default)",
      "data.long": "Long examples",
      "data.longTitle": "how training cuts an example longer than max_seq_length (truncate)",
      "data.cutEnd": "cut at the end",
      "data.cutPrompt": "cut the prompt's start, keep the answer",
      "data.skipTitle": "skip_long: leave every example longer than max_seq_length out of the stored set",
      "data.skip": "skip the long ones (not stored)",
      "data.check": "Check",
      "data.upload": "Upload",
      "data.setsHeading": "Data sets",
      "data.setsHint": "Uploaded sets, the shipped samples and the recipes' data. *Preview* shows examples as the model sees them; ==marked text== is what the loss learns.",
      "data.source": "Source",
      "data.none": "No data sets yet.",
      "data.previewOf": "Preview of ",
      "data.preview": "Preview",
      "data.use": "Use for a run",
      "data.statistics": "Statistics",
      "data.prepare": "Prepare",
      "data.problem": "Nothing was stored: {n} problem",
      "data.problems": "Nothing was stored: {n} problems",
      "data.chooseFirst": "Choose files or a folder first.",
      "data.checking": "Checking…",
      "data.uploading": "Uploading…",
      "data.storedAs": "Stored as {name}.",
      "data.checked": "Checked: nothing stored.",
      "data.reading": "Reading {name}…",
      "data.prepared": "Prepared {name}.",
      "data.statsOnly": "{name}: statistics only.",
      "fact.name": "name",
      "fact.format": "format",
      "fact.splits": "splits",
      "fact.tokens": "tokens per example",
      "fact.tokensValue": "min {min} · mean {mean} · max {max}",
      "fact.over": "over max_seq_length",
      "fact.overValue": "{n} (cut at {limit} tokens)",
      "fact.stored": "stored",
      "fact.yes": "yes",
      "fact.checkedOnly": "no (checked only)",
      "fate.cut": "its end cut in training",
      "fate.prompt_cut": "its prompt's start cut in training",
      "fate.left_out": "left out in training: its prompt fills max_seq_length",
      "fate.skipped": "skipped: not stored",
      "long.one": "1 example",
      "long.many": "{n} examples",
      "long.title": "{n} longer than max_seq_length {limit}, by where your file has them",
      "long.titleSkipped": "Skipped: {n} longer than max_seq_length {limit}, by where your file has them",
      "long.item": " · {tokens} tokens · {fate}",
      "long.more": "and {n} more",
      "long.fixesStored": "{name} is stored as it is. Each way to keep the long examples stores a new set beside it, under the name on its button (a stored set is not replaced).",
      "long.fixesChecked": "Ways to keep them: each checks this upload again with that change (nothing is stored); Upload then stores it as the form says.",
      "long.storeAs": "Store as {name}: {label}",
      "preview.leftOut": " (left out: nothing to learn within max_seq_length)",
      "preview.promptCut": " (its prompt's start cut to fit max_seq_length)",
      "preview.cut": " (cut at max_seq_length)",
      "pair.chosen": "chosen",
      "pair.rejected": "rejected",
      // ---- studio: New run
      "run.heading": "New run",
      "run.basics": "Basics",
      "run.preset": "Preset",
      "run.presetHelp": "the defaults file, or a recipe's `lora_config.yaml`",
      "run.startFrom": "Start from",
      "run.newAdapter": "(a new adapter)",
      "run.data": "Data",
      "run.method": "Method",
      "run.name": "Run name",
      "run.dated": "(dated)",
      "run.modelTitle": "a built-in name, a model of the models folder (serve --models: a folder or a .gguf file) or a hub id",
      "run.preference": "Preference",
      "run.advanced": "Advanced",
      "run.advancedCount": "({all} settings)",
      "run.advancedChanged": "({all} settings, {changed} changed)",
      "run.estimate": "Before you start: an estimate",
      "run.estTokens": "tokens to train",
      "run.estTime": "time",
      "run.start": "Start training",
      "run.reset": "Defaults",
      "run.command": "The equivalent command",
      "run.resolved": "Resolved config (`config.yaml`)",
      "run.runOption": "{name} ({method}, on {base})",
      "run.notSet": "(not set)",
      "run.notSetJson": "(not set: JSON)",
      "run.listDefault": "(default; comma-separated)",
      "run.refBase": "(the base model, adapter off)",
      "run.refFromStart": "({name}'s adapter: where this run starts)",
      "run.locked": "The shapes of {name}'s adapter, which this run continues.",
      "run.doraNote": "DoRA exports as a fused GGUF only; pick LoRA to also get a small adapter GGUF",
      "run.updating": "(updating…)",
      "run.folder": "run folder: {name}",
      "run.formProblem": "(the form has a problem: see the marked field)",
      "run.fixMarked": "Fix the marked field.",
      "run.grpo": "GRPO: learning from rewards",
      "run.grpoHint": "Each step samples `group_size` answers to each prompt, scores them with the rewards, and learns towards the better ones. The page offers the built-in rewards only; a reward file's functions are for the terminal (`train --reward-file`).",
      "run.rewardName": "reward",
      "run.rewardWeight": "weight",
      "run.rewardWeightDefault": "(1.0)",
      "run.rewardAdd": "+ Add a reward",
      "run.rewardRemove": "Remove this reward",
      "run.rewardLabels": "label, label, …",
      "run.rewardPattern": "a regular expression",
      "est.tokensInSteps": "{tokens} in {steps} steps",
      "est.about": "about {what}",
      "est.unmeasured": "no measurement yet",
      // ---- studio: Jobs
      "jobs.heading": "Jobs",
      "jobs.hint": "One job runs at a time; later ones wait in the queue. *Stop* is Ctrl-C: it saves a checkpoint, and *Resume* continues exactly from it.",
      "jobs.job": "Job",
      "jobs.kind": "Kind",
      "jobs.state": "State",
      "jobs.started": "Started",
      "jobs.none": "No jobs yet. Start one from *New run*.",
      "jobs.resume": "Resume",
      "jobs.cancel": "Cancel",
      "jobs.step": "step",
      "jobs.loss": "loss",
      "jobs.valLoss": "val loss",
      "jobs.tps": "tokens/s",
      "jobs.ltps": "learned tokens/s",
      "jobs.eta": "ETA",
      "jobs.command": "Command",
      "jobs.log": "Log",
      "jobs.title": "{kind} job {id}",
      "jobs.noLoss": "No loss reported yet.",
      "jobs.noReward": "No reward reported yet.",
      "jobs.reward": "reward",
      "jobs.noSignal": "groups without signal",
      "jobs.sampleTime": "sampling / update per step",
      "jobs.samplesTitle": "Latest sampled answers (step {step})",
      "jobs.samplePrompt": "Prompt",
      "jobs.sampleAnswer": "Sampled answer",
      "jobs.sampleReward": "Reward",
      "progress.stage": "{stage} progress",
      "progress.label": "progress",
      "progress.eta": "ETA {d}",
      // ---- studio: Compare
      "compare.heading": "Compare two models",
      "compare.hint": "One message to two models side by side: the base, a run, or one of its checkpoints. Runs on the same base share one loaded model and swap adapters. To chat with one, pick it in the [chat](/chat) page's model menu.",
      "compare.left": "Left",
      "compare.right": "Right",
      "compare.ownDefaults": "use each model's own defaults",
      "compare.message": "Message",
      "compare.send": "Send to both",
      "compare.answering": "Answering…",
      "compare.settings": "settings: {settings}",
      "compare.defaults": "defaults: {settings}",
      "compare.oneToken": "1 token",
      "compare.tokens": "{n} tokens",
      "compare.firstToken": "first token {s} s",
      "compare.switch": "switch {ms} ms",
      "compare.cached": "cached {cached}/{prompt}",
      // ---- studio: Evaluate & ship
      "ship.evaluate": "Evaluate",
      "ship.limit": "Examples (limit)",
      "ship.limitTitle": "score at most this many examples of the test split",
      "ship.maxTokens": "Max answer tokens",
      "ship.evalDefault": "(eval's default)",
      "ship.start": "Evaluate against the base",
      "ship.starting": "Starting…",
      "ship.estimate": "Estimate: {parts}",
      "ship.upTo": "up to {n} tokens",
      "ship.upToPasses": "up to {n} tokens in {passes} passes",
      "ship.timeUnmeasured": "time: no measurement yet",
      "ship.failed": "failed: {error}",
      "ship.failedSeeJobs": "failed: see the Jobs tab",
      "ship.jobState": "job {id}: {state}",
      "ship.scoresOn": "Scores on ",
      "ship.where": "the {split} split",
      "ship.whereLimit": "the {split} split, at most {n} examples",
      "ship.all": "all",
      "ship.change": "change",
      "ship.na": "n/a",
      "ship.predictions": "Predictions",
      "ship.colWhere": "where",
      "ship.colPrompt": "prompt",
      "ship.colExpected": "expected",
      "ship.export": "Export",
      "ship.fmtGguf": "fused GGUF + Modelfile (Ollama)",
      "ship.fmtAdapter": "adapter GGUF + base GGUF (llama.cpp)",
      "ship.fmtHf": "fused Hugging Face folder",
      "ship.type": "GGUF type",
      "ship.typeTitle": "the type `export gguf --type` writes",
      "ship.exportDefault": "(export's default)",
      "ship.exportButton": "Export",
      "ship.noteGguf": "The adapter fused into the model, quantized: `ollama create NAME -f Modelfile` in Ollama, or `llama-server -m FILE.gguf` in llama.cpp. The way to ship to Ollama.",
      "ship.noteAdapter": "A few-MB adapter beside a base GGUF, for llama.cpp: `llama-server -m BASE.gguf --lora ADAPTER.gguf`. Its Modelfile's `ADAPTER` line works only in Ollama versions that still accept `ADAPTER`: a public report ([ollama/ollama#14969](https://github.com/ollama/ollama/pull/14969)) says Ollama 0.34.1 rejects Modelfiles with `ADAPTER`. For Ollama, export the fused GGUF.",
      "ship.doraNote": "DoRA exports as a fused GGUF only; pick LoRA to also get a small adapter GGUF.",
      "ship.noteHf": "A plain Hugging Face folder (safetensors, config, tokenizer, chat template) that `transformers` and `mlx_lm` load.",
      "ship.files": "Files",
      "ship.runIt": "Run it",
      "ship.copy": "Copy",
      "ship.selected": "Selected: press Ctrl-C (⌘-C) to copy.",
      "ship.copied": "Copied.",
      "ship.ollamaAdapterNote": "This Modelfile names the adapter with `ADAPTER`, which newer Ollama versions refuse (ollama/ollama#14969); llama.cpp's line works everywhere.",
    },
    zh: {
      "nav.pages": "页面",
      "nav.chat": "对话",
      "nav.runs": "训练记录",
      "nav.studio": "工作台",
      "nav.language": "语言",
      "topbar.served": "当前服务的模型",
      "common.adapter": "适配器",
      "common.model": "模型",
      "common.name": "名称",
      "common.format": "格式",
      "common.run": "训练",
      "common.stop": "停止",
      "common.save": "保存",
      "common.saving": "保存中…",
      "common.saved": "已保存。",
      "common.noneParen": "(无)",
      "common.temperature": "温度",
      "common.topP": "Top-p",
      "common.maxTokens": "最大 token 数",
      "common.stepIters": "步数 / 总步数",
      "common.peakMemory": "峰值内存",
      "common.rename": "重命名",
      "common.delete": "删除",
      "state.queued": "排队中",
      "state.running": "运行中",
      "state.stopping": "正在停止",
      "state.stopped": "已停止",
      "state.interrupted": "已中断",
      "state.failed": "失败",
      "state.done": "已完成",
      "state.cancelled": "已取消",
      "kind.train": "训练",
      "kind.eval": "评测",
      "kind.export": "导出",
      "source.uploaded": "已上传",
      "source.shipped": "自带示例",
      "source.recipe": "配方",
      "column.base": "基座模型",
      "column.tuned": "微调后",
      "dur.hm": "{h} 小时 {m} 分",
      "dur.ms": "{m} 分 {s} 秒",
      "dur.s": "{s} 秒",
      "chat.conversations": "对话列表",
      "chat.new": "+ 新对话",
      "chat.none": "还没有对话。",
      "chat.baseModel": "基座模型",
      "chat.pickerTitle": "在这个对话中回答的模型",
      "chat.settings": "设置",
      "chat.clear": "清空",
      "chat.clearTitle": "删除这个对话的全部消息",
      "chat.system": "系统提示词",
      "chat.emptyHint": "新建一个对话，或在左侧选择已有的对话。",
      "chat.placeholder": "输入消息（Enter 发送，Shift+Enter 换行）",
      "chat.send": "发送",
      "chat.untitled": "新对话",
      "chat.confirmDelete": "删除“{title}”及其全部消息？",
      "chat.noMessages": "还没有消息，在下方输入开始对话吧。",
      "chat.you": "你",
      "chat.assistant": "助手",
      "chat.stopped": "已停止",
      "chat.error": "出错：{message}",
      "chat.lengthStop": "已达到最大 token 数，回答到此为止",
      "chat.figures.oneToken": "1 个 token",
      "chat.figures.tokens": "{n} 个 token",
      "chat.figures.rate": "{rate} token/秒",
      "chat.figures.firstToken": "首个 token {s} 秒",
      "chat.figures.cached": "提示词 {prompt} 个 token 中 {cached} 个来自缓存",
      "chat.figures.uncached": "提示词 {prompt} 个 token，均未缓存",
      "chat.confirmClear": "删除这个对话的全部消息？",
      "runs.title": "训练记录",
      "runs.heading": "全部训练",
      "runs.hint": "点击一行即可绘制它的曲线；勾选“对比”可叠加其他训练的曲线。正在进行的训练，曲线每 2 秒刷新一次。",
      "runs.compare": "对比",
      "runs.type": "类型",
      "runs.lastLoss": "最新损失",
      "runs.bestVal": "最佳验证损失",
      "runs.status": "状态",
      "runs.none": "runs 文件夹里还没有训练记录。可以用 `mlx_ft train` 训练一个。",
      "runs.diffHeading": "叠加的训练之间的配置差异",
      "runs.diffNone": "它们的配置完全相同。",
      "runs.configOf": "配置：",
      "runs.overlay": "在图表上叠加这次训练",
      "runs.loss": "损失",
      "runs.lossOf": "损失：{names}",
      "runs.selectRun": "选择一次训练，绘制它的损失曲线。",
      "runs.key": "配置项",
      "chart.aria": "按步数显示的训练损失与验证损失",
      "chart.noMetrics": "还没有指标。",
      "chart.step": "步数",
      "chart.loss": "损失",
      "chart.train": "{name} 训练",
      "chart.val": "{name} 验证",
      "chart.reward": "奖励",
      "chart.rewardAria": "按步数显示的训练奖励与验证奖励",
      "tab.data": "1 · 数据",
      "tab.run": "2 · 新建训练",
      "tab.jobs": "3 · 任务",
      "tab.compare": "4 · 对比",
      "tab.ship": "5 · 评测与导出",
      "data.uploadHeading": "上传数据",
      "data.uploadHint": "`prepare` 能读取的任何文件（JSONL、JSON、CSV、TXT；或 `dataset_info.json` 连同它列出的文件）。“检查”只查看，不保存；“上传”把数据集存进服务器的数据文件夹。",
      "data.files": "文件",
      "data.folder": "或选择文件夹",
      "data.folderTitle": "含 dataset_info.json 的文件夹：其中列出的文件保持原有路径",
      "data.nameFromFile": "(取自文件名)",
      "data.detect": "自动识别",
      "data.tokenModel": "统计 token 数所用的模型",
      "data.servedModel": "(当前服务的模型)",
      "data.configDefault": "(配置的默认值)",
      "data.theDefault": "{n}（默认）",
      "data.long": "过长样本",
      "data.longTitle": "训练时如何截断超过 max_seq_length 的样本（truncate）",
      "data.cutEnd": "截掉末尾",
      "data.cutPrompt": "截掉提示词开头，保留回答",
      "data.skipTitle": "skip_long：保存时去掉所有超过 max_seq_length 的样本",
      "data.skip": "跳过过长样本（不保存）",
      "data.check": "检查",
      "data.upload": "上传",
      "data.setsHeading": "数据集",
      "data.setsHint": "已上传的数据集、自带的示例数据和各配方的数据。“预览”按模型实际看到的样子展示样本；==高亮部分==是损失要学习的内容。",
      "data.source": "来源",
      "data.none": "还没有数据集。",
      "data.previewOf": "预览：",
      "data.preview": "预览",
      "data.use": "用于训练",
      "data.statistics": "统计",
      "data.prepare": "准备",
      "data.problem": "未保存任何数据：发现 {n} 个问题",
      "data.problems": "未保存任何数据：发现 {n} 个问题",
      "data.chooseFirst": "请先选择文件或文件夹。",
      "data.checking": "检查中…",
      "data.uploading": "上传中…",
      "data.storedAs": "已保存为 {name}。",
      "data.checked": "检查完成：未保存任何数据。",
      "data.reading": "正在读取 {name}…",
      "data.prepared": "{name} 已准备好。",
      "data.statsOnly": "{name}：仅统计，未保存。",
      "fact.name": "名称",
      "fact.format": "格式",
      "fact.splits": "数据划分",
      "fact.tokens": "每条样本的 token 数",
      "fact.tokensValue": "最少 {min} · 平均 {mean} · 最多 {max}",
      "fact.over": "超过 max_seq_length",
      "fact.overValue": "{n}（超出 {limit} 个 token 的部分被截断）",
      "fact.stored": "已保存",
      "fact.yes": "是",
      "fact.checkedOnly": "否（仅检查）",
      "fate.cut": "训练时截掉末尾",
      "fate.prompt_cut": "训练时截掉提示词开头",
      "fate.left_out": "训练时被排除：提示词已占满 max_seq_length",
      "fate.skipped": "已跳过：未保存",
      "long.one": "1 条样本",
      "long.many": "{n} 条样本",
      "long.title": "{n}超过 max_seq_length {limit}，按在文件中的位置列出",
      "long.titleSkipped": "已跳过：{n}超过 max_seq_length {limit}，按在文件中的位置列出",
      "long.item": " · {tokens} 个 token · {fate}",
      "long.more": "还有 {n} 条",
      "long.fixesStored": "{name} 已按原样保存。下面每种保留过长样本的方式都会在旁边另存一个新数据集，名称见按钮（已保存的数据集不会被替换）。",
      "long.fixesChecked": "保留它们的方式：每个按钮都会按相应改动重新检查这次上传（不保存）；之后点“上传”即按表单当前的设置保存。",
      "long.storeAs": "另存为 {name}：{label}",
      "preview.leftOut": "（被排除：在 max_seq_length 之内没有可学习的内容）",
      "preview.promptCut": "（提示词开头被截掉，以适应 max_seq_length）",
      "preview.cut": "（在 max_seq_length 处截断）",
      "pair.chosen": "优选回答（chosen）",
      "pair.rejected": "劣选回答（rejected）",
      "run.heading": "新建训练",
      "run.basics": "基本设置",
      "run.preset": "预设",
      "run.presetHelp": "默认配置文件，或某个配方的 `lora_config.yaml`",
      "run.startFrom": "基于已有训练",
      "run.newAdapter": "(新的适配器)",
      "run.data": "数据",
      "run.method": "方法",
      "run.name": "训练名称",
      "run.dated": "(按日期时间命名)",
      "run.modelTitle": "内置模型名、models 文件夹中的模型（serve --models：一个文件夹或 .gguf 文件），或 Hub 上的模型 ID",
      "run.preference": "偏好训练",
      "run.advanced": "高级设置",
      "run.advancedCount": "(共 {all} 项)",
      "run.advancedChanged": "(共 {all} 项，已修改 {changed} 项)",
      "run.estimate": "开始之前：预估",
      "run.estTokens": "要训练的 token 数",
      "run.estTime": "耗时",
      "run.start": "开始训练",
      "run.reset": "恢复默认",
      "run.command": "等效命令",
      "run.resolved": "最终配置（`config.yaml`）",
      "run.runOption": "{name}（{method}，基于 {base}）",
      "run.notSet": "(未设置)",
      "run.notSetJson": "(未设置：JSON)",
      "run.listDefault": "(默认；用逗号分隔)",
      "run.refBase": "(基座模型，不加适配器)",
      "run.refFromStart": "({name} 的适配器：本次训练的起点)",
      "run.locked": "沿用 {name} 的适配器结构，本次训练在它的基础上继续。",
      "run.doraNote": "DoRA 只能导出为融合后的 GGUF；选 LoRA 还能额外得到一个小巧的适配器 GGUF",
      "run.updating": "(更新中…)",
      "run.folder": "训练文件夹：{name}",
      "run.formProblem": "(表单有问题：请查看标出的字段)",
      "run.fixMarked": "请修改标出的字段。",
      "run.grpo": "GRPO：从奖励中学习",
      "run.grpoHint": "每一步为每个提示采样 `group_size` 个回答，用奖励给它们打分，再朝得分更高的回答学习。页面只提供内置奖励；奖励文件中的函数只能在终端里使用（`train --reward-file`）。",
      "run.rewardName": "奖励",
      "run.rewardWeight": "权重",
      "run.rewardWeightDefault": "(1.0)",
      "run.rewardAdd": "+ 添加奖励",
      "run.rewardRemove": "移除这个奖励",
      "run.rewardLabels": "标签, 标签, …（用英文逗号分隔）",
      "run.rewardPattern": "正则表达式",
      "est.tokensInSteps": "{tokens}，共 {steps} 步",
      "est.about": "约 {what}",
      "est.unmeasured": "暂无实测数据",
      "jobs.heading": "任务",
      "jobs.hint": "同一时间只运行一个任务，之后的任务排队等待。“停止”相当于按 Ctrl-C：会保存一个检查点，“继续”从这个检查点原样接着训练。",
      "jobs.job": "任务",
      "jobs.kind": "类型",
      "jobs.state": "状态",
      "jobs.started": "开始时间",
      "jobs.none": "还没有任务。请在“新建训练”中启动一个。",
      "jobs.resume": "继续",
      "jobs.cancel": "取消",
      "jobs.step": "步数",
      "jobs.loss": "损失",
      "jobs.valLoss": "验证损失",
      "jobs.tps": "token/秒",
      "jobs.ltps": "学习的 token/秒",
      "jobs.eta": "预计剩余时间",
      "jobs.command": "命令",
      "jobs.log": "日志",
      "jobs.title": "{kind}任务 {id}",
      "jobs.noLoss": "还没有上报损失。",
      "jobs.noReward": "还没有上报奖励。",
      "jobs.reward": "奖励",
      "jobs.noSignal": "没有信号的组",
      "jobs.sampleTime": "每步采样 / 更新耗时",
      "jobs.samplesTitle": "最新采样的回答（第 {step} 步）",
      "jobs.samplePrompt": "提示",
      "jobs.sampleAnswer": "采样的回答",
      "jobs.sampleReward": "奖励",
      "progress.stage": "{stage} 进度",
      "progress.label": "进度",
      "progress.eta": "预计剩余 {d}",
      "compare.heading": "对比两个模型",
      "compare.hint": "把同一条消息发给两个模型，并排对比：基座模型、某次训练，或它的某个检查点。基于同一基座的训练共用一个已加载的模型，只切换适配器。想和其中一个对话，请在[对话](/chat)页面的模型菜单中选择它。",
      "compare.left": "左侧",
      "compare.right": "右侧",
      "compare.ownDefaults": "使用各模型自带的默认生成参数",
      "compare.message": "消息",
      "compare.send": "同时发给两个模型",
      "compare.answering": "生成回答中…",
      "compare.settings": "参数：{settings}",
      "compare.defaults": "默认参数：{settings}",
      "compare.oneToken": "1 个 token",
      "compare.tokens": "{n} 个 token",
      "compare.firstToken": "首个 token {s} 秒",
      "compare.switch": "切换 {ms} 毫秒",
      "compare.cached": "缓存 {cached}/{prompt}",
      "ship.evaluate": "评测",
      "ship.limit": "样本数（上限）",
      "ship.limitTitle": "最多评测 test 划分中的这么多条样本",
      "ship.maxTokens": "回答的最大 token 数",
      "ship.evalDefault": "(eval 的默认值)",
      "ship.start": "与基座模型对比评测",
      "ship.starting": "启动中…",
      "ship.estimate": "预估：{parts}",
      "ship.upTo": "最多 {n} 个 token",
      "ship.upToPasses": "最多 {n} 个 token，分 {passes} 轮",
      "ship.timeUnmeasured": "耗时：暂无实测数据",
      "ship.failed": "失败：{error}",
      "ship.failedSeeJobs": "失败：详见“任务”标签页",
      "ship.jobState": "任务 {id}：{state}",
      "ship.scoresOn": "得分：",
      "ship.where": "{split} 划分",
      "ship.whereLimit": "{split} 划分，最多 {n} 条样本",
      "ship.all": "全部",
      "ship.change": "变化",
      "ship.na": "无",
      "ship.predictions": "预测结果",
      "ship.colWhere": "位置",
      "ship.colPrompt": "提示词",
      "ship.colExpected": "参考答案",
      "ship.export": "导出",
      "ship.fmtGguf": "融合后的 GGUF + Modelfile（Ollama）",
      "ship.fmtAdapter": "适配器 GGUF + 基座 GGUF（llama.cpp）",
      "ship.fmtHf": "融合后的 Hugging Face 文件夹",
      "ship.type": "GGUF 类型",
      "ship.typeTitle": "`export gguf --type` 写出的量化类型",
      "ship.exportDefault": "(export 的默认值)",
      "ship.exportButton": "导出",
      "ship.noteGguf": "把适配器融合进模型并量化：在 Ollama 中用 `ollama create NAME -f Modelfile`，在 llama.cpp 中用 `llama-server -m FILE.gguf`。发布到 Ollama 就选这种。",
      "ship.noteAdapter": "几 MB 的适配器加上一个基座 GGUF，供 llama.cpp 使用：`llama-server -m BASE.gguf --lora ADAPTER.gguf`。其 Modelfile 中的 `ADAPTER` 行只在仍接受 `ADAPTER` 的 Ollama 版本中有效：一份公开报告（[ollama/ollama#14969](https://github.com/ollama/ollama/pull/14969)）指出 Ollama 0.34.1 会拒绝含 `ADAPTER` 的 Modelfile。要用于 Ollama，请导出融合后的 GGUF。",
      "ship.doraNote": "DoRA 只能导出为融合后的 GGUF；选 LoRA 还能额外得到一个小巧的适配器 GGUF。",
      "ship.noteHf": "一个普通的 Hugging Face 文件夹（safetensors、配置、分词器、对话模板），`transformers` 和 `mlx_lm` 都能加载。",
      "ship.files": "文件",
      "ship.runIt": "运行",
      "ship.copy": "复制",
      "ship.selected": "已选中：按 Ctrl-C（⌘-C）复制。",
      "ship.copied": "已复制。",
      "ship.ollamaAdapterNote": "这个 Modelfile 用 `ADAPTER` 指定适配器，较新的 Ollama 版本会拒绝（ollama/ollama#14969）；llama.cpp 的命令在哪里都能用。",
    },
  };

  // Chinese for labels the server sends in English (run_form.py's field labels, evaluate.py's score names): shown
  // through word(text), which leaves any other text as the server wrote it.
  const WORDS = {
    zh: {
      "Start from": "基于已有训练",
      "Model": "模型",
      "Data": "数据",
      "Method": "方法",
      "Run name": "训练名称",
      "Steps": "训练步数",
      "Epochs": "轮数（epoch）",
      "Learning rate": "学习率",
      "Rank": "秩（rank）",
      "Scale": "缩放系数",
      "Dropout": "Dropout",
      "Keys": "适配的层",
      "Layers with adapters": "加适配器的层数",
      "Objective": "训练目标",
      "Beta": "Beta",
      "Reference": "参考模型",
      "Batch size": "批大小",
      "LR schedule": "学习率调度",
      "Optimizer": "优化器",
      "Optimizer config": "优化器参数",
      "Gradient accumulation": "梯度累积步数",
      "Gradient checkpointing": "梯度检查点",
      "Max sequence length": "最大序列长度",
      "Pack examples": "样本打包",
      "Learn only the answers": "只学习回答部分",
      "Seed": "随机种子",
      "Steps per report": "每多少步报告一次",
      "Steps per eval": "每多少步验证一次",
      "Val batches": "验证批次数",
      "Save every": "每多少步保存一次",
      "Keep checkpoints": "保留的检查点数",
      "Early stopping patience": "早停耐心值",
      "Clear cache above (bytes)": "缓存清理阈值（字节）",
      "New chat": "新对话", // history.py's title of a conversation not titled yet
      "Loss": "损失",
      "Perplexity": "困惑度",
      "Pairs": "样本对数",
      "Preference accuracy": "偏好准确率",
      "Log-prob margin": "对数概率差",
      "Answers scored": "评分的回答数",
      "Exact match": "完全匹配率",
      "Label accuracy": "标签准确率",
      "Length ratio": "长度比",
      "Rewards": "奖励",
      "Recipe": "配方",
      "Group size": "每组回答数",
      "Max answer tokens": "回答最多 token 数",
      "Temperature": "采样温度",
      "Updates per batch": "每批更新次数",
      "Clip epsilon": "裁剪范围（epsilon）",
    },
  };

  const hasOwn = (obj, key) => Object.prototype.hasOwnProperty.call(obj, key);

  function saved() {
    try {
      const v = window.localStorage.getItem(STORAGE_KEY);
      return LANGS.includes(v) ? v : null;
    } catch (_) {
      return null; // storage refused (a private window): the browser's language
    }
  }

  function browserLang() {
    return String(navigator.language || "").toLowerCase().startsWith("zh") ? "zh" : "en";
  }

  let lang = saved() || browserLang();

  /** The text of `id` in the page's language (English where that lacks it; the id itself where both do), its
   * {name}s replaced by `vars`' values. */
  function t(id, vars) {
    const table = CATALOG[lang];
    let s = hasOwn(table, id) ? table[id] : hasOwn(CATALOG.en, id) ? CATALOG.en[id] : id;
    if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (hasOwn(vars, k) && vars[k] !== null && vars[k] !== undefined ? String(vars[k]) : m));
    return s;
  }

  const has = (id) => hasOwn(CATALOG.en, id) || hasOwn(CATALOG[lang], id);

  /** A label the server sent in English, in the page's language where WORDS knows it. */
  const word = (text) => (hasOwn(WORDS, lang) && hasOwn(WORDS[lang], text) ? WORDS[lang][text] : text);

  // ---- rich text: `code`, *em*, ==learned==, [text](href), each an element with textContent --------------------

  const RICH = /`([^`]+)`|\*([^*]+)\*|==([^=]+)==|\[([^\]]+)\]\(([^)\s]+)\)/g;

  function richNodes(text) {
    const out = [];
    let at = 0;
    for (const m of text.matchAll(RICH)) {
      if (m.index > at) out.push(document.createTextNode(text.slice(at, m.index)));
      let el;
      if (m[1] !== undefined) { el = document.createElement("code"); el.textContent = m[1]; }
      else if (m[2] !== undefined) { el = document.createElement("em"); el.textContent = m[2]; }
      else if (m[3] !== undefined) { el = document.createElement("span"); el.className = "learned"; el.textContent = m[3]; }
      else {
        el = document.createElement("a");
        el.textContent = m[4];
        el.setAttribute("href", m[5]);
        if (/^https?:/.test(m[5])) el.setAttribute("rel", "noreferrer");
      }
      out.push(el);
      at = m.index + m[0].length;
    }
    if (at < text.length) out.push(document.createTextNode(text.slice(at)));
    return out;
  }

  // ---- marking and applying ---------------------------------------------------------------------------------------

  const ATTRS = ["title", "placeholder", "aria-label"];
  // What this file last wrote into an element ({text, attrs, vars, fn}): an element whose text or attribute a script
  // has since set to something else keeps that, and loses its mark.
  const memos = new WeakMap();
  const memo = (el) => {
    if (!memos.has(el)) memos.set(el, { attrs: {}, vars: {} });
    return memos.get(el);
  };

  function fillText(el) {
    const m = memo(el);
    if ("text" in m && el.textContent !== m.text) { unmarkText(el); return; }
    if (el.hasAttribute("data-i18n-live") && m.fn) el.textContent = m.fn();
    else if (el.hasAttribute("data-i18n-rich")) el.replaceChildren(...richNodes(t(el.getAttribute("data-i18n-rich"))));
    else el.textContent = t(el.getAttribute("data-i18n"), m.vars.text);
    m.text = el.textContent;
  }

  function unmarkText(el) {
    el.removeAttribute("data-i18n");
    el.removeAttribute("data-i18n-rich");
    el.removeAttribute("data-i18n-live");
    const m = memo(el);
    delete m.text;
    delete m.fn;
    delete m.vars.text;
  }

  function fillAttr(el, name) {
    const m = memo(el);
    if (hasOwn(m.attrs, name) && el.getAttribute(name) !== m.attrs[name]) {
      el.removeAttribute("data-i18n-" + name);
      delete m.attrs[name];
      return;
    }
    const s = t(el.getAttribute("data-i18n-" + name), m.vars[name]);
    el.setAttribute(name, s);
    m.attrs[name] = s;
  }

  const SELECTOR = ["[data-i18n]", "[data-i18n-rich]", "[data-i18n-live]", ...ATTRS.map((a) => `[data-i18n-${a}]`)].join(",");

  /** Fills every marked element in `root` (the document when none) with the page's language. */
  function applyI18n(root) {
    root = root || document;
    const els = [...root.querySelectorAll(SELECTOR)];
    if (root.matches && root.matches(SELECTOR)) els.unshift(root);
    for (const el of els) {
      if (el.hasAttribute("data-i18n") || el.hasAttribute("data-i18n-rich") || el.hasAttribute("data-i18n-live")) fillText(el);
      for (const a of ATTRS) if (el.hasAttribute("data-i18n-" + a)) fillAttr(el, a);
    }
    if (root === document) applyDocument();
  }

  let titleTail = null;
  function applyDocument() {
    const html = document.documentElement;
    html.lang = lang === "zh" ? "zh-CN" : "en";
    const id = html.getAttribute("data-i18n-doc-title");
    if (id) {
      if (titleTail === null) {
        const cut = document.title.indexOf(" · ");
        titleTail = cut >= 0 ? document.title.slice(cut) : "";
      }
      document.title = t(id) + titleTail;
    }
    for (const b of document.querySelectorAll(".lang-switch [data-lang]")) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-lang") === lang));
    }
  }

  /** `el` showing the catalogue's `id` (with `vars`), marked so a switch re-applies it; no id: empty, unmarked. */
  function text(el, id, vars) {
    unmarkText(el);
    if (!id) { el.textContent = ""; return el; }
    el.setAttribute("data-i18n", id);
    memo(el).vars.text = vars;
    fillText(el);
    return el;
  }

  /** `el` showing fn(), called again on each switch: for text made of several catalogue entries and values. */
  function live(el, fn) {
    unmarkText(el);
    el.setAttribute("data-i18n-live", "");
    memo(el).fn = fn;
    fillText(el);
    return el;
  }

  /** `el`'s attribute `name` (title, placeholder or aria-label) from the catalogue's `id`, re-applied on a switch. */
  function attr(el, name, id, vars) {
    const m = memo(el);
    delete m.attrs[name];
    el.setAttribute("data-i18n-" + name, id);
    m.vars[name] = vars;
    fillAttr(el, name);
    return el;
  }

  /** Switches the page to `next` ("en" or "zh"), saves the choice, and tells the page scripts ("i18n:change"). */
  function setLang(next) {
    if (!LANGS.includes(next)) return;
    try { window.localStorage.setItem(STORAGE_KEY, next); } catch (_) { /* not saved: this page only */ }
    if (next === lang) return;
    lang = next;
    applyI18n(document);
    document.dispatchEvent(new CustomEvent("i18n:change", { detail: { lang } }));
  }

  window.i18n = {
    get lang() { return lang; },
    langs: LANGS,
    catalog: CATALOG,
    words: WORDS,
    t,
    has,
    word,
    text,
    live,
    attr,
    apply: applyI18n,
    setLang,
  };
  window.t = t;
  window.applyI18n = applyI18n;

  for (const b of document.querySelectorAll(".lang-switch [data-lang]")) {
    b.addEventListener("click", () => setLang(b.getAttribute("data-lang")));
  }
  // The top bar's page links are marked here, by where they go (base.html keeps their markup plain).
  const NAV = { "/chat": "nav.chat", "/runs": "nav.runs", "/studio": "nav.studio" };
  for (const a of document.querySelectorAll(".site-nav a[href]")) {
    const id = NAV[a.getAttribute("href")];
    if (id) a.setAttribute("data-i18n", id);
  }
  // This script comes after the page's markup: everything it marks is there now, before the page scripts run.
  applyI18n(document);
})();
