"""codehop's REST API (FastAPI): collections, search, RAG answers, OpenAI/Tabby compatibility.

Wiring only: every endpoint validates its request (codehop/rest_schemas.py), calls one public
object of a lower layer and converts the result. Resources (collections, the generator, the
repository completer) live in a `Resources` object (codehop/rest_resources.py) built in
`lifespan` and reach endpoints through `Depends`, so tests swap them with
`app.dependency_overrides`.

Errors: every `runtime.errors.CodehopError` becomes its `http_status` in ONE handler
(`_codehop_error`), with OpenAI's `{"error": {"type", "message", "code"}}` body.

Concurrency: one writer thread runs indexing jobs one at a time; each collection has a
readers-writer lock. A job embeds new chunks into the vector cache first (the slow part,
readers unaffected), then holds the write side only while the collection commits (cached
vectors: tokenise, rebuild BM25, add to the dense index, fsync), so searches always see one
committed generation and never wait on the embedding model. Generation requests run in a
bounded lane of their own and search, embeddings and /health on a small executor of their
own (codehop/rest_lane.py): a cheap request never waits behind an answer being generated.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import APIRouter, Depends, FastAPI, Path as PathParam, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from codehop import rest_generation, rest_schemas as m, rest_tabby
from codehop.config import Settings, resolve_workspace
from codehop.rest_lane import FastLane, GenerationLane, get_fast, get_lane
from codehop.rest_metrics import Metrics, MetricsMiddleware
# Re-exported: tests and callers override these dependencies by the names they import from here.
from codehop.rest_resources import (PathOutsideRootsError, Resources, get_completer,  # noqa: F401
                                    get_generator, get_resources, get_treehop, require_api_key)
from runtime.errors import CodehopError, InvalidInputError, NotFoundError
from index.types import SearchFilter

VERSION = "0.1.0"
_ERRORS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
           405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
           422: "invalid_request", 429: "too_many_requests", 499: "client_closed_request",
           501: "not_implemented", 502: "bad_gateway"}


# ---------------------------------------------------------------- errors


def _error(status_code: int, kind: str, message: str) -> JSONResponse:
    body = {"error": {"type": kind, "message": message, "code": status_code}, "detail": message}
    return JSONResponse(body, status_code=status_code)


async def _codehop_error(request: Request, error: CodehopError) -> JSONResponse:
    response = _error(error.http_status, type(error).__name__, str(error))
    retry_after = getattr(error, "retry_after", None)  # OverloadedError: when to come back
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    return _error(error.status_code, _ERRORS.get(error.status_code, "error"), str(error.detail))


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
        for e in error.errors()[:5])
    response = _error(422, "invalid_request", problems or "invalid request")
    return response


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": m.ErrorResponse} for code in (401, 403, 404, 409, 413, 422, 429, 501, 502)}


# ---------------------------------------------------------------- routes


def _hit(result) -> m.SearchHit:
    return m.SearchHit(**result.to_dict())


def _search(resources: Resources, body: m.SearchRequest,
            missing: list[str] | None = None) -> list[m.SearchHit]:
    """The hits; a sharded collection's shards that did not answer go into `missing`."""
    name = body.collection or resources.settings.collection.name
    collection = resources.collection(name)
    filters = SearchFilter(path_prefix=body.filters.path_prefix, kind=body.filters.kind)
    with resources.lock(name).read():
        if hasattr(collection, "search_outcome"):  # sharded (index.sharded, codehop.serve_ray)
            outcome = collection.search_outcome(body.query, k=body.k, mode=body.mode, filters=filters,
                                                group_by=body.group_by)
            results = outcome.results
            if missing is not None:
                missing += outcome.missing
        else:
            results = collection.search(body.query, k=body.k, mode=body.mode, filters=filters,
                                        group_by=body.group_by)
    return [_hit(r) for r in results]


collections_router = APIRouter(prefix="/v1", tags=["collections"])
# Collection names become directory names: the pattern keeps "..", "/" and friends out.
Name = Annotated[str, PathParam(pattern=m.NAME_PATTERN, description="collection name")]
DocId = Annotated[str, PathParam(max_length=4096, description="document id, path or chunk id")]


@collections_router.get("/collections", response_model=list[m.CollectionInfo])
def list_collections(resources: Resources = Depends(get_resources)):
    return [resources.collection(name).stats() for name in resources.names()]


@collections_router.post("/collections", response_model=m.CollectionInfo, status_code=201)
def create_collection(body: m.CollectionCreate, resources: Resources = Depends(get_resources)):
    return resources.create(body.name, body.dense).stats()


@collections_router.get("/collections/{name}", response_model=m.CollectionInfo)
def get_collection(name: Name, resources: Resources = Depends(get_resources)):
    return resources.collection(name).stats()


@collections_router.delete("/collections/{name}", status_code=204)
def delete_collection(name: Name, resources: Resources = Depends(get_resources)):
    resources.drop(name)
    return Response(status_code=204)


@collections_router.get("/collections/{name}/documents", response_model=m.DocumentList)
def list_documents(name: Name, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
                   resources: Resources = Depends(get_resources)):
    documents = sorted(resources.collection(name).store.documents(name).values(), key=lambda d: d.id)
    page = documents[offset: offset + limit]
    return m.DocumentList(documents=[m.DocumentInfo(**d.__dict__) for d in page], total=len(documents))


def _commit(resources: Resources, name: str, write: Callable[[Any], Any]) -> Any:
    with resources.lock(name).write():
        return write(resources.collection(name))


@collections_router.post("/collections/{name}/documents", response_model=m.Job, status_code=202)
def add_documents(name: Name, body: m.DocumentsAdd, resources: Resources = Depends(get_resources)):
    from index.collection import unnamed_text_path

    if not body.texts and not body.files:
        raise InvalidInputError("nothing to add: give 'texts' and/or 'files'")
    files = [resources.confine(f) for f in body.files]  # 403/404 now, not in the job
    texts = [t.text for t in body.texts]
    # Same default key as Collection.add_texts, so re-adding a text replaces it.
    paths = [t.path or unnamed_text_path(t.text) for t in body.texts]

    def work(collection) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if texts:
            # Warm the vector cache outside the write lock (with the text add_texts embeds).
            collection.embedder.encode(collection.indexed_texts(
                texts, paths, [t.metadata for t in body.texts]))
            ids = _commit(resources, name, lambda c: c.add_texts(
                texts, paths=paths, metadatas=[t.metadata for t in body.texts]))
            out["text_chunk_ids"] = ids
        if files:
            report = _add_files(resources, name, collection, files)
            out.update(files=report.files, added=report.added, updated=report.updated,
                       unchanged=report.unchanged, skipped=[list(s) for s in report.skipped],
                       chunks_added=report.chunks_added)
        out.update(collection.stats())
        return out

    return resources.submit(name, "add", work)


def _add_files(resources: Resources, name: str, collection, files: list[Path]):
    """Index files: read, chunk and embed outside the write lock, commit under it."""
    from code_tools.chunker import chunk_for_index

    # A link met in the walk may lead to any file inside the roots, and nowhere else.
    return collection.add_paths(files, chunker=chunk_for_index, progress=False,
                                write_lock=resources.lock(name).write, within=resources.roots)


@collections_router.put("/collections/{name}/documents/{doc_id}", response_model=m.Job,
                        status_code=202)
def update_document(name: Name, doc_id: DocId, body: m.DocumentUpdate,
                    resources: Resources = Depends(get_resources)):
    collection = resources.collection(name)
    document = collection.store.find_document(name, doc_id)

    def work(collection) -> dict[str, Any]:
        collection.embedder.encode([body.text])
        ids = _commit(resources, name, lambda c: c.add_texts(
            [body.text], paths=[document.path], metadatas=[body.metadata]))
        return {"text_chunk_ids": ids, **collection.stats()}

    return resources.submit(name, "update", work)


@collections_router.delete("/collections/{name}/documents/{doc_id}", response_model=m.Job,
                           status_code=202)
def delete_document(name: Name, doc_id: DocId, resources: Resources = Depends(get_resources)):
    document = resources.collection(name).store.find_document(name, doc_id)

    def work(collection) -> dict[str, Any]:
        removed = _commit(resources, name, lambda c: c.delete(document.id))
        return {"chunks_removed": removed, **collection.stats()}

    return resources.submit(name, "delete", work)


@collections_router.post("/collections/{name}/reindex", response_model=m.Job, status_code=202)
def reindex(name: Name, body: m.ReindexRequest = m.ReindexRequest(),
            resources: Resources = Depends(get_resources)):
    """Re-read file documents inside the roots (changed files re-chunked, deleted ones removed)."""
    collection = resources.collection(name)
    files = []
    for path in collection.store.documents(name):
        try:
            files.append(resources.confine(path))
        except CodehopError:
            continue  # texts, vanished files and files outside the roots are left as they are

    def work(collection) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if body.rebuild:
            _commit(resources, name, lambda c: c.rebuild(progress=False))
            out["rebuilt"] = True
        if files:
            report = _add_files(resources, name, collection, files)
            out.update(files=report.files, updated=report.updated, removed=report.removed)
        return {**out, **collection.stats()}

    return resources.submit(name, "reindex", work)


@collections_router.get("/jobs", response_model=list[m.Job])
def list_jobs(resources: Resources = Depends(get_resources)):
    return list(resources.jobs.values())


@collections_router.get("/jobs/{job_id}", response_model=m.Job)
def get_job(job_id: str, resources: Resources = Depends(get_resources)):
    job = resources.jobs.get(job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r} (jobs are kept in memory until restart)")
    return job


search_router = APIRouter(prefix="/v1", tags=["retrieval"])


@search_router.post("/search", response_model=m.SearchResponse)
async def search(body: m.SearchRequest, resources: Resources = Depends(get_resources),
                 fast: FastLane = Depends(get_fast)):
    return await fast.run(_search_response, resources, body)


def _search_response(resources: Resources, body: m.SearchRequest) -> m.SearchResponse:
    started = time.perf_counter()
    missing: list[str] = []
    hits = _search(resources, body, missing)
    name = body.collection or resources.settings.collection.name
    partial: dict[str, float] | bool | None = None
    if missing:  # shards that did not answer: the others' results, said so
        partial = True
    elif body.mode != "bm25":  # say so when the dense side does not cover every chunk yet
        fraction = resources.collection(name).dense_fraction()
        partial = {"dense": round(fraction, 4)} if fraction < 1.0 else None
    return m.SearchResponse(results=hits, mode=body.mode, collection=name, partial=partial,
                            missing_shards=missing or None,
                            elapsed_ms=(time.perf_counter() - started) * 1000)


def _health(resources: Resources, lane: GenerationLane) -> m.Health:
    from dataclasses import asdict

    from code_tools.sandbox import sandbox_status

    return m.Health(status="ok", version=VERSION, workspace=str(resources.workspace),
                    collections=resources.names(), sandbox=sandbox_status().describe(),
                    indexing={name: f.status() for name, f in resources.indexing.items()},
                    warm_up=resources.warm_up.to_dict() if resources.warm_up is not None else None,
                    generation=m.GenerationLaneStatus(**asdict(lane.status())))


# ---------------------------------------------------------------- app


def create_app(settings: Settings | None = None, *, workspace: Path | None = None,
               roots: list[Path] | None = None, repo_root: Path | None = None,
               background: Callable[[Resources], None] | None = None,
               warm_up: bool = False) -> FastAPI:
    """The codehop REST app.

    Args:
        settings: typed settings (None: defaults). `[server] roots` and `api_key` apply.
        workspace: workspace directory (None: settings / $CODEHOP_WORKSPACE / ./.codehop).
        roots: directories whose files may be indexed (None: `[server] roots`).
        repo_root: repository for code completions (None: the first root, if any).
        background: called with the Resources once they are built, e.g. to start embedding
            in the background (codehop serve); what it puts in `resources.indexing` shows in
            /health and is stopped on shutdown.
        warm_up: load the generator and the repository's completer on a background thread
            at start (codehop.warm_up), so the first completion does not pay for them.
    Returns:
        A FastAPI app; resources are built when its lifespan starts.
    """
    settings = settings or Settings()
    workspace = Path(workspace) if workspace else resolve_workspace(None, settings)
    roots = [Path(r) for r in (roots if roots is not None else settings.server.roots)]
    repo_root = repo_root or next((r for r in roots if Path(r).is_dir()), None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        resources = Resources(settings, workspace, roots, repo_root)
        app.state.resources = resources
        server = settings.server
        app.state.lane = GenerationLane(server.generation_concurrency, server.generation_queue)
        app.state.fast = FastLane(server.search_threads)
        if background is not None:
            background(resources)
        if warm_up:
            from codehop.warm_up import start_warm_up

            start_warm_up(resources)
        try:
            yield
        finally:
            app.state.lane.close()
            app.state.fast.close()
            resources.close()

    # /docs and /redoc come from assets shipped with the packages (codehop/rest_web.py), no CDN.
    app = FastAPI(title="codehop", version=VERSION, lifespan=lifespan,
                  max_body_size=settings.server.max_body_bytes, responses=ERROR_RESPONSES,
                  description="Self-hosted RAG and code-assistant backend.",
                  docs_url=None, redoc_url=None)
    app.state.metrics = Metrics()
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_exception_handler(CodehopError, _codehop_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.get("/health", response_model=m.Health, tags=["service"])
    async def health(resources: Resources = Depends(get_resources), fast: FastLane = Depends(get_fast),
                     lane: GenerationLane = Depends(get_lane)):
        return await fast.run(_health, resources, lane)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"])
    async def metrics(lane: GenerationLane = Depends(get_lane)):  # counters only: on the event loop
        return PlainTextResponse(app.state.metrics.render() + lane.render_metrics(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    auth = [Depends(require_api_key)]
    for router in (collections_router, search_router, rest_generation.router,
                   rest_generation.tokenize, rest_generation.answers, rest_tabby.router):
        app.include_router(router, dependencies=auth)
    from codehop.rest_web import mount_pages

    mount_pages(app)  # /, /docs, /redoc, /benchmarks.md
    return app
