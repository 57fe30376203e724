"""python -m eval_suites.editor_start [--out DIR] [--code DIR] [--label NAME] [--ask]

What a user meets first: seconds from starting `codehop lsp` (as an editor does, over stdio) to
the first completion, and to the first `codehop.ask` answer, in a fresh project, with the
machine's model cache cold (the shipped GGUF not yet converted, MiniLM not yet exported) and
warm. Two moments for the completion: asked as soon as the server has initialised (an editor
that opens a file and types at once), and asked once the server says it is ready (the code
index done and, with warm start, "codehop: loading model" ended), then a second completion
for comparison. The shipped SmolLM2-135M with the server's default settings.

`--code DIR` runs the server from another checkout (e.g. an older commit, extracted with
`git archive`) to compare before and after in one machine state; run this module from a
directory with no `codehop/` in it, so that the checkout named is the one imported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
UTILS = '''def slugify(title):
    """Lower-case `title` and join its words with dashes."""
    return "-".join(title.lower().split())


def headline(text):
    """Title-case `text` for page headings."""
    return text.title()
'''
MAIN = "from utils import slugify\n\n\ndef page_path(title):\n    return \"/blog/\" + "
OTHER = "from utils import headline\n\n\ndef page_heading(text):\n    return "
README = "# Blog\n\nUse slugify to turn page titles into URL paths for the blog.\n"
QUESTION = "How do I turn page titles into URL paths?"


def _project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "utils.py").write_text(UTILS)
    (root / "main.py").write_text(MAIN)
    (root / "headlines.py").write_text(OTHER)
    (root / "README.md").write_text(README)
    return root


async def _ended(client, token: str, seconds: float) -> bool:
    from lsprotocol import types

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(isinstance(r, types.WorkDoneProgressEnd) for r in client.progress_reports.get(token, [])):
            return True
        await asyncio.sleep(0.05)
    return False


async def session(code: Path, cache: Path, project: Path, wait_ready: bool, ask: bool) -> dict:
    """One editor session: start, (wait for ready,) complete twice, (ask); seconds from start."""
    from lsprotocol import types
    from pygls import uris
    from pytest_lsp import ClientServerConfig

    env = {"PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "CODEHOP_CACHE_DIR": str(cache)}
    started = time.monotonic()
    client = await ClientServerConfig(server_command=[sys.executable, "-m", "codehop", "lsp"],
                                      server_env=env).start()
    uri = uris.from_fs_path(str(project))
    await client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(window=types.WindowClientCapabilities(work_done_progress=True)),
        root_uri=uri, workspace_folders=[types.WorkspaceFolder(uri=uri, name="project")]))
    out: dict = {"initialized_s": time.monotonic() - started}
    try:
        doc = uris.from_fs_path(str(project / "main.py"))
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=doc, language_id="python", version=1, text=MAIN)))
        if wait_ready:
            await _ended(client, "codehop-index", 900)
            if "codehop-model" in client.progress_reports:  # warm start began at initialisation
                await _ended(client, "codehop-model", 900)
            out["ready_s"] = time.monotonic() - started
        other = uris.from_fs_path(str(project / "headlines.py"))
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=other, language_id="python", version=1, text=OTHER)))
        # the first completion, the same one again (its document's KV cache reused), then the
        # first one in another document: what any later completion in a new place costs
        for name, uri, text in (("first_completion", doc, MAIN), ("second_completion", doc, MAIN),
                                ("other_document_completion", other, OTHER)):
            lines = text.split("\n")
            at = types.Position(line=len(lines) - 1, character=len(lines[-1]))
            asked = time.monotonic()
            result = await client.text_document_completion_async(types.CompletionParams(
                types.TextDocumentIdentifier(uri), at))
            out[f"{name}_latency_s"] = time.monotonic() - asked
            out[f"{name}_s"] = time.monotonic() - started
            out[f"{name}_text"] = result.items[0].text_edit.new_text if result.items else ""
            data = (result.item_defaults.data if result.item_defaults else None) or {}
            out[f"{name}_timings"] = {k: round(v, 3) for k, v in (data.get("timings") or {}).items()}
        if ask:
            asked = time.monotonic()
            answer = await client.workspace_execute_command_async(types.ExecuteCommandParams(
                command="codehop.ask", arguments=[QUESTION]))
            out["first_ask_latency_s"] = time.monotonic() - asked
            out["first_ask_s"] = time.monotonic() - started
            out["answer"], out["cited"] = answer["answer"][:300], answer["cited"]
    finally:
        await client.shutdown_session()
    out["workspace_mb"] = round(sum(p.stat().st_size for p in (project / ".codehop").rglob("*") if p.is_file()) / 2**20, 1)
    return out


COLUMNS = [("model cache", "model_cache"), ("asked", "asked"), ("ready (s)", "ready_s"),
           ("first completion (s from start)", "first_completion_s"),
           ("its latency (s)", "first_completion_latency_s"), ("same again (s)", "second_completion_latency_s"),
           ("first in another file (s)", "other_document_completion_latency_s"),
           ("first ask (s from start)", "first_ask_s"), ("its latency (s)", "first_ask_latency_s"),
           ("workspace (MB)", "workspace_mb"), ("load avg", "load")]


def write_report(out: Path) -> Path:
    """report.md: one table row per session of every results-*.json in `out`."""
    lines = ["| code | " + " | ".join(name for name, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for path in sorted(out.glob("results-*.json")):
        for row in json.loads(path.read_text()):
            cells = [row["label"]] + [f"{row[key]:.1f}" if isinstance(row.get(key), float) else str(row.get(key, ""))
                                      for _, key in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    report = out / "report.md"
    report.write_text("# Editor start: time to the first completion and answer\n\n"
                      "`python -m eval_suites.editor_start` (see its docstring); seconds measured from "
                      "starting `codehop lsp`.\n\n" + "\n".join(lines) + "\n")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks" / "editor_start")
    parser.add_argument("--code", type=Path, default=REPO_ROOT, help="the checkout the server runs from")
    parser.add_argument("--label", default="after")
    parser.add_argument("--ask", action="store_true", help="also time the first codehop.ask")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="editor-start-") as tmp:
        cache = Path(tmp) / "model-cache"  # cold: nothing converted or exported yet
        for n, (cache_state, wait_ready) in enumerate([("cold", False), ("warm", False), ("warm", True)]):
            project = _project(Path(tmp) / f"project-{n}")
            result = asyncio.run(session(args.code, cache, project, wait_ready, args.ask and cache_state == "warm"))
            result.update(label=args.label, model_cache=cache_state,
                          asked="after ready" if wait_ready else "at once", load=os.getloadavg()[0])
            print(json.dumps(result), flush=True)
            rows.append(result)
    path = args.out / f"results-{args.label}.json"
    path.write_text(json.dumps(rows, indent=1))
    print(f"wrote {path} and {write_report(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
