"""codehop's language server (pygls + lsprotocol): completions, hover, "codehop.ask".

Handlers are thin, as in pygls's own examples: get the document, call a code_tools (or rag)
function in a worker thread, convert the answer to lsprotocol types.

- initialized: index the workspace folder (code_tools.repo.RepoIndex) with work-done progress,
  then the folder's collection: BM25 at once, dense vectors in the background (DenseFiller)
  with a second work-done progress (chunks and documents done, rate, ETA).
- didOpen: warm the document's KV cache in the background, on the generation lane: the prompt
  a completion at its end would build is prefilled, so its first completion encodes only the
  tokens from its first difference on, not 500-700 ([completion] warm_on_open). A completion request stops the
  warm-up of another document at the next layer (it is retried once requests pause) and waits
  for its own document's (the rest of it costs less than its own prefill).
- after a completion whose fresh context would have cost more than [completion]
  context_edit_budget tokens to encode (it was answered with the context its KV cache holds),
  encode the fresh prompt into the cache in the background, on the generation lane, so the next
  request finds it (RepoCompleter.refresh); any completion request stops it at the next layer.
- didChange/didSave: re-index that file from the editor's buffer, debounced per file.
- textDocument/completion and textDocument/inlineCompletion: RepoCompleter on the unsaved
  buffer, keeping each open document's KV cache and updating it by PIE edits between requests
  (the item's `data.kv_reuse` says whether it was reused; freed on didClose). Debounced (a newer request for the same file supersedes a waiting one), cancellable
  ($/cancelRequest cancels the waiting task, and both it and a newer request stop a running
  decode at its next token: runtime.cancel), and run on a single generation thread, so a slow
  model never blocks the event loop: the editor keeps getting hovers and edits meanwhile.
- hover: the symbol's definition(s) from the repository index plus the best passages from
  the workspace's documentation files (BM25 over their chunks).
- workspace/executeCommand "codehop.ask": the RAG pipeline over the workspace, with sources.

Errors: `runtime.errors.CodehopError` becomes a JSON-RPC error in ONE place (`rpc_errors`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lsprotocol import types
from pygls import uris
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from codehop.config import Settings
from codehop.locks import RWLock
from runtime.errors import CodehopError, InvalidInputError
from index.types import SearchFilter
from runtime.cancel import cancellable

VERSION = "0.1.0"
ASK_COMMAND = "codehop.ask"
_log = logging.getLogger(__name__)
# LSP's RequestFailed: "the request was syntactically valid but could not be answered".
REQUEST_FAILED = -32803
# transformers' lazy imports are not thread-safe: load one model at a time.
_LOADING = threading.Lock()
_SCAN_REPORT_S = 0.5  # at most two scan reports a second: a big folder has thousands of files
# A completion request for the document being warmed lets the warm-up finish unless less than
# this fraction of its layers has run: past it, the rest plus a small PIE edit costs less than
# the request's own prefill of the whole prompt.
_WARM_JOIN_AFTER = 0.2
_WARM_QUIET_S = 1.0  # a warm-up another document's request stopped retries after this much quiet
_WARM_TRIES = 3


@dataclass(frozen=True)
class LspConfig:
    """Settings of the language server.

    Args:
        model: generator for completions (a name or a local model directory for
            load_generator; None: [generator] model).
        backend: generator backend for rag.llm.load_generator (None: [generator] backend).
        settings: the rest of codehop.toml: the [generator] server (base_url, api_key_env, ...)
            of backend "openai" and the [embedding] backend of the workspace collection.
            Replaced at start by the project's own codehop.toml unless `config_file` is set.
        config_file: a codehop.toml named on the command line (None: <project root>/codehop.toml
            when it exists: an editor starts the server in any directory, not the project's).
        workspace: codehop state directory (None: $CODEHOP_WORKSPACE, else [workspace] path,
            else <project root>/.codehop; a relative path is taken from the project root).
        debounce_s: wait this long for newer completion requests before generating; a newer
            request for the same file answers the waiting one at once (superseded, empty).
        reindex_debounce_s: re-index a changed file after this much quiet.
        max_new_tokens: completion length budget (None: [completion] max_new_tokens).
        dense_rerank: re-rank retrieved context with MiniLM (False: BM25 order only; None:
            [completion] dense_rerank).
        hover_passages: documentation passages shown on hover.
        ask_rewrite / ask_filter / ask_max_new_tokens: RagPipeline stages for "codehop.ask".
        kv_reuse / kv_cache_mb: per-document KV caches updated by PIE (code_tools.kv_cache);
            kv_reuse False turns them off whatever [generator] kv_reuse says; kv_cache_mb None
            takes [generator] kv_cache_mb.
        warm_start: load (or convert, into the machine's model cache) the models in the
            background at start, reported as work-done progress, so the first completion is
            as fast as later ones.
        precision: weights of a local model (None: [generator] precision; rag.cpu_weights).
        draft_tokens: prompt-lookup drafts per decoding step (None: [generator] draft_tokens).
        truncate: "statement" or "line" (single-line completions); None: [completion] truncate.
        early_stop: stop decoding once the truncated text is decided (same text, fewer tokens);
            None: [completion] early_stop.
        context_order: "document" (context chunks in repository order: small KV edits between
            requests) or "score" (by priority and score); None: [completion] context_order.
        sticky_context: keep the file's last retrieved chunks against newcomers scoring less
            than this fraction better (code_tools.completion.CompletionConfig; 0 = off); None:
            [completion] sticky_context.
        warm_on_open: prefill an opened document's KV cache in the background (didOpen); None:
            [completion] warm_on_open.
        context_edit_budget: the most prompt tokens a completion re-encodes because its context
            changed; past it the request keeps the cached context and the fresh one is encoded
            after the response (code_tools.completion.CompletionConfig; 0 = off); None:
            [completion] context_edit_budget.
        threads: torch threads of the local model (None: [completion] threads, else torch's
            default: the physical cores, or OMP_NUM_THREADS when set).
        The other completion settings (context budgets, retrieval skips) come from [completion].
    """

    model: str | None = None
    backend: str | None = None
    workspace: Path | None = None
    config_file: Path | None = None
    debounce_s: float = 0.15
    reindex_debounce_s: float = 0.5
    max_new_tokens: int | None = None
    dense_rerank: bool | None = None
    hover_passages: int = 2
    ask_rewrite: str = "auto"
    ask_filter: str = "auto"
    ask_max_new_tokens: int = 256
    kv_reuse: bool = True
    kv_cache_mb: float | None = None
    warm_start: bool = True
    precision: str | None = None
    draft_tokens: int | None = None
    truncate: str | None = None
    early_stop: bool | None = None
    context_order: str | None = None
    sticky_context: float | None = None
    warm_on_open: bool | None = None
    context_edit_budget: int | None = None
    threads: int | None = None
    settings: Settings = Settings()

    def generator_settings(self) -> Settings:
        """`settings` with the command line's model, backend and precision over [generator]."""
        g = self.settings.generator
        return dataclasses.replace(self.settings, generator=dataclasses.replace(
            g, model=self.model or g.model, backend=self.backend or g.backend,
            precision=self.precision or g.precision))

    def completion_config(self):
        """The completer's `CompletionConfig`: [completion] (and [generator] kv_reuse,
        kv_cache_mb, draft_tokens) with this server's options over it."""
        g = self.settings.generator
        options = dict(max_new_tokens=self.max_new_tokens, dense_rerank=self.dense_rerank,
                       draft_tokens=self.draft_tokens, truncate=self.truncate, early_stop=self.early_stop,
                       context_order=self.context_order, sticky_context=self.sticky_context,
                       warm_on_open=self.warm_on_open, kv_cache_mb=self.kv_cache_mb,
                       context_edit_budget=self.context_edit_budget)
        return self.settings.completion_config(
            reuse_kv_cache=self.kv_reuse and g.kv_reuse,
            **{key: value for key, value in options.items() if value is not None})

    def torch_threads(self) -> int | None:
        """Torch threads of the local model: `threads`, else [completion] threads (None: torch's)."""
        return self.threads or self.settings.completion.threads


def project_config(config: LspConfig, root: Path) -> LspConfig:
    """`config` with the settings of `root`/codehop.toml, unless a file was named (or there is
    none). Raises InvalidInputError for a file that does not parse (the message names it)."""
    from codehop.config import DEFAULT_CONFIG_FILE, load_settings

    candidate = root / DEFAULT_CONFIG_FILE
    if config.config_file is not None or not candidate.is_file():
        return config
    return dataclasses.replace(config, settings=load_settings(candidate))


def rpc_errors(handler: Callable) -> Callable:
    """The one mapping of codehop errors to JSON-RPC errors (message says how to fix it)."""

    @functools.wraps(handler)
    async def wrapper(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except InvalidInputError as error:
            raise JsonRpcInvalidParams(str(error)) from error
        except CodehopError as error:
            raise JsonRpcException(f"{type(error).__name__}: {error}", REQUEST_FAILED,
                                   data={"type": type(error).__name__}) from error

    return wrapper


class CodehopLanguageServer(LanguageServer):
    """A LanguageServer holding the repository index, the completer and the worker threads."""

    def __init__(self, config: LspConfig = LspConfig()) -> None:
        super().__init__("codehop", VERSION)
        self.config = config
        self.root: Path | None = None
        self.repo = None
        self.collection = None
        self.collection_error: str | None = None
        self.index_error = "no workspace folder was opened"
        self.collection_lock = RWLock()
        self.filler = None  # index.background.DenseFiller embedding the collection
        self.ready = asyncio.Event()
        self._generator = None
        self._completer = None
        self._pipeline = None
        # Completions and asks on separate lanes: a completion's context (the repository
        # query) never queues behind a 10-20 s answer; the model itself decodes one at a time.
        self._generate = ThreadPoolExecutor(1, thread_name_prefix="codehop-generate")
        self._ask = ThreadPoolExecutor(1, thread_name_prefix="codehop-ask")
        self._index = ThreadPoolExecutor(1, thread_name_prefix="codehop-index")
        self._hover = ThreadPoolExecutor(2, thread_name_prefix="codehop-hover")
        self._latest: dict[str, int] = {}
        self._superseded: dict[str, asyncio.Event] = {}  # set when a newer completion comes in
        self._running: dict[str, threading.Event] = {}  # cancels the generation in flight per file
        self._warming: dict[str, _Warming] = {}  # the opened documents' KV-cache warm-ups
        self._refreshing: dict[str, _Warming] = {}  # deferred contexts encoded after a response
        self._warm_tasks: set[asyncio.Task] = set()  # held: the loop keeps only weak references
        self._last_request = 0.0  # time.monotonic() of the last completion request
        self._reindex: dict[str, asyncio.TimerHandle] = {}
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self.warm_up: asyncio.Future | None = None  # the warm start (see _warm_start)

    @property
    def state_dir(self) -> Path:
        """--workspace, else $CODEHOP_WORKSPACE, else [workspace] path, else .codehop; a
        relative one under the project root (the server's own directory is the editor's)."""
        from codehop.config import resolve_workspace

        chosen = resolve_workspace(self.config.workspace, self.config.settings)
        return chosen if chosen.is_absolute() or self.root is None else self.root / chosen

    # ---- lazily built behaviour objects (in worker threads)

    def generator(self):
        """The completion and answer model, loaded once (warm start loads it at start)."""
        with self._model_lock:
            if self._generator is None:
                from codehop.model_setup import load_configured_generator

                with _LOADING:
                    self._generator = load_configured_generator(self.config.generator_settings(),
                                                                threads=self.config.torch_threads())
            return self._generator

    def completer(self):
        from code_tools.completion import RepoCompleter

        generator = self.generator()
        with self._lock:
            if self._completer is None:
                self._completer = RepoCompleter(self.repo, generator, self.config.completion_config())
            return self._completer

    def pipeline(self):
        """The RAG pipeline of codehop.ask, built once: its drafter and RAPID policy are loaded
        once per server, not once per question. It reads the collection through
        `ReadLocked`, so no lock is held while it generates."""
        generator = self.generator()
        with self._model_lock:
            if self._pipeline is None:
                from rag.pipeline import PipelineConfig, RagPipeline

                from codehop.model_setup import configured_rapid_policy, load_configured_drafter

                g = self.config.settings.generator
                config = PipelineConfig(rewrite=self.config.ask_rewrite, filter=self.config.ask_filter,
                                        reservoir=False, max_new_tokens=self.config.ask_max_new_tokens,
                                        temperature=g.temperature, rapid=g.rapid,
                                        rapid_min_tokens=g.rapid_min_tokens)
                with _LOADING:
                    drafter = load_configured_drafter(self.config.generator_settings(), generator)
                self._pipeline = RagPipeline(ReadLocked(self.collection, self.collection_lock),
                                             generator, config, drafter=drafter,
                                             rapid_policy=configured_rapid_policy(self.state_dir))
            return self._pipeline

    async def wait_ready(self) -> None:
        """Wait for the workspace index; a clear error when there is none."""
        await self.ready.wait()
        if self.repo is None:
            raise CodehopError(f"the workspace is not indexed ({self.index_error})")

    def relative(self, uri: str) -> str:
        path = uris.to_fs_path(uri)
        if path is None:
            raise InvalidInputError(f"{uri} is not a file URI")
        return self.repo.relative(path)


@dataclass
class _Warming:
    """One document's background prefill (didOpen's warm-up, or a deferred context's
    refresh), stopped between two layers when `stop` is set (a completion request for another
    document, or didClose) or, while less than `join_after` of it has run, when `joined` is (a
    request for this document). A warm-up's own request lets it finish past _WARM_JOIN_AFTER:
    the rest costs less than the request's own prefill. A refresh's (join_after 1.0) stops it:
    that request answers with the context its cache holds, within the budget, and defers again."""

    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    joined: threading.Event = dataclasses.field(default_factory=threading.Event)
    join_after: float = _WARM_JOIN_AFTER

    def stop_at_layer(self, done: float) -> bool:
        return self.stop.is_set() or (self.joined.is_set() and done < self.join_after)


class ReadLocked:
    """A collection whose every method call holds the read lock for that call only.

    The RAG pipeline searches, then generates for seconds; holding the read lock through the
    whole run let a waiting writer (a saved file's re-index) block every hover behind the
    answer, since a waiting writer holds off new readers. Through this view the lock covers
    each search and nothing else. Attributes that are not methods (the embedder) pass as they
    are.
    """

    def __init__(self, collection, lock: RWLock) -> None:
        self._collection = collection
        self._read = lock.read

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._collection, name)
        if not inspect.ismethod(value):
            return value

        @functools.wraps(value)
        def locked(*args, **kwargs):
            with self._read():
                return value(*args, **kwargs)

        return locked


server = CodehopLanguageServer()


async def _run(executor: ThreadPoolExecutor, fn: Callable, *args) -> Any:
    return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))


# ---------------------------------------------------------------- lifecycle and indexing


@server.feature(types.INITIALIZED)
async def initialized(ls: CodehopLanguageServer, params: types.InitializedParams) -> None:
    folders = list(ls.workspace.folders.values())
    root = uris.to_fs_path(folders[0].uri) if folders else ls.workspace.root_path
    if not root:
        ls.window_show_message(types.ShowMessageParams(
            types.MessageType.Warning, "codehop: no workspace folder; completions are disabled"))
        ls.ready.set()
        return
    ls.root = Path(root).resolve()
    ls.index_error = None
    try:
        ls.config = project_config(ls.config, ls.root)
    except CodehopError as error:  # a codehop.toml that does not parse: say so, go on with defaults
        ls.window_show_message(types.ShowMessageParams(
            types.MessageType.Error, f"codehop: {error}; using the default settings"))
    token = "codehop-index"
    try:
        await ls.work_done_progress.create_async(token)
    except Exception:  # the client does not support server-initiated progress
        token = None
    if ls.config.warm_start:
        ls.warm_up = asyncio.ensure_future(_warm_start(ls, "codehop-model" if token else None))
    if token:
        ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title="codehop: indexing", message=str(ls.root), percentage=0))
    from code_tools.repo import RepoIndex

    try:
        ls.repo = await _run(ls._index, RepoIndex.open, ls.root, ls.state_dir,
                             ls.config.settings.repo_config())
    except CodehopError as error:
        ls.index_error = str(error)
        ls.window_show_message(types.ShowMessageParams(types.MessageType.Error, f"codehop: {error}"))
        return
    finally:
        if token:
            ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message="done"))
        ls.ready.set()  # waiting requests go on (and fail clearly if indexing failed)
    ls.window_log_message(types.LogMessageParams(
        types.MessageType.Info, f"codehop: indexed {len(ls.repo.files)} files under {ls.root}"))
    await _index_collection(ls, "codehop-docs" if token else None)


async def _warm_start(ls: CodehopLanguageServer, token: str | None) -> None:
    """Load the models now, in the background, as work-done progress "loading model N%": the
    generator (converted once per machine into the model cache when it is the shipped GGUF),
    one short decode (torch's first call is slow), then, once the code index is there, the
    completer and its re-rank embedder. Completions asked meanwhile wait on the same lane."""
    from codehop.model_setup import generator_load_steps

    if token:
        try:
            await ls.work_done_progress.create_async(token)
            ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                title="codehop: loading model", percentage=0, cancellable=False))
        except Exception:
            token = None
    loop = asyncio.get_running_loop()
    started = time.monotonic()

    def show(percentage: int, message: str) -> None:  # from the generation thread
        if token:
            loop.call_soon_threadsafe(lambda: ls.work_done_progress.report(
                token, types.WorkDoneProgressReport(message=message, percentage=percentage)))

    try:
        steps = generator_load_steps(ls.config.generator_settings())
        await _run(ls._generate, _warm_generator, ls, steps, show)
        await ls.ready.wait()
        if ls.repo is not None:
            await _run(ls._generate, _warm_completer, ls, show)
        line = f"model ready in {time.monotonic() - started:.1f} s"
        kind = types.MessageType.Info
    except Exception as error:  # noqa: BLE001 - the first request will raise it again, clearly
        line, kind = f"the model did not load ({type(error).__name__}: {error})", types.MessageType.Warning
    if token:
        ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=line))
    ls.window_log_message(types.LogMessageParams(kind, f"codehop: {line}"))


def _warm_generator(ls: CodehopLanguageServer, steps: list[tuple[str, int]],
                    show: Callable[[int, str], None]) -> None:
    """Convert (when needed) and load the generator, then decode two tokens to warm torch."""
    from runtime.generation import GenerationConfig

    done = 0
    for message, weight in steps:
        show(done, message)
        if message.startswith("converting"):
            from rag.llm import model_source

            model_source(ls.config.generator_settings().generator.model)
        elif message.startswith("loading"):
            ls.generator()
        else:
            ls.generator().complete("def main():", GenerationConfig(max_new_tokens=2))
        done += weight


def _warm_completer(ls: CodehopLanguageServer, show: Callable[[int, str], None]) -> None:
    show(95, "loading the completion context")
    completer = ls.completer()
    if completer.config.dense_rerank:
        completer.repo.embedder.encode_query("warm up")  # the re-rank model (MiniLM)


async def _index_collection(ls: CodehopLanguageServer, token: str | None) -> None:
    """Index the folder (docs and code) into a Collection for hover passages and codehop.ask."""
    if token:
        try:
            await ls.work_done_progress.create_async(token)
            ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                title="codehop: indexing documentation", message=str(ls.root)))
        except Exception:
            token = None
    loop = asyncio.get_running_loop()
    last_report = [0.0]

    def show_scan(status: dict[str, Any], final: bool = False) -> None:  # on the index thread
        now = time.monotonic()
        if token and status["files_total"] and now - last_report[0] >= _SCAN_REPORT_S:
            last_report[0] = now
            loop.call_soon_threadsafe(_show_scan, ls, token, status)

    try:
        ls.collection = await _run(ls._index, _open_collection, ls.root, ls.state_dir,
                                   ls.config.settings, show_scan)
    except CodehopError as error:
        ls.collection_error = str(error)
        ls.window_show_message(types.ShowMessageParams(types.MessageType.Error, f"codehop: {error}"))
    finally:
        if token:
            ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message="done"))
    if ls.collection is not None and len(ls.collection.pending_ids()):
        await _embed_in_background(ls, "codehop-embed" if token else None)


def _open_collection(root: Path, state: Path, settings: Settings,
                     show_scan: Callable[..., None] | None = None):
    """The folder's collection with BM25 committed; vectors not yet cached stay pending.
    `show_scan` gets a status (files done/total, chunks, rate, ETA) as the files are read."""
    from codehop.commands.index import _code_chunker
    from codehop.model_setup import open_collection
    from index.progress import RunStatus

    config = settings.collection_config() if settings.source is not None else None
    collection = open_collection(settings, state, "workspace", create=True, config=config)
    scan = RunStatus(collection.name, show_scan).scan if show_scan else None
    collection.add_paths([root], chunker=_code_chunker(), progress=False, defer_dense=True,
                         on_scan=scan)
    return collection


def _show_scan(ls: CodehopLanguageServer, token: str, status: dict[str, Any]) -> None:
    from index.progress import status_line

    ls.work_done_progress.report(token, types.WorkDoneProgressReport(
        message=status_line(status).removeprefix("codehop: "),
        percentage=int(100 * status["files_done"] / status["files_total"])))


async def _embed_in_background(ls: CodehopLanguageServer, token: str | None) -> None:
    """Start the DenseFiller; its progress goes to the client as work-done progress."""
    from index.background import DenseFiller

    if token:
        try:
            await ls.work_done_progress.create_async(token)
            ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                title="codehop: embedding", message="dense vectors (BM25 search is ready)",
                percentage=0, cancellable=False))
        except Exception:
            token = None
    loop = asyncio.get_running_loop()

    def show(status: dict[str, Any], final: bool = False) -> None:  # on the filler's thread
        loop.call_soon_threadsafe(_show_embedding, ls, token, status, final)

    def prepare() -> None:
        with _LOADING:  # transformers' lazy imports: one model load at a time
            ls.collection.embedder.dim  # noqa: B018 - loads the embedding model

    ls.filler = DenseFiller(ls.collection, write_lock=ls.collection_lock.write,
                            on_progress=show, prepare=prepare).start()


def _show_embedding(ls: CodehopLanguageServer, token: str | None, status: dict[str, Any],
                    final: bool) -> None:
    from index.progress import status_line

    line = status_line(status).removeprefix("codehop: ")
    if final:
        if token:
            ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=line))
        kind = types.MessageType.Warning if status["state"] == "failed" else types.MessageType.Info
        ls.window_log_message(types.LogMessageParams(kind, f"codehop: {line}"))
    elif token:
        total = status["chunks_total"] or 1
        ls.work_done_progress.report(token, types.WorkDoneProgressReport(
            message=line, percentage=int(100 * status["chunks_done"] / total)))


def _schedule_reindex(ls: CodehopLanguageServer, uri: str) -> None:
    """Re-index `uri` from its buffer once edits pause (one pending re-index per file)."""
    if ls.repo is None:
        return
    pending = ls._reindex.pop(uri, None)
    if pending is not None:
        pending.cancel()

    def fire() -> None:
        ls._reindex.pop(uri, None)
        try:
            path = ls.relative(uri)
        except CodehopError:
            return  # a file outside the workspace folder
        text = ls.workspace.get_text_document(uri).source
        ls._index.submit(ls.repo.reindex_file, path, text)

    loop = asyncio.get_running_loop()
    ls._reindex[uri] = loop.call_later(ls.config.reindex_debounce_s, fire)


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
async def did_open(ls: CodehopLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
    config = ls.config.completion_config()
    loaded = ls.config.warm_start or ls._generator is not None  # --no-warm-start: load on a request
    if config.warm_on_open and config.reuse_kv_cache and loaded:
        task = asyncio.ensure_future(_warm_document(ls, params.text_document.uri))
        ls._warm_tasks.add(task)
        task.add_done_callback(ls._warm_tasks.discard)


async def _warm_document(ls: CodehopLanguageServer, uri: str) -> None:
    """Prefill `uri`'s KV cache on the generation lane (RepoCompleter.warm) with the prompt of a
    cursor at the end of the buffer: a cursor elsewhere drops the rows after it. Stopped by a
    request for another document, it tries again once requests pause (_WARM_TRIES in all)."""
    try:
        await ls.wait_ready()
        path = ls.relative(uri)
    except CodehopError:
        return  # no index, or a file outside the workspace folder: nothing to complete

    def prepare():
        document = ls.workspace.text_documents.get(uri)
        if document is None or not document.source.strip():
            return None
        text = document.source
        return lambda warming: ls.completer().warm(path, prefix=text, document=uri,
                                                   stop_at_layer=warming.stop_at_layer)

    report = await _in_background(ls, ls._warming, uri, prepare, _WARM_JOIN_AFTER, f"no warm-up of {path}")
    _log_prefill(ls, f"KV cache of {path}", report)


async def _refresh_document(ls: CodehopLanguageServer, uri: str, path: str) -> None:
    """Encode the fresh context `uri`'s last completion deferred (context_edit_budget) into its
    KV cache on the generation lane (RepoCompleter.refresh). A request for this document stops it
    for good (it defers its own fresh prompt, or no longer needs one); a request for another
    stops it until requests pause (_WARM_TRIES in all)."""
    completer = ls._completer

    def prepare():
        if completer is None or not completer.deferred(uri):
            return None
        return lambda warming: completer.refresh(uri, stop_at_layer=warming.stop_at_layer)

    report = await _in_background(ls, ls._refreshing, uri, prepare, 1.0, f"no context refresh of {path}")
    _log_prefill(ls, f"context of {path}", report)


def _log_prefill(ls: CodehopLanguageServer, what: str, report: dict[str, Any] | None) -> None:
    """One log line for a background prefill's report (serving_bench counts them)."""
    if report is not None:
        ls.window_log_message(types.LogMessageParams(types.MessageType.Log, (
            f"codehop: {what}: {report.get('mode')} ({report.get('tokens_encoded', 0)} of "
            f"{report.get('sequence_length', 0)} prompt tokens encoded in {report.get('update_s', 0.0):.2f} s)")))


async def _in_background(ls: CodehopLanguageServer, running: dict[str, "_Warming"], uri: str,
                         prepare: Callable[[], Callable[["_Warming"], dict] | None], join_after: float,
                         failure: str) -> dict[str, Any] | None:
    """Run a stoppable prefill of `uri` on the generation lane, registered in `running` so that
    completion requests stop it (`_complete`). `prepare` gives the work (None: nothing to do);
    stopped by a request for another document it is prepared and tried again once requests
    pause, _WARM_TRIES in all. Returns the last report, or None when there was nothing to report
    (nothing to do, it failed: logged as `failure`, or the document was closed: its cache freed)."""
    report: dict[str, Any] | None = None
    for _ in range(_WARM_TRIES):
        job = prepare()
        if job is None:
            return None
        warming = running[uri] = _Warming(join_after=join_after)

        def work():
            if warming.stop.is_set() or warming.joined.is_set():
                return {"mode": "stopped", "update_s": 0.0}  # a request came while it queued
            return job(warming)

        try:
            report = await _run(ls._generate, work)
        except Exception as error:  # noqa: BLE001 - a completion will raise it again, clearly
            ls.window_log_message(types.LogMessageParams(
                types.MessageType.Warning, f"codehop: {failure} ({type(error).__name__}: {error})"))
            return None
        finally:
            if running.get(uri) is warming:
                del running[uri]
        if uri not in ls.workspace.text_documents:  # closed meanwhile: free what was stored
            if ls._completer is not None:
                ls._completer.forget(uri)
            return None
        if report.get("mode") != "stopped" or warming.joined.is_set():
            break
        while time.monotonic() - ls._last_request < _WARM_QUIET_S:  # typing elsewhere: wait
            await asyncio.sleep(_WARM_QUIET_S)
    return report


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
async def did_change(ls: CodehopLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
    _schedule_reindex(ls, params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
async def did_close(ls: CodehopLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
    for running in (ls._warming, ls._refreshing):
        warming = running.get(params.text_document.uri)
        if warming is not None:
            warming.stop.set()
    if ls._completer is not None:  # free the document's KV cache
        ls._completer.forget(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_SAVE)
async def did_save(ls: CodehopLanguageServer, params: types.DidSaveTextDocumentParams) -> None:
    _schedule_reindex(ls, params.text_document.uri)
    path = uris.to_fs_path(params.text_document.uri)
    if ls.collection is not None and path and ls.root and Path(path).resolve().is_relative_to(ls.root):
        ls._index.submit(_update_collection, ls, Path(path))


def _update_collection(ls: CodehopLanguageServer, path: Path) -> None:
    """The saved file's new chunks: embedded first, committed under the write lock."""
    from codehop.commands.index import _code_chunker

    try:
        with ls.collection_lock.write():
            ls.collection.add_paths([path], chunker=_code_chunker(), progress=False)
    except CodehopError as error:  # e.g. a file that is no longer text
        ls.window_log_message(types.LogMessageParams(types.MessageType.Warning, f"codehop: {error}"))


# ---------------------------------------------------------------- completion


async def _complete(ls: CodehopLanguageServer, uri: str, position: types.Position):
    """Debounced, cancellable completion at `position`; None when superseded.

    A newer request for the same file, or `$/cancelRequest`, also stops a generation already
    running: its event (runtime.cancel) is polled before every forward of the decode."""
    ls._last_request = time.monotonic()
    for other, warming in [*ls._warming.items(), *ls._refreshing.items()]:  # the lane is needed: see _Warming
        (warming.joined if other == uri else warming.stop).set()
    with ls._lock:
        ticket = ls._latest.get(uri, 0) + 1
        ls._latest[uri] = ticket
        older = ls._superseded.get(uri)
        superseded = ls._superseded[uri] = asyncio.Event()
        running = ls._running.get(uri)
    if older is not None:
        older.set()  # the older request for this file answers now, not after its debounce
    if running is not None:
        running.set()  # the user typed on: the older answer is stale, stop its decoding
    try:  # cancellation lands here while waiting
        await asyncio.wait_for(superseded.wait(), ls.config.debounce_s)
    except asyncio.TimeoutError:
        pass
    finally:
        with ls._lock:
            if ls._superseded.get(uri) is superseded:
                del ls._superseded[uri]
    if ls._latest.get(uri) != ticket:
        return None  # a newer request for this file came in: it will answer
    await ls.wait_ready()
    document = ls.workspace.get_text_document(uri)
    offset = document.offset_at_position(position)
    prefix, suffix = document.source[:offset], document.source[offset:]
    path = ls.relative(uri)
    cancel = threading.Event()
    with ls._lock:
        if ls._latest.get(uri) != ticket:
            return None
        ls._running[uri] = cancel

    def work():
        if cancel.is_set():  # superseded while it queued behind another generation
            return None
        with cancellable(cancel):
            return ls.completer().complete(path, prefix=prefix, suffix=suffix, document=uri, defer_context=True)

    try:
        result = await _run(ls._generate, work)
    except asyncio.CancelledError:  # $/cancelRequest (pygls cancels the task): stop the decode too
        cancel.set()
        raise
    finally:
        with ls._lock:
            if ls._running.get(uri) is cancel:
                del ls._running[uri]
    if result is not None and result.kv_reuse.get("context_held"):
        # after the response: this handler returns first, the lane then takes the refresh
        task = asyncio.ensure_future(_refresh_document(ls, uri, path))
        ls._warm_tasks.add(task)
        task.add_done_callback(ls._warm_tasks.discard)
    return None if cancel.is_set() else result


@server.feature(types.TEXT_DOCUMENT_COMPLETION,
                types.CompletionOptions(trigger_characters=[".", "(", " "]))
@rpc_errors
async def completion(ls: CodehopLanguageServer, params: types.CompletionParams):
    result = await _complete(ls, params.text_document.uri, params.position)
    if result is None:
        return types.CompletionList(is_incomplete=True, items=[])
    # whether the KV cache was reused, also for a blank completion (LSP 3.17 itemDefaults.data)
    defaults = types.CompletionItemDefaults(data={"kv_reuse": result.kv_reuse, "timings": result.timings})
    if not result.text.strip():
        return types.CompletionList(is_incomplete=True, items=[], item_defaults=defaults)
    at = types.Range(params.position, params.position)
    label = result.text.strip().split("\n", 1)[0][:60]
    item = types.CompletionItem(
        label=label, kind=types.CompletionItemKind.Snippet, detail="codehop",
        text_edit=types.TextEdit(range=at, new_text=result.text),
        insert_text_format=types.InsertTextFormat.PlainText, documentation=result.text,
        data=defaults.data)
    return types.CompletionList(is_incomplete=True, items=[item], item_defaults=defaults)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
@rpc_errors
async def inline_completion(ls: CodehopLanguageServer, params: types.InlineCompletionParams):
    result = await _complete(ls, params.text_document.uri, params.position)
    if result is None or not result.text.strip():
        return types.InlineCompletionList(items=[])
    at = types.Range(params.position, params.position)
    return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=result.text,
                                                                        range=at)])


# ---------------------------------------------------------------- hover


def hover_markdown(repo, collection, lock: RWLock, symbol: str, passages: int) -> str | None:
    """Markdown for a hover on `symbol`: its definition(s), then the best doc passages."""
    parts: list[str] = []
    for d in repo.definition(symbol)[:2]:
        body = repo.chunk(d.chunk_id).text if d.chunk_id is not None else ""
        parts.append(f"**{d.kind} `{d.qualname}`** — `{d.path}:{d.start_line}`\n\n```\n{body}\n```")
    if passages > 0 and collection is not None:
        # BM25: an identifier is matched exactly (code-aware tokens), no query embedding needed.
        # Prose passages only (docs, READMEs): the definition above already shows the code.
        with lock.read():
            hits = collection.search(symbol, k=passages, mode="bm25",
                                     filters=SearchFilter(kind="passage"))
        for r in hits:
            where = Path(r.path).relative_to(repo.root) if Path(r.path).is_relative_to(repo.root) else r.path
            parts.append(f"*{where}:{r.start_line}*\n\n{r.text.strip()[:800]}")
    return "\n\n---\n\n".join(parts) or None


@server.feature(types.TEXT_DOCUMENT_HOVER)
@rpc_errors
async def hover(ls: CodehopLanguageServer, params: types.HoverParams):
    await ls.wait_ready()
    document = ls.workspace.get_text_document(params.text_document.uri)
    word = document.word_at_position(params.position)
    if not word or not word.isidentifier():
        return None
    text = await _run(ls._hover, hover_markdown, ls.repo, ls.collection, ls.collection_lock,
                      word, ls.config.hover_passages)
    if text is None:
        return None
    return types.Hover(contents=types.MarkupContent(types.MarkupKind.Markdown, text))


# ---------------------------------------------------------------- codehop.ask


def ask(ls: CodehopLanguageServer, question: str) -> dict[str, Any]:
    """RagPipeline over the workspace collection; the answer with its numbered sources."""
    result = ls.pipeline().run(question)  # searches under the read lock, generates outside it
    rapid = next((s for s in result.stages if s.name == "rapid"), None)
    return {
        "answer": result.answer, "cited": result.cited,
        "rapid": {"used": rapid.ran, **rapid.detail} if rapid is not None else None,
        "sources": [{"number": i, "uri": uris.from_fs_path(s.path) if Path(s.path).is_absolute()
                     else s.path, "path": s.path, "start_line": s.start_line,
                     "end_line": s.end_line, "score": s.score, "text": s.text[:400]}
                    for i, s in enumerate(result.sources, start=1)],
    }


@server.command(ASK_COMMAND)
@rpc_errors
async def ask_command(ls: CodehopLanguageServer, *args):
    """workspace/executeCommand "codehop.ask" with arguments [question]."""
    question = args[0] if len(args) == 1 and isinstance(args[0], str) else None
    if not question or not question.strip():
        raise InvalidInputError('codehop.ask takes one argument: the question, e.g. ["How is X done?"]')
    await ls.wait_ready()
    for _ in range(600):  # the collection is built after the code index (see initialized)
        if ls.collection is not None:
            break
        if ls.collection_error:
            raise CodehopError(f"the workspace collection could not be built ({ls.collection_error})")
        await asyncio.sleep(0.1)
    else:
        raise CodehopError("the workspace collection is still being indexed: retry shortly")
    return await _run(ls._ask, ask, ls, question)


def build_server(config: LspConfig) -> CodehopLanguageServer:
    """The module's server with `config` applied (the CLI calls this before starting)."""
    server.config = config
    return server
