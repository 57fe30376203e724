// "codehop: Ask": the answer of workspace/executeCommand "codehop.ask" as a page with
// numbered, clickable sources. Pure (no `vscode` import) so the node tests check it.

export interface AskSource {
  number: number;
  uri: string;
  path: string;
  start_line: number;
  end_line: number;
  score: number;
  text: string;
}

export interface AskResult {
  answer: string;
  cited: number[];
  sources: AskSource[];
}

export const ASK_COMMAND = "codehop.ask";

export function isAskResult(value: unknown): value is AskResult {
  const v = value as AskResult;
  return !!v && typeof v.answer === "string" && Array.isArray(v.sources) && Array.isArray(v.cited);
}

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]!));
}

/** Where a source opens: its file URI and the 0-based line of its first line. */
export function sourceLocation(source: AskSource): { uri: string; line: number } {
  const uri = source.uri.includes("://") ? source.uri : `file://${source.uri.startsWith("/") ? "" : "/"}${source.uri}`;
  return { uri, line: Math.max(0, source.start_line - 1) };
}

/** The label of a source as shown and linked: "utils.py:1-3" relative to `root` when inside it. */
export function sourceLabel(source: AskSource, root?: string): string {
  let path = source.path;
  if (root && path.startsWith(root.endsWith("/") ? root : root + "/")) {
    path = path.slice(root.length).replace(/^\//, "");
  }
  return `${path}:${source.start_line}-${source.end_line}`;
}

/**
 * The webview's HTML. Links carry `data-source="N"`; the script posts {open: N} and the
 * extension opens that source. `nonce` and `cspSource` fill the content security policy.
 */
export function renderAnswerHtml(question: string, result: AskResult, nonce: string, cspSource: string,
                                 root?: string): string {
  const cited = new Set(result.cited);
  const answer = escapeHtml(result.answer.trim() || "(the model gave no answer)")
    .replace(/\[(\d+)\]/g, (m, n) => (result.sources.some((s) => s.number === Number(n))
      ? `<a href="#" data-source="${n}">[${n}]</a>` : m));
  const items = result.sources.map((s) => `
    <li${cited.has(s.number) ? ' class="cited"' : ""}>
      <a href="#" data-source="${s.number}">[${s.number}] ${escapeHtml(sourceLabel(s, root))}</a>
      <span class="score">${s.score.toFixed(3)}</span>
      <pre>${escapeHtml(s.text)}</pre>
    </li>`).join("");
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src ${cspSource} 'nonce-${nonce}'; script-src 'nonce-${nonce}';">
<style nonce="${nonce}">
  body { font-family: var(--vscode-font-family); padding: 0 1em; }
  .answer { white-space: pre-wrap; font-size: 1.1em; }
  li.cited > a { font-weight: bold; }
  .score { opacity: 0.6; margin-left: 0.5em; }
  pre { white-space: pre-wrap; opacity: 0.8; max-height: 8em; overflow: auto; }
</style></head>
<body>
  <h2>${escapeHtml(question)}</h2>
  <div class="answer">${answer}</div>
  <h3>Sources</h3>
  <ol class="sources">${items || "<li>none</li>"}</ol>
  <script nonce="${nonce}">
    const vscode = acquireVsCodeApi();
    document.addEventListener("click", (event) => {
      const link = event.target.closest("[data-source]");
      if (link) { event.preventDefault(); vscode.postMessage({ open: Number(link.dataset.source) }); }
    });
  </script>
</body></html>`;
}
