/* The loss chart of the runs page and the studio's jobs, drawn on a <canvas> (no chart library); for a GRPO run,
 * its reward chart too (the same drawing, other keys and another axis title).
 *
 * Training loss is a solid line, validation loss a dashed line with dots, each run in its own colour. Its few words
 * (axes, legend) come from i18n.js's catalogue where the page loads it.
 */
(function () {
  "use strict";

  const say = (id, vars, english) => (window.i18n ? window.i18n.t(id, vars) : english);

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

  /** One run's curves from its metrics rows: training loss and validation loss (or the `keys` given, e.g.
   * {train: "reward", val: "val_reward"}), each as [step, value] pairs. */
  function series(name, color, rows, keys) {
    const k = keys || { train: "loss", val: "val_loss" };
    const pts = (key) => rows
      .filter((r) => typeof r.step === "number" && typeof r[key] === "number" && isFinite(r[key]))
      .map((r) => [r.step, r[key]])
      .sort((a, b) => a[0] - b[0]);
    return { name, color, train: pts(k.train), val: pts(k.val) };
  }

  /** Draws `list` (from series()) on `canvas`, or `emptyText` when there is no point; returns the points drawn.
   * `axis`: the catalogue id and English of the y axis's title (default: loss). */
  function draw(canvas, list, emptyText, axis) {
    const yTitle = axis ? say(axis.id, null, axis.english) : say("chart.loss", null, "loss");
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

    const all = list.flatMap((s) => s.train.concat(s.val));

    ctx.font = font;
    if (!all.length) {
      ctx.fillStyle = mutedColor;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText(emptyText, cssW / 2, cssH / 2);
      return 0;
    }

    const xs = all.map((p) => p[0]);
    const ys = all.map((p) => p[1]);
    const xT = niceTicks(Math.min(0, ...xs), Math.max(...xs), Math.max(2, Math.floor(cssW / 110)));
    const yT = niceTicks(Math.min(...ys), Math.max(...ys), Math.max(2, Math.floor(cssH / 60)));

    const yLabels = yT.ticks.map((v) => tickLabel(v, yT.step));
    // Room at the left for the rotated axis title: a CJK one is a full em wide across.
    const left = 20 + Math.max(...yLabels.map((l) => ctx.measureText(l).width)) + 8;
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
    ctx.fillText(say("chart.step", null, "step"), m.left + pw / 2, cssH - 2);
    ctx.save();
    ctx.translate(11, m.top + ph / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle";
    ctx.fillText(yTitle, 0, 0);
    ctx.restore();

    // curves, clipped to the plot area
    ctx.save();
    ctx.beginPath();
    ctx.rect(m.left, m.top - 4, pw + 4, ph + 8);
    ctx.clip();
    ctx.lineJoin = "round";
    for (const s of list) {
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
    for (const s of list) {
      if (s.train.length) entries.push({ label: say("chart.train", { name: s.name }, `${s.name} train`), color: s.color, dash: false });
      if (s.val.length) entries.push({ label: say("chart.val", { name: s.name }, `${s.name} val`), color: s.color, dash: true });
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
    return all.length;
  }

  function dot(ctx, x, y, r) {
    ctx.beginPath();
    ctx.arc(x, y, r, 0, Math.PI * 2);
    ctx.fill();
  }

  window.lossChart = { series, draw, niceTicks };
})();
