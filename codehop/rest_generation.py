"""OpenAI- and Tabby-compatible endpoints: /v1/models, /v1/embeddings, /v1/completions,
/v1/chat/completions (streaming as OpenAI's server-sent `chat.completion.chunk`s).

`/v1/completions` takes two request shapes, told apart by their fields: OpenAI's (`prompt`,
optional `suffix` for fill-in-the-middle) goes to the generator; Tabby's (`segments` with
prefix, suffix, filepath, ...) goes to code_tools' RepoCompleter, which adds repository context.
Both keep a document's KV cache between requests and update it by PIE edits (Tabby's keyed by
`filepath`, OpenAI's by the `document` extension field); `codehop_kv_reuse` says what happened.
`/v1/chat/completions` and `/v1/ask` draft with RAPID on request (`"rapid": true`) or where
[generator] rapid = "auto" predicts a speed-up; `codehop_rapid` / the "rapid" stage say why.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict
import time
import uuid
from typing import Any, Callable, Iterator

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from codehop import rest_schemas as m
from codehop.rest_lane import FastLane, GenerationLane, Ticket, get_fast, get_lane
from codehop.rest_resources import Resources, get_completer, get_generator, get_resources, get_treehop
from runtime.errors import InvalidInputError, ModelNotFoundError

router = APIRouter(prefix="/v1", tags=["openai"])
# Generation runs in the app's GenerationLane (codehop/rest_lane.py): admitted or refused with
# 429, FIFO model slots ([server] generation_concurrency), held only while generating.
MAX_PROMPT_TOKENS = 4096
# Stream buffers hold max_tokens pieces plus this many events (role, stages, result, [DONE]):
# a producer never waits for a slow client while it holds the model.
STREAM_EVENTS = 64


def _config(body: m._Sampling, stop: tuple[str, ...] = (), json_schema=None):
    from rag.llm import GenerationConfig

    return GenerationConfig(max_new_tokens=body.max_tokens, temperature=body.temperature,
                            top_p=body.top_p, stop=tuple(body.stops()) + stop, seed=body.seed,
                            repetition_penalty=body.repetition_penalty, json_schema=json_schema)


def _check_model(requested: str | None, available: str, configured: str | None = None) -> None:
    if requested and requested not in (available, configured):
        raise ModelNotFoundError(f"model {requested!r} is not served here; use {available!r} "
                                 "(GET /v1/models lists them)")


def _treehop_module():
    import rag.treehop

    return rag.treehop


def _check_prompt(generator, *texts: str) -> None:
    """Refuse prompts longer than MAX_PROMPT_TOKENS: a CPU model would take minutes on them."""
    tokens = sum(generator.count_tokens(t) for t in texts if t)
    if tokens > MAX_PROMPT_TOKENS:
        raise InvalidInputError(f"the prompt has {tokens} tokens; this server takes at most "
                                f"{MAX_PROMPT_TOKENS}: shorten it")


def _sse(payloads: Iterator[dict[str, Any]], ticket: Ticket) -> Iterator[str]:
    """OpenAI's stream framing: `data: {json}` events, then `data: [DONE]`; the model slot is
    held while the payloads are generated (into the lane's buffer, not to the client)."""
    with ticket.hold():
        for payload in payloads:
            yield f"data: {json.dumps(payload)}\n\n"
    yield "data: [DONE]\n\n"


class _HeldGenerator:
    """`generator`, holding a model slot of `ticket` only for each call that generates: an
    agent gives the model back while its tools run, then queues again for its next turn."""

    def __init__(self, generator, ticket: Ticket) -> None:
        self._generator, self._ticket = generator, ticket

    def __getattr__(self, name: str):
        return getattr(self._generator, name)

    def _held(self, method: str, *args, **kwargs):
        with self._ticket.hold():
            return getattr(self._generator, method)(*args, **kwargs)

    def complete(self, *args, **kwargs):
        return self._held("complete", *args, **kwargs)

    def chat(self, *args, **kwargs):
        return self._held("chat", *args, **kwargs)

    def complete_fim(self, *args, **kwargs):
        return self._held("complete_fim", *args, **kwargs)

    def stream(self, *args, **kwargs) -> Iterator[str]:
        with self._ticket.hold():
            yield from self._generator.stream(*args, **kwargs)

    def chat_stream(self, *args, **kwargs) -> Iterator[str]:
        with self._ticket.hold():
            yield from self._generator.chat_stream(*args, **kwargs)


def _usage(generator, prompt_tokens: int, text: str, reported: int | None = None) -> m.Usage:
    """Usage numbers; `reported` is the model server's own completion count (relayed as is)."""
    completion = reported if reported is not None else generator.count_tokens(text) if text else 0
    return m.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion,
                   total_tokens=prompt_tokens + completion)


@router.get("/models", response_model=m.ModelList)
def models(resources: Resources = Depends(get_resources)):
    s = resources.settings
    return m.ModelList(data=[m.ModelCard(id=s.generator.model), m.ModelCard(id=s.embedding.model)])


@router.post("/embeddings", response_model=m.EmbeddingResponse)
async def embeddings(body: m.EmbeddingRequest, resources: Resources = Depends(get_resources),
                     fast: FastLane = Depends(get_fast)):
    return await fast.run(_embeddings, body, resources)


def _embeddings(body: m.EmbeddingRequest, resources: Resources) -> m.EmbeddingResponse:
    name = resources.settings.embedding.model
    _check_model(body.model, name)
    texts = [body.input] if isinstance(body.input, str) else body.input
    embedder = resources.embedder()
    vectors = embedder.encode(texts)
    tokens = sum(len(t.split()) for t in texts)  # whitespace words: the embedder hides its tokenizer
    return m.EmbeddingResponse(
        data=[m.Embedding(index=i, embedding=_encode_vector(v, body.encoding_format))
              for i, v in enumerate(vectors)],
        model=name, usage=m.Usage(prompt_tokens=tokens, total_tokens=tokens))


def _encode_vector(vector, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.post("/completions", response_model=m.CompletionResponse)
async def completions(body: m.CompletionRequest | m.TabbyCompletionRequest, request: Request,
                      response: Response, resources: Resources = Depends(get_resources),
                      generator=Depends(get_generator), lane: GenerationLane = Depends(get_lane)):
    created, cid = int(time.time()), f"cmpl-{uuid.uuid4().hex[:24]}"
    if isinstance(body, m.TabbyCompletionRequest):
        return await lane.call(request, lambda ticket: _tabby(body, resources, generator, created, cid, ticket))
    _check_model(body.model, generator.name, resources.settings.generator.model)
    if body.stream:
        headers: dict[str, str] = {}

        def produce(ticket: Ticket) -> Iterator[str]:
            prompt, fim = _prompt(generator, body)
            # A model without a fill-in-the-middle format completes the prefix only; the header says so.
            headers["x-codehop-fim"] = "true" if fim else "false"
            yield from _sse(_completion_chunks(generator, prompt, _config(body), cid, created), ticket)

        pieces = await lane.stream(request, produce, body.max_tokens + STREAM_EVENTS)
        return StreamingResponse(pieces, media_type="text/event-stream", headers=headers)
    return await lane.call(request, lambda ticket: _complete(body, response, resources, generator,
                                                             created, cid, ticket))


def _prompt(generator, body: m.CompletionRequest) -> tuple[str, bool]:
    """(the prompt to decode, whether it is a fill-in-the-middle prompt); 422 when too long."""
    _check_prompt(generator, body.prompt, body.suffix or "")
    if body.suffix:
        fim_prompt = generator.fim_prompt(body.prompt, body.suffix)
        if fim_prompt is not None:
            return fim_prompt, True
    return body.prompt, False


def _completion_chunks(generator, prompt: str, config, cid: str, created: int) -> Iterator[dict[str, Any]]:
    for piece in generator.stream(prompt, config):
        yield {"id": cid, "object": "text_completion", "created": created, "model": generator.name,
               "choices": [{"index": 0, "text": piece, "finish_reason": None}]}
    yield {"id": cid, "object": "text_completion", "created": created, "model": generator.name,
           "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}


def _complete(body: m.CompletionRequest, response: Response, resources: Resources, generator,
              created: int, cid: str, ticket: Ticket) -> m.CompletionResponse:
    """A non-streamed OpenAI-shaped completion, on the generation lane."""
    prompt, fim = _prompt(generator, body)
    config = _config(body)
    store, why_not = _kv_store(resources, generator, body)
    if store is not None:  # a local model: the document's cache, brought to this prompt by PIE
        # Without a FIM format the prefix alone is the prompt, as complete_fim would decode it.
        with ticket.hold():
            result, report = _complete_cached(store, generator, body.document, prompt, config)
        result.fim = fim
        return _completion_response(response, generator, cid, created, result, body.suffix, report)
    report = {"used": False, "reused": False, "mode": "off", "reason": why_not}
    server_fim = bool(body.suffix) and not fim and hasattr(generator, "complete_fim")
    with ticket.hold():
        if server_fim:  # the model's own server fills in (or says it did not)
            result = generator.complete_fim(body.prompt, body.suffix, config)
        else:
            result = generator.complete(prompt, config)
            result.fim = fim
    return _completion_response(response, generator, cid, created, result, body.suffix, report)


def _kv_store(resources: Resources, generator, body: m.CompletionRequest):
    """(the KV-cache store to use, or None and why not) for an OpenAI-shaped completion."""
    if not resources.settings.generator.kv_reuse:
        return None, "[generator] kv_reuse is off"
    if getattr(generator, "model", None) is None:
        return None, (f"the {type(generator).__name__} backend ({generator.name}) has no local KV cache: "
                      "the server encodes every prompt")
    if not body.document:
        return None, "no 'document' given: send the codehop extension field 'document' to keep its KV cache"
    if body.stream or body.temperature != 0 or body.repetition_penalty != 1.0:
        return None, "the cached path decodes greedily without streaming or repetition_penalty"
    return resources.kv_store(generator), None


def _complete_cached(store, generator, document: str, prompt: str, config):
    """Greedy decoding from `document`'s KV cache (rag.llm stop rules): (Generation, report)."""
    from runtime.generation import Generation

    start = time.perf_counter()
    tokenizer = generator.tokenizer
    ids = generator.encode(prompt)
    stops = config.stop

    def stopped(new_ids: list[int]) -> bool:
        return any(stop in tokenizer.decode(new_ids, skip_special_tokens=True) for stop in stops)

    with generator._lock:  # torch modules are not re-entrant
        new_ids, report = store.complete(document, ids or [tokenizer.eos_token_id], config.max_new_tokens,
                                         stop_token_ids=tuple(generator.eos_ids), stop_when=stopped)
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    cut = min((text.index(s) for s in stops if s in text), default=None)
    finish = "stop" if cut is not None or len(new_ids) < config.max_new_tokens else "length"
    text = text if cut is None else text[:cut]
    return Generation(text, new_ids, None, finish, len(ids), time.perf_counter() - start), report


def _completion_response(response: Response, generator, cid: str, created: int, result,
                         suffix: str | None, kv_reuse: dict[str, Any] | None = None) -> m.CompletionResponse:
    """OpenAI's completion body; whether the suffix was used is in `x-codehop-fim` and, when a
    suffix was given but not used, in the `codehop_note` extension field; whether the KV cache
    was reused in `x-codehop-kv-reuse` and `codehop_kv_reuse`."""
    response.headers["x-codehop-fim"] = "true" if result.fim else "false"
    if kv_reuse is not None:
        response.headers["x-codehop-kv-reuse"] = kv_reuse.get("mode", "off")
    note = None
    if suffix and not result.fim:
        note = getattr(result, "note", "") or (  # a model server's own reason comes first
            f"model {generator.name} has no fill-in-the-middle format: the suffix was not used "
            "(the text completes the prompt alone)")
    return m.CompletionResponse(
        id=cid, created=created, model=generator.name,
        choices=[m.CompletionChoice(text=result.text, finish_reason=result.finish_reason)],
        usage=_usage(generator, result.prompt_tokens, result.text,
                     getattr(result, "completion_tokens", None)), codehop_note=note,
        codehop_kv_reuse=kv_reuse)


def _tabby(body: m.TabbyCompletionRequest, resources: Resources, generator, created: int,
           cid: str, ticket: Ticket) -> m.CompletionResponse:
    """Tabby's shape, answered by RepoCompleter (repository context + truncation rules).

    Tabby's client-side `declarations` and `relevant_snippets_*` are accepted but not used:
    RepoCompleter retrieves its own context from the indexed repository.
    """
    completer = get_completer(resources, generator)  # the repository index: built once, outside the slot
    seg = body.segments
    path = seg.filepath or "untitled.py"
    with ticket.hold():
        result = completer.complete(path, prefix=seg.prefix, suffix=seg.suffix or "", document=path)
    return m.CompletionResponse(
        id=cid, created=created, model=generator.name,
        choices=[m.CompletionChoice(text=result.text, finish_reason="stop")],
        usage=_usage(generator, result.prompt_tokens, result.text),
        codehop_kv_reuse=result.kv_reuse or {"used": False, "reused": False, "mode": "off",
                                             "reason": "[generator] kv_reuse is off"})


@router.post("/chat/completions", response_model=m.ChatResponse)
async def chat_completions(body: m.ChatRequest, request: Request,
                           resources: Resources = Depends(get_resources),
                           generator=Depends(get_generator), lane: GenerationLane = Depends(get_lane)):
    _check_model(body.model, generator.name, resources.settings.generator.model)
    created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
    messages = [{"role": msg.role, "content": msg.content} for msg in body.messages]
    config = _config(body, json_schema=body.response_format.schema() if body.response_format else None)
    if body.stream:
        def produce(ticket: Ticket) -> Iterator[str]:
            _check_prompt(generator, *(msg.content for msg in body.messages))
            yield from _sse(chunks(), ticket)

        def chunks() -> Iterator[dict[str, Any]]:
            head = {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": generator.name}
            yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None}]}
            info: dict[str, Any] = {}
            for piece in _chat_pieces(resources, generator, body.rapid, messages, config, info):
                yield {**head, "choices": [{"index": 0, "delta": {"content": piece},
                                            "finish_reason": None}]}
            yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   "codehop_rapid": info}
        pieces = await lane.stream(request, produce, body.max_tokens + STREAM_EVENTS)
        return StreamingResponse(pieces, media_type="text/event-stream")

    def work(ticket: Ticket) -> m.ChatResponse:
        _check_prompt(generator, *(msg.content for msg in body.messages))
        with ticket.hold():
            result, info = _chat(resources, generator, body.rapid, messages, config)
        return _chat_response(generator, cid, created, result, info)

    return await lane.call(request, work)


def _chat_response(generator, cid: str, created: int, result, info) -> m.ChatResponse:
    return m.ChatResponse(
        id=cid, created=created, model=generator.name,
        choices=[m.ChatChoice(message={"role": "assistant", "content": result.text},
                              finish_reason=result.finish_reason)],
        usage=_usage(generator, result.prompt_tokens, result.text,
                     getattr(result, "completion_tokens", None)), codehop_rapid=info)


def _rapid_mode(resources: Resources, requested: bool | None) -> str:
    return {True: "on", False: "off", None: resources.settings.generator.rapid}[requested]


def _rapid_plan(resources: Resources, generator, requested: bool | None, messages, config):
    """(info for codehop_rapid, (RapidGenerator, prompt, drafter, policy) or None)."""
    from rag.rapid import RapidGenerator
    from rag.rapid_policy import plan_chat

    decision, prompt, drafter, policy = plan_chat(
        _rapid_mode(resources, requested), generator, messages, config,
        resources.settings.generator.rapid_min_tokens, lambda: resources.rapid(generator))
    info = {"used": decision.use, "why": decision.why, **decision.detail}
    return info, ((RapidGenerator(generator, drafter), prompt, drafter, policy) if decision.use else None)


def _rapid_stats(info: dict[str, Any], final, plan) -> None:
    stats = final.to_dict()
    info.update({key: stats[key] for key in ("acceptance_rate", "mean_accepted", "drafted", "accepted",
                                             "tokens", "target_forwards", "target_prompt_tokens",
                                             "draft_prompt_tokens", "target_seconds", "drafter_seconds")})
    rapid, _, drafter, policy = plan
    policy.record(rapid.target, drafter, final)


def _chat(resources: Resources, generator, requested: bool | None, messages, config):
    """(Generation, codehop_rapid info): RAPID or the plain generator."""
    info, plan = _rapid_plan(resources, generator, requested, messages, config)
    if plan is None:
        return generator.chat(messages, config), info
    final = plan[0].rapid(plan[1], config)
    _rapid_stats(info, final, plan)
    return final.generation, info


def _chat_pieces(resources: Resources, generator, requested: bool | None, messages, config,
                 info: dict[str, Any]) -> Iterator[str]:
    """Streamed text of `_chat`; `info` is filled in as it goes (complete at the end)."""
    found, plan = _rapid_plan(resources, generator, requested, messages, config)
    info.update(found)
    if plan is None:
        yield from generator.chat_stream(messages, config)
        return
    for delta, final in plan[0].rapid_stream(plan[1], config):
        if delta:
            yield delta
        if final is not None:
            _rapid_stats(info, final, plan)


tokenize = APIRouter(tags=["openai"])


@tokenize.post("/tokenize", response_model=m.TokenizeResponse)
def count_tokens(body: m.TokenizeRequest, generator=Depends(get_generator)):
    """Token count of a text with the served model's tokenizer (vLLM's route, at the root), so
    clients budget prompts in real tokens."""
    text = body.prompt if body.prompt is not None else body.content
    if text is None:
        raise InvalidInputError("give the text to count as 'prompt' (or 'content')")
    return m.TokenizeResponse(count=generator.count_tokens(text), max_model_len=MAX_PROMPT_TOKENS)


# ---------------------------------------------------------------- RAG answers


answers = APIRouter(prefix="/v1", tags=["answers"])


def _answer(result, partial: dict[str, float] | None = None) -> dict[str, Any]:
    return m.AskResponse(**{**result.to_dict(), "partial": partial}).model_dump()


def _partial(collection, body: m.AskRequest) -> dict[str, float] | None:
    """{"dense": share} when the retrieval uses dense vectors and they do not cover every chunk
    yet (the same report as /v1/search); None when complete or BM25 only."""
    if body.mode == "bm25" and body.multihop == "off":
        return None
    fraction = collection.dense_fraction()
    return {"dense": round(fraction, 4)} if fraction < 1.0 else None


def _pipeline_events(pipeline, question: str, lock,
                     on_retrieval: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
    """The pipeline's events; the collection's read lock is held until retrieval is over.
    `on_retrieval` runs under that lock first: what it reads about the indexes is what the
    retrieval sees (no commit can come in between)."""
    reading = lock.read()
    reading.__enter__()
    try:
        if on_retrieval is not None:
            on_retrieval()
        for event in pipeline.stream(question):
            if event["type"] != "stage" and reading is not None:
                reading.__exit__(None, None, None)  # generation starts: writers may commit
                reading = None
            yield event
    finally:
        if reading is not None:
            reading.__exit__(None, None, None)


def _closing(events: Iterator[dict[str, Any]], resource) -> Iterator[dict[str, Any]]:
    """`events`, then `resource.close()` (if any) once they are consumed or abandoned."""
    try:
        yield from events
    finally:
        if resource is not None:
            resource.close()


@answers.post("/ask", response_model=m.AskResponse)
async def ask(body: m.AskRequest, request: Request, resources: Resources = Depends(get_resources),
              generator=Depends(get_generator), load_treehop=Depends(get_treehop),
              lane: GenerationLane = Depends(get_lane)):
    """RagPipeline over a collection: rewrite -> retrieve -> filter -> answer with sources."""
    if body.stream:
        def produce(ticket: Ticket) -> Iterator[str]:
            events, seen = _ask_events(body, resources, generator, load_treehop)
            with ticket.hold():
                for event in events:
                    kind = event["type"]
                    if kind == "stage":
                        data = m.Stage(**asdict(event["stage"])).model_dump()
                    elif kind == "token":
                        data = {"text": event["text"]}
                    else:
                        data = _answer(event["result"], seen.get("partial"))
                    yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"

        pieces = await lane.stream(request, produce, body.max_tokens + STREAM_EVENTS)
        return StreamingResponse(pieces, media_type="text/event-stream")

    def work(ticket: Ticket) -> dict[str, Any]:
        events, seen = _ask_events(body, resources, generator, load_treehop)
        with ticket.hold():
            try:
                result = next(e["result"] for e in events if e["type"] == "result")
            finally:
                events.close()
        return _answer(result, seen.get("partial"))

    return await lane.call(request, work)


def _ask_events(body: m.AskRequest, resources: Resources, generator, load_treehop):
    """(the pipeline's events for this ask, what the retrieval saw of the dense side): built on
    the lane's thread, since opening a collection or a model may take seconds."""
    from rag.pipeline import PipelineConfig, RagPipeline

    name = body.collection or resources.settings.collection.name
    collection = resources.collection(name)
    config = PipelineConfig(k=body.k, candidates=max(20, body.k), mode=body.mode,
                            rewrite=body.rewrite, filter=body.filter, multihop=body.multihop,
                            reservoir=body.reservoir, namespace=body.namespace,
                            max_new_tokens=body.max_tokens, temperature=resources.settings.generator.temperature,
                            rapid=_rapid_mode(resources, body.rapid),
                            rapid_min_tokens=resources.settings.generator.rapid_min_tokens)
    treehop = None
    if body.multihop != "off":
        treehop = _treehop_module().TreeHopRetriever(collection, load_treehop())
    reservoir = trigger = None
    if body.reservoir:  # the file the CLI's `codehop ask` uses; one connection per request
        from rag.reservoir import Reservoir, RetrieverTrigger

        reservoir = Reservoir(resources.workspace / "reservoir.sqlite", collection.name)
        trigger = RetrieverTrigger(reservoir, collection)
    drafter = policy = None
    if body.generate and config.rapid != "off" and getattr(generator, "model", None) is not None:
        drafter, policy = resources.rapid(generator)
    pipeline = RagPipeline(collection, generator if body.generate else None, config,
                           trigger=trigger, treehop=treehop, drafter=drafter, rapid_policy=policy)
    seen: dict[str, Any] = {}  # what the retrieval saw of the dense side
    events = _closing(_pipeline_events(pipeline, body.query, resources.lock(name),
                                       lambda: seen.update(partial=_partial(collection, body))),
                      reservoir)
    return events, seen


@answers.post("/multihop", response_model=m.MultihopResponse)
def multihop(body: m.MultihopRequest, resources: Resources = Depends(get_resources),
             load_treehop=Depends(get_treehop)):
    """TreeHop multi-hop retrieval (rag.treehop.TreeHopRetriever) over a collection."""
    treehop = _treehop_module()
    name = body.collection or resources.settings.collection.name
    collection = resources.collection(name)
    config = treehop.TreeHopConfig(top_n=body.top_n, top_k_per_layer=body.top_k_per_layer,
                           max_hops=body.max_hops)
    retriever = treehop.TreeHopRetriever(collection, load_treehop(), config)
    with resources.lock(name).read():
        results = retriever.search(body.query, k=body.k)
    return m.MultihopResponse(results=[m.SearchHit(**r.to_dict()) for r in results],
                              collection=name, stats=retriever.last_stats)


@answers.post("/agent")
async def agent(body: m.AgentRequest, request: Request, resources: Resources = Depends(get_resources),
                generator=Depends(get_generator), lane: GenerationLane = Depends(get_lane)):
    """The tool-using code agent (agents.CodeAgent) over the server's repository; with
    `stream`, each step is an SSE `step` event and the run ends with a `result` event. The
    run holds a model slot only for each model turn, not while its tools run."""
    from agents.code_agent import AgentResult

    if body.stream:
        def produce(ticket: Ticket) -> Iterator[str]:
            for event in _agent(body, resources, generator, ticket).run_stream(body.task):
                kind = "result" if isinstance(event, AgentResult) else "step"
                data = event.to_dict() if kind == "result" else asdict(event)
                yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"

        pieces = await lane.stream(request, produce, body.max_steps + STREAM_EVENTS)
        return StreamingResponse(pieces, media_type="text/event-stream")
    return await lane.call(request, lambda ticket: _agent(body, resources, generator, ticket)
                           .run(body.task).to_dict())


def _agent(body: m.AgentRequest, resources: Resources, generator, ticket: Ticket):
    """A CodeAgent over the server's repository whose model turns hold `ticket`'s slot."""
    from agents.code_agent import AgentConfig, CodeAgent
    from agents.tools import build_toolbox
    from code_tools.sandbox import runner

    tools = build_toolbox(resources.repo_root, runner(), repo_index=resources.repo_index())
    return CodeAgent(_HeldGenerator(generator, ticket), tools, AgentConfig(
        max_steps=body.max_steps, max_tokens=body.max_tokens, temperature=resources.settings.generator.temperature))
