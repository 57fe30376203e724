"""The language server driven by a real LSP client over stdio (pytest-lsp's JSON-RPC client).

The server runs as `python -m codehop lsp` in a subprocess with the tiny random Llama saved
to disk as its completion model (never the 135M model here) and BM25-only context.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from lsprotocol import types
from pygls import uris
from pytest_lsp import ClientServerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]

UTILS = '''def slugify(title):
    """Lower-case `title` and join its words with dashes."""
    return "-".join(title.lower().split())
'''
MAIN = "from utils import slugify\n\nname = slugify("
README = "# Project\n\nUse slugify to turn page titles into URL paths for the blog.\n"


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "utils.py").write_text(UTILS)
    (root / "main.py").write_text(MAIN)
    (root / "README.md").write_text(README)
    return root


def _env(**extra: str) -> dict[str, str]:
    """The server's environment: offline, one thread, this checkout, the suite's model cache
    (tests/conftest.py: never the user's ~/.cache)."""
    return {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "CODEHOP_CACHE_DIR": os.environ["CODEHOP_CACHE_DIR"],
            **extra}


async def start_lsp(project: Path, model: Path, state: Path, *args: str, progress: bool = False):
    """`codehop lsp` over stdio with `model`, `state` as its workspace, BM25-only context and
    `args`, initialised on the folder `project` (with work-done progress when `progress`);
    returns (client, the initialize result). Shared by the LSP test modules."""
    config = ClientServerConfig(
        server_command=[sys.executable, "-m", "codehop", "lsp", "--model", str(model),
                        "--workspace", str(state), "--no-rerank", *args],
        server_env=_env())
    client = await config.start()
    uri = uris.from_fs_path(str(project))
    window = types.WindowClientCapabilities(work_done_progress=True) if progress else None
    result = await client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(window=window), root_uri=uri,
        workspace_folders=[types.WorkspaceFolder(uri=uri, name="project")]))
    return client, result


async def _start(project: Path, model: Path, state: Path):
    return await start_lsp(project, model, state, "--max-new-tokens", "8", "--debounce", "2", progress=True)


def _open(client, path: Path, text: str) -> str:
    uri = uris.from_fs_path(str(path))
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
    return uri


@pytest.mark.slow
@pytest.mark.asyncio
async def test_completion_hover_and_reindex_over_stdio(project, tiny_model_dir, tmp_path):
    client, result = await _start(project, tiny_model_dir, tmp_path / "state")
    try:
        caps = result.capabilities
        assert caps.completion_provider is not None and caps.hover_provider
        assert caps.inline_completion_provider
        assert "codehop.ask" in caps.execute_command_provider.commands

        uri = _open(client, project / "main.py", MAIN)
        end = types.Position(line=2, character=len("name = slugify("))
        completion = await client.text_document_completion_async(types.CompletionParams(
            types.TextDocumentIdentifier(uri), end))
        assert completion.items, "the tiny model always produces some tokens"
        edit = completion.items[0].text_edit
        assert edit.range.start == end and edit.new_text.strip()
        inline = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Invoked),
            text_document=types.TextDocumentIdentifier(uri), position=end))
        assert inline.items and inline.items[0].insert_text == edit.new_text  # greedy: same text

        for _ in range(300):  # the documentation collection is indexed after the code index
            if any(isinstance(r, types.WorkDoneProgressEnd)
                   for r in client.progress_reports.get("codehop-docs", [])):
                break
            await asyncio.sleep(0.2)
        # debounce: of two back-to-back requests for one file only the newer one generates; the
        # older answers (empty) as soon as the newer arrives, so it is answered first, while the
        # newer still waits out its 2 s debounce (long enough that back-to-back requests on a
        # busy machine still fall within it)
        params = types.CompletionParams(types.TextDocumentIdentifier(uri), end)
        answered: list[str] = []

        async def request(name: str):
            result = await client.text_document_completion_async(params)
            answered.append(name)
            return result

        older, newer = await asyncio.gather(request("older"), request("newer"))
        assert len(older.items) == 0 and older.is_incomplete and answered == ["older", "newer"]
        assert newer.items and newer.items[0].text_edit.new_text == edit.new_text

        # $/cancelRequest while the completion waits out its debounce: the request answers
        # RequestCancelled, and the server carries on answering the next one
        pending = asyncio.wrap_future(client.protocol.send_request(
            types.TEXT_DOCUMENT_COMPLETION, params, msg_id="cancel-me"))
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
        with pytest.raises(Exception, match="cancel"):
            await asyncio.wait_for(pending, 30)
        after = await client.text_document_completion_async(params)
        assert after.items and after.items[0].text_edit.new_text == edit.new_text

        hover = await client.text_document_hover_async(types.HoverParams(
            types.TextDocumentIdentifier(uri), types.Position(line=0, character=20)))
        text = hover.contents.value
        assert "def slugify(title)" in text and "utils.py:1" in text  # the definition
        assert "README.md" in text and "URL paths" in text  # the best doc passage

        # the model was loaded at start, in the background, as progress "loading model N%"
        for _ in range(300):
            model = client.progress_reports.get("codehop-model", [])
            if model and isinstance(model[-1], types.WorkDoneProgressEnd):
                break
            await asyncio.sleep(0.1)
        assert isinstance(model[0], types.WorkDoneProgressBegin) and model[0].title == "codehop: loading model"
        steps = [r for r in model if isinstance(r, types.WorkDoneProgressReport)]
        assert [r.message for r in steps][:2] == [f"loading {tiny_model_dir}", "warming up"]
        assert [r.percentage for r in steps] == sorted(r.percentage for r in steps)
        assert model[-1].message.startswith("model ready in ")

        # progress was reported while the workspace folder was indexed
        reports = client.progress_reports["codehop-index"]
        assert isinstance(reports[0], types.WorkDoneProgressBegin)
        assert isinstance(reports[-1], types.WorkDoneProgressEnd)
        # ... and while the documentation collection scanned it: files done of the total
        scans = [r for r in client.progress_reports["codehop-docs"]
                 if isinstance(r, types.WorkDoneProgressReport)]
        assert scans and scans[0].message.startswith("scanning workspace: 0/")
        assert " files (" in scans[0].message and scans[0].percentage == 0

        # codehop.ask: the RAG pipeline over the workspace answers with numbered sources
        answer = await client.workspace_execute_command_async(types.ExecuteCommandParams(
            command="codehop.ask", arguments=["How do I turn page titles into URL paths?"]))
        assert isinstance(answer["answer"], str) and answer["sources"]
        assert any(s["path"].endswith("README.md") for s in answer["sources"])
        with pytest.raises(Exception, match="one argument"):
            await client.workspace_execute_command_async(types.ExecuteCommandParams(
                command="codehop.ask", arguments=[]))

        # an unsaved edit defines a new symbol: after the debounced re-index, hover finds it
        new_text = MAIN + "x)\n\ndef headline(text):\n    return text.title()\n"
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            [types.TextDocumentContentChangeWholeDocument(text=new_text)]))
        for _ in range(50):
            await asyncio.sleep(0.2)
            hover = await client.text_document_hover_async(types.HoverParams(
                types.TextDocumentIdentifier(uri), types.Position(line=4, character=6)))
            if hover is not None and "def headline" in hover.contents.value:
                break
        assert hover is not None and "main.py:5" in hover.contents.value
    finally:
        await client.shutdown_session()


# ---------------------------------------------------------------- PIE: per-document KV caches

# What the user types in main.py, one state per request (lines inserted above and at the cursor).
TYPING = [MAIN,
          "from utils import slugify\n\ntitle = 'Hello World'\nname = slugify(",
          "import sys\nfrom utils import slugify\n\ntitle = 'Hello World'\nname = slugify(",
          "import sys\nfrom utils import slugify\n\ntitle = sys.argv[1]\nname = slugify(",
          "import sys\nfrom utils import slugify\n\ntitle = sys.argv[1]\nname = slugify(title)\nprint(",
          "import sys\nfrom utils import slugify\n\n# the page title\ntitle = sys.argv[1]\nname = slugify(title)\nprint("]


@pytest.fixture(scope="module")
def one_layer_model_dir(tmp_path_factory, tiny_llama) -> Path:
    """A one-layer random Llama: PIE equals re-encoding up to float error at its only layer, so
    completions with and without KV reuse must agree exactly under greedy decoding."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model, tokenizer = tiny_llama
    torch.manual_seed(3)
    one = LlamaForCausalLM(LlamaConfig.from_dict({**model.config.to_dict(), "num_hidden_layers": 1})).eval()
    target = tmp_path_factory.mktemp("one-layer-model")
    one.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


async def _type_and_complete(project: Path, model: Path, state: Path, *extra: str) -> list:
    """Open main.py, apply each TYPING state as an edit and ask for a completion at its end."""
    client, _ = await start_lsp(project, model, state, "--max-new-tokens", "8", "--debounce", "0", *extra)
    results = []
    try:
        doc = _open(client, project / "main.py", TYPING[0])
        for version, text in enumerate(TYPING, start=1):
            if version > 1:
                client.text_document_did_change(types.DidChangeTextDocumentParams(
                    types.VersionedTextDocumentIdentifier(uri=doc, version=version),
                    [types.TextDocumentContentChangeWholeDocument(text=text)]))
            lines = text.split("\n")
            end = types.Position(line=len(lines) - 1, character=len(lines[-1]))
            completion = await client.text_document_completion_async(types.CompletionParams(
                types.TextDocumentIdentifier(doc), end))
            item = completion.items[0]
            results.append((item.text_edit.new_text, item.data["kv_reuse"]))
    finally:
        await client.shutdown_session()
    return results


@pytest.mark.slow
@pytest.mark.asyncio
async def test_typing_session_reuses_the_kv_cache_and_completes_like_reencoding(project, one_layer_model_dir,
                                                                               tmp_path):
    # more helpers: a prompt long enough that a typed line is a small edit of it
    (project / "utils.py").write_text(UTILS + "".join(
        f"\n\ndef join_{i}(parts):\n    \"\"\"Join parts with separator {i}.\"\"\"\n    return '{i}'.join(parts)\n"
        for i in range(6)))
    # no didOpen warm-up, whose race with the first request would make that one a prefill or
    # an edit (tests/codehop/test_lsp_warm.py covers it)
    reused = await _type_and_complete(project, one_layer_model_dir, tmp_path / "on", "--no-warm-on-open")
    fresh = await _type_and_complete(project, one_layer_model_dir, tmp_path / "off", "--no-kv-reuse")
    first, later = reused[0][1], [kv for _, kv in reused[1:]]
    assert first["mode"] == "prefill" and not first["reused"]
    assert all(kv["reused"] and kv["mode"] == "pie" for kv in later)  # small edits: PIE every time
    assert all(kv["tokens_encoded"] < kv["sequence_length"] / 2 for kv in later)
    assert all(kv == {} for _, kv in fresh)  # reuse off: every prompt encoded by the generator
    assert [text for text, _ in reused] == [text for text, _ in fresh]


def test_the_workspace_index_keeps_to_the_folder_and_never_waits_on_a_fifo(project, tmp_path):
    """What the server indexes at start (the folder's collection and its RepoIndex): a link
    to a file outside the folder is left out, a FIFO is skipped instead of blocking."""
    import os
    import threading

    from code_tools.repo import RepoIndex
    from codehop.config import Settings
    from codehop.lsp import _open_collection

    (tmp_path / "secret.py").write_text("ZEBRAQUARTZ = 'private key'\n")
    (project / "secret.py").symlink_to(tmp_path / "secret.py")
    os.mkfifo(project / "fifo.md")
    opened = []

    def index():
        opened.append(RepoIndex.open(project, tmp_path / "state"))
        opened.append(_open_collection(project, tmp_path / "state", Settings()))

    worker = threading.Thread(target=index, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "indexing the folder hung"
    repo, collection = opened
    try:
        assert repo.iter_files() == ["main.py", "utils.py"]
        documents = sorted(Path(p).name for p in collection.store.documents(collection.name))
        assert documents == ["README.md", "main.py", "utils.py"]
        assert not collection.search("ZEBRAQUARTZ private key", k=3, mode="bm25")
    finally:
        collection.close()


# ---------------------------------------------------------------- settings and state of the project


async def _indexed_from(cwd: Path, project: Path, env: dict[str, str]) -> None:
    """Start `codehop lsp` in `cwd` (an editor starts it anywhere) with no --workspace or
    --config, open `project`, wait for its code index, stop."""
    config = ClientServerConfig(
        server_command=["sh", "-c", 'cd "$0" && exec "$@"', str(cwd), sys.executable, "-m", "codehop",
                        "lsp", "--no-rerank", "--max-new-tokens", "4", "--no-warm-start"],
        server_env=env)
    client = await config.start()
    uri = uris.from_fs_path(str(project))
    await client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(window=types.WindowClientCapabilities(work_done_progress=True)),
        root_uri=uri, workspace_folders=[types.WorkspaceFolder(uri=uri, name="project")]))
    try:
        for _ in range(600):
            if any(isinstance(r, types.WorkDoneProgressEnd) for r in client.progress_reports.get("codehop-index", [])):
                break
            await asyncio.sleep(0.1)
    finally:
        await client.shutdown_session()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_codehop_toml_and_workspace_come_from_the_project_and_the_environment(project, tiny_model_dir, tmp_path):
    elsewhere = tmp_path / "editor-cwd"  # where the editor happened to start the server
    elsewhere.mkdir()
    (elsewhere / "codehop.toml").write_text('[workspace]\npath = "wrong-state"\n')
    (project / "codehop.toml").write_text(f'[workspace]\npath = "state-from-toml"\n\n'
                                          f'[generator]\nmodel = "{tiny_model_dir}"\n')
    await _indexed_from(elsewhere, project, _env())
    assert (project / "state-from-toml" / "repos").is_dir()  # relative to the project root
    assert not (elsewhere / "wrong-state").exists() and not (project / ".codehop").exists()

    state = tmp_path / "from-env"  # $CODEHOP_WORKSPACE wins over [workspace] path, as in the CLI
    await _indexed_from(elsewhere, project, _env(CODEHOP_WORKSPACE=str(state)))
    assert (state / "repos").is_dir() and (state / ".gitignore").exists()
