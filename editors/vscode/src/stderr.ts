// The level of each line the server writes to stderr, for the "codehop" output channel.
// vscode-languageclient logs every stderr line at error by default, so the server's progress
// bars and start-up notes showed as [error]. Python writes everything there: progress, logging
// and tracebacks. Pure (no `vscode` import) so the node tests drive it.

export type Level = "error" | "warn" | "info";

// `ERROR:root:...`, `2026-01-01 ... ERROR ...`, `CRITICAL`, `Fatal Python error`
const ERROR = /(^|\s)(ERROR|CRITICAL|FATAL)\b|^Fatal Python error|^codehop: error\b/;
// `WARNING:root:...`, `...: UserWarning: ...`, `warnings.warn(`
const WARN = /(^|\s)WARN(ING)?\b|\b[A-Z]\w*Warning:|^\s*warnings\.warn\(/;
// The last line of a traceback: `ValueError: ...`, `pkg.errors.NotFoundError: ...`, `KeyboardInterrupt`
const EXCEPTION = /^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:|$)/;

export class StderrLevels {
  private inTraceback = false;

  /** The level of one line (a progress bar's `\r` redraws keep only the last state). */
  level(line: string): Level {
    const text = line.slice(line.lastIndexOf("\r") + 1);
    if (text.startsWith("Traceback (most recent call last)")) {
      this.inTraceback = true;
      return "error";
    }
    if (this.inTraceback) {
      // indented frames and source lines, then the exception line that ends it
      if (EXCEPTION.test(text) || !/^\s/.test(text)) { this.inTraceback = false; }
      return "error";
    }
    if (ERROR.test(text) || EXCEPTION.test(text)) { return "error"; }
    if (WARN.test(text)) { return "warn"; }
    return "info";
  }

  /** `line` without a progress bar's earlier `\r` redraws. */
  static text(line: string): string {
    return line.slice(line.lastIndexOf("\r") + 1);
  }
}
