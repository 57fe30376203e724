// The codehop VS Code extension: starts `codehop lsp` (stdio) with vscode-languageclient,
// which brings completion, inline completion, hover and the server's progress; adds the
// "codehop: Ask" command (answer + clickable sources) and a status-bar item.
import * as readline from "node:readline";
import * as vscode from "vscode";
import { ExecuteCommandRequest, LanguageClient, LanguageClientOptions, ServerOptions, State } from "vscode-languageclient/node";
import { ASK_COMMAND, AskResult, isAskResult, renderAnswerHtml, sourceLocation } from "./answer";
import { serverCommand, ServerSettings } from "./config";
import { ServerStatus } from "./status";
import { StderrLevels } from "./stderr";

let client: LanguageClient | undefined;
let status: ServerStatus;
let item: vscode.StatusBarItem;
let output: vscode.LogOutputChannel;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  status = new ServerStatus();
  output = vscode.window.createOutputChannel("codehop", { log: true });
  item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  item.command = "codehop.showOutput";
  item.show();
  context.subscriptions.push(output, item,
    vscode.commands.registerCommand("codehop.askQuestion", askQuestion),
    vscode.commands.registerCommand("codehop.restart", restart),
    vscode.commands.registerCommand("codehop.showOutput", () => output.show()),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration("codehop")) { void restart(); }
    }),
    { dispose: () => { void client?.stop(); } });
  if (!vscode.workspace.isTrusted) {
    // The server runs a configurable executable over the folder: only in trusted workspaces.
    status.restricted();
    refresh();
    context.subscriptions.push(vscode.workspace.onDidGrantWorkspaceTrust(() => void start()));
    return;
  }
  await start();
}

export async function deactivate(): Promise<void> {
  await client?.stop();
}

function refresh(): void {
  const view = status.view();
  item.text = view.text;
  item.tooltip = view.tooltip;
  item.backgroundColor = view.severity ? new vscode.ThemeColor(`statusBarItem.${view.severity}Background`) : undefined;
}

function settings(): ServerSettings {
  const config = vscode.workspace.getConfiguration("codehop");
  return {
    path: config.get<string>("server.path", "codehop"),
    args: config.get<string[]>("server.args", ["lsp"]),
    env: config.get<Record<string, string>>("server.env", {}),
  };
}

async function start(): Promise<void> {
  const folder = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
  let server: ServerOptions;
  try {
    const command = serverCommand(settings(), process.env, folder);
    server = { command: command.command, args: command.args, options: command.options };
  } catch (error) {
    status.failed(String((error as Error).message));
    refresh();
    void vscode.window.showErrorMessage(String((error as Error).message), "Open settings")
      .then((choice) => choice && vscode.commands.executeCommand("workbench.action.openSettings", "codehop.server"));
    return;
  }
  const languages = vscode.workspace.getConfiguration("codehop").get<string[]>("languages", ["python"]);
  const options: LanguageClientOptions = {
    documentSelector: languages.map((language) => ({ scheme: "file", language })),
    outputChannel: output,
    // Each stderr line at its own level (progress at info, real errors at error) instead of
    // the client's default of error for every line.
    stdioOptions: {
      stdout: (input, channel) => readLines(input, (line) => channel.info(line)),
      stderr: (input, channel) => {
        const levels = new StderrLevels();
        readLines(input, (line) => channel[levels.level(line)](StderrLevels.text(line)));
      },
    },
    middleware: {
      // The client shows the server's progress in the window; the status bar follows it too.
      handleWorkDoneProgress: (token, params, next) => {
        status.progress(token, params);
        refresh();
        next(token, params);
      },
    },
  };
  client = new LanguageClient("codehop", "codehop", server, options);
  client.onDidChangeState((event) => {
    status.client(event.newState === State.Running ? "running" : event.newState === State.Starting ? "starting" : "stopped");
    refresh();
  });
  status.client("starting");
  refresh();
  try {
    await client.start();
  } catch (error) {
    status.failed(`${settings().path}: ${(error as Error).message}`);
    refresh();
    void vscode.window.showErrorMessage(`codehop: the language server did not start (${(error as Error).message}). Check codehop.server.path.`);
  }
}

function readLines(input: NodeJS.ReadableStream, each: (line: string) => void): void {
  readline.createInterface({ input, crlfDelay: Infinity, terminal: false, historySize: 0 }).on("line", each);
}

async function restart(): Promise<void> {
  if (client) {
    const old = client;
    client = undefined;
    await old.stop().catch(() => undefined);
  }
  if (vscode.workspace.isTrusted) { await start(); }
}

async function askQuestion(question?: string): Promise<AskResult | undefined> {
  if (!client || !client.isRunning()) {
    void vscode.window.showWarningMessage("codehop: the language server is not running (see the status bar)");
    return undefined;
  }
  const asked = question ?? await vscode.window.showInputBox({
    title: "codehop: Ask", prompt: "A question about this workspace", placeHolder: "How are index writes made atomic?",
  });
  if (!asked || !asked.trim()) { return undefined; }
  const running = client;
  const result = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: "codehop: answering…", cancellable: true },
    (_progress, token) => running.sendRequest(ExecuteCommandRequest.type, { command: ASK_COMMAND, arguments: [asked] }, token));
  if (!isAskResult(result)) {
    void vscode.window.showErrorMessage("codehop: the server gave no answer");
    return undefined;
  }
  showAnswer(asked, result);
  return result;
}

function showAnswer(question: string, result: AskResult): void {
  const panel = vscode.window.createWebviewPanel("codehopAnswer", `codehop: ${question.slice(0, 40)}`,
    vscode.ViewColumn.Beside, { enableScripts: true });
  const nonce = [...Array(24)].map(() => Math.floor(Math.random() * 36).toString(36)).join("");
  const root = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
  panel.webview.html = renderAnswerHtml(question, result, nonce, panel.webview.cspSource, root);
  panel.webview.onDidReceiveMessage(async (message: { open?: number }) => {
    const source = result.sources.find((s) => s.number === message.open);
    if (!source) { return; }
    const where = sourceLocation(source);
    const position = new vscode.Position(where.line, 0);
    await vscode.window.showTextDocument(vscode.Uri.parse(where.uri),
      { viewColumn: vscode.ViewColumn.One, selection: new vscode.Range(position, position) });
  });
}
