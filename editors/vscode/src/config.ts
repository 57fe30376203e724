// How the extension starts `codehop lsp`: pure functions (no `vscode` import), tested in node.

export interface ServerSettings {
  /** the codehop executable, e.g. "codehop" on PATH or /path/to/.venv/bin/codehop */
  path: string;
  /** its arguments; must start with "lsp" (the language server over stdio) */
  args: string[];
  /** extra environment variables of the server process */
  env: Record<string, string>;
}

export interface ServerCommand {
  command: string;
  args: string[];
  options: { env: Record<string, string | undefined>; cwd?: string };
}

export const DEFAULT_SETTINGS: ServerSettings = { path: "codehop", args: ["lsp"], env: {} };

/** Checks the settings and returns the process to spawn (an Error says which setting to fix). */
export function serverCommand(settings: ServerSettings, baseEnv: Record<string, string | undefined>,
                              cwd?: string): ServerCommand {
  const path = (settings.path || "").trim();
  if (!path) {
    throw new Error('codehop.server.path is empty: set it to the codehop executable, e.g. "/path/to/.venv/bin/codehop"');
  }
  const args = settings.args && settings.args.length ? settings.args : DEFAULT_SETTINGS.args;
  if (args[0] !== "lsp") {
    throw new Error(`codehop.server.args must start with "lsp" (got ${JSON.stringify(args)}): the extension speaks LSP over stdio`);
  }
  if (args.includes("--tcp")) {
    throw new Error("codehop.server.args: --tcp is for other clients; the extension talks to the server over stdio");
  }
  // Python buffers stdout when it is a pipe; LSP messages must go out at once.
  const env = { ...baseEnv, PYTHONUNBUFFERED: "1", ...(settings.env || {}) };
  return { command: path, args: [...args], options: cwd ? { env, cwd } : { env } };
}
