/* A small, safe Markdown renderer for model answers.
 *
 * Safety rule: every character of the input is HTML-escaped first (& < > " '), and only then are the few
 * Markdown constructs below turned into tags that this file writes itself. No input text ever reaches the page
 * unescaped, links are made only for http:// and https:// URLs, and the result is meant for innerHTML.
 *
 * Supported: fenced code blocks (```lang … ```; an unclosed fence runs to the end, as while an answer streams),
 * inline `code`, **bold**, *italic*, headings (#, ##, ###), unordered (-, *, +) and ordered (1.) lists,
 * paragraphs (blank line) and line breaks (single newline), [text](http(s)://url) links.
 */
(function (global) {
  "use strict";

  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  // Placeholders for finished inline HTML (code spans, links) use private-use characters, stripped from the input
  // beforehand so the model cannot forge one.
  const PH_OPEN = "\uE000";
  const PH_CLOSE = "\uE001";
  const PH_RE = /\uE000(\d+)\uE001/g;

  function emphasis(s) {
    return s
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/__(?=\S)([\s\S]*?\S)__(?!\w)/g, "<strong>$1</strong>")
      .replace(/\*(?=[^\s*])([^*]*?[^\s*])\*/g, "<em>$1</em>")
      .replace(/(^|[^\w])_(?=[^\s_])([^_]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>");
  }

  // `escaped` is already HTML-escaped text of one block.
  function inline(escaped) {
    const saved = [];
    const keep = (html) => PH_OPEN + (saved.push(html) - 1) + PH_CLOSE;
    let s = escaped.replace(/`([^`\n]+)`/g, (_, code) => keep("<code>" + code + "</code>"));
    s = s.replace(/\[([^\]\n]+)\]\(([^()\s]+)\)/g, (whole, text, url) => {
      // `url` is escaped text: quotes are entities, so it cannot leave the attribute. Only web links.
      if (!/^https?:\/\/[^\s]/i.test(url)) return whole;
      return keep('<a href="' + url + '" rel="noopener noreferrer" target="_blank">' + emphasis(text) + "</a>");
    });
    s = emphasis(s);
    // Restore placeholders (a link's text may itself hold a code placeholder, hence the loop).
    for (let i = 0; i < 3 && s.includes(PH_OPEN); i++) s = s.replace(PH_RE, (_, n) => saved[Number(n)]);
    return s;
  }

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const UL_ITEM = /^ {0,3}[-*+]\s+(.*)$/;
  const OL_ITEM = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
  const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;

  function renderMarkdown(source) {
    const text = String(source == null ? "" : source).replace(/\r\n?/g, "\n").replace(/[\uE000\uE001]/g, "");
    const lines = text.split("\n");
    const out = [];
    let para = [];
    let list = null; // {tag, items: [string]}

    const flushPara = () => {
      if (para.length) out.push("<p>" + para.map((l) => inline(escapeHtml(l))).join("<br>") + "</p>");
      para = [];
    };
    const flushList = () => {
      if (!list) return;
      const start = list.tag === "ol" && list.start !== 1 ? ' start="' + list.start + '"' : "";
      out.push("<" + list.tag + start + ">" +
        list.items.map((it) => "<li>" + it.map((l) => inline(escapeHtml(l))).join("<br>") + "</li>").join("") +
        "</" + list.tag + ">");
      list = null;
    };
    const flush = () => { flushPara(); flushList(); };

    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = FENCE.exec(line);
      if (fence) {
        flush();
        const marker = fence[1];
        const lang = fence[2];
        const body = [];
        i++;
        while (i < lines.length) {
          const close = /^ {0,3}(`{3,}|~{3,})\s*$/.exec(lines[i]);
          if (close && close[1][0] === marker[0] && close[1].length >= marker.length) break;
          body.push(lines[i]);
          i++;
        }
        const cls = lang ? ' class="language-' + escapeHtml(lang) + '"' : "";
        out.push("<pre><code" + cls + ">" + escapeHtml(body.join("\n")) + "</code></pre>");
        continue;
      }
      if (!line.trim()) { flush(); continue; }
      const heading = HEADING.exec(line);
      if (heading) {
        flush();
        const level = Math.min(heading[1].length, 3);
        out.push("<h" + level + ">" + inline(escapeHtml(heading[2])) + "</h" + level + ">");
        continue;
      }
      if (RULE.test(line)) { flush(); out.push("<hr>"); continue; }
      const ul = UL_ITEM.exec(line);
      const ol = ul ? null : OL_ITEM.exec(line);
      if (ul || ol) {
        flushPara();
        const tag = ul ? "ul" : "ol";
        if (!list || list.tag !== tag) {
          flushList();
          list = { tag, start: ol ? Number(ol[1]) : 1, items: [] };
        }
        list.items.push([ul ? ul[1] : ol[2]]);
        continue;
      }
      if (list && /^\s+\S/.test(line)) { // indented continuation of the last list item
        list.items[list.items.length - 1].push(line.trim());
        continue;
      }
      flushList();
      para.push(line);
    }
    flush();
    return out.join("\n");
  }

  global.escapeHtml = escapeHtml;
  global.renderMarkdown = renderMarkdown;
})(typeof window !== "undefined" ? window : globalThis);
