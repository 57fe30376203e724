"""A language server that only reports work-done progress, one step per client request, for
the Neovim statusline test: the plugin is what is tested; this stands in for the time a real
`codehop lsp` would take to embed a folder (seconds) so every report can be checked.

Begins "codehop: embedding" at 0%, reports 4, 8, 50, 95% (each with a message and no title,
as index.background's reports do) as the client asks "test/next", then ends.
"""

from __future__ import annotations

from lsprotocol import types
from pygls.lsp.server import LanguageServer

TOKEN = "codehop-embed"
STEPS = [4, 8, 50, 95]
server = LanguageServer("progress-server", "0")
sent = [0]


@server.feature(types.INITIALIZED)
async def initialized(ls: LanguageServer, params: types.InitializedParams) -> None:
    await ls.work_done_progress.create_async(TOKEN)
    ls.work_done_progress.begin(TOKEN, types.WorkDoneProgressBegin(
        title="codehop: embedding", message="dense vectors (BM25 search is ready)", percentage=0))


@server.feature("test/next")
def next_step(ls: LanguageServer, params) -> int:
    if sent[0] < len(STEPS):
        percentage = STEPS[sent[0]]
        ls.work_done_progress.report(TOKEN, types.WorkDoneProgressReport(
            message=f"embedding workspace: {percentage * 10}/1000 chunks", percentage=percentage))
    else:
        ls.work_done_progress.end(TOKEN, types.WorkDoneProgressEnd(message="done"))
    sent[0] += 1
    return sent[0]


if __name__ == "__main__":
    server.start_io()
