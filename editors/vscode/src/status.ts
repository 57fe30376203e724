// The status-bar model: the server's state from client events and work-done progress.
// Pure (no `vscode` import) so the node tests drive it with a real server's messages.

export type ClientState = "starting" | "running" | "stopped";

export interface ProgressValue {
  kind: "begin" | "report" | "end";
  title?: string;
  message?: string;
  percentage?: number;
}

export interface StatusView {
  text: string;
  tooltip: string;
  /** "error" | "warning" | undefined: the item's background */
  severity?: "error" | "warning";
}

export class ServerStatus {
  private state: ClientState | "restricted" | "failed" = "starting";
  private readonly active = new Map<string, { title: string; percentage?: number }>();
  private detail = "";
  private indexed = false;

  restricted(): void { this.state = "restricted"; }
  failed(reason: string): void { this.state = "failed"; this.detail = reason; }
  client(state: ClientState): void {
    this.state = state;
    if (state !== "running") { this.active.clear(); }
  }

  /** Feeds one $/progress value of `token` (codehop sends "codehop-index" then "codehop-docs"). */
  progress(token: string | number, value: ProgressValue): void {
    const key = String(token);
    if (value.kind === "end") {
      this.active.delete(key);
      if (key === "codehop-index") { this.indexed = true; }
      return;
    }
    // A report has no title (only begin has): keep the title and take the latest percentage.
    const known = this.active.get(key);
    const title = value.title?.replace(/^codehop:\s*/, "") ?? known?.title ?? "working";
    this.active.set(key, { title, percentage: value.percentage ?? known?.percentage });
  }

  get busy(): boolean { return this.active.size > 0; }

  view(): StatusView {
    switch (this.state) {
      case "restricted":
        return { text: "$(shield) codehop", tooltip: "codehop: not started in an untrusted workspace (trust it to start the server)", severity: "warning" };
      case "failed":
        return { text: "$(error) codehop", tooltip: `codehop: the server could not start: ${this.detail}`, severity: "error" };
      case "stopped":
        return { text: "$(debug-stop) codehop", tooltip: "codehop: the server stopped (click for the output)", severity: "error" };
      case "starting":
        return { text: "$(loading~spin) codehop", tooltip: "codehop: starting the language server" };
    }
    if (this.active.size) {
      const what = [...this.active.values()]
        .map((p) => (p.percentage === undefined ? p.title : `${p.title} ${p.percentage}%`)).join(", ");
      return { text: `$(sync~spin) codehop: ${what}`, tooltip: `codehop: ${what}` };
    }
    return { text: "$(check) codehop", tooltip: this.indexed ? "codehop: ready (workspace indexed)" : "codehop: running" };
  }
}
