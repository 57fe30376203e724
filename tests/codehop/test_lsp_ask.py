"""codehop.ask inside the language server, in process: what it loads, what it locks, and which
requests wait for it. The model is the tiny random Llama; a gate holds its answer open so the
test can look at the server mid-answer (events, not sleeps)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from code_tools.repo import RepoIndex
from codehop.config import GeneratorSettings, Settings
from codehop.lsp import CodehopLanguageServer, LspConfig, ask, ask_command, hover_markdown
from index import Collection

UTILS = 'def slugify(title):\n    """Lower-case `title` and join its words with dashes."""\n    return "-".join(title.lower().split())\n'
MAIN = "from utils import slugify\n\nname = slugify("
README = "# Project\n\nUse slugify to turn page titles into URL paths for the blog.\n"
QUESTION = "How do I turn page titles into URL paths?"


class GatedGenerator:
    """The tiny model, whose chat answers start only when `release` is set: a 135M model's
    10-20 s answer, held open for as long as the test needs."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.started = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def chat_stream(self, messages, config):
        self.started.set()
        assert self.release.wait(120), "the test never released the answer"
        yield from self.inner.chat_stream(messages, config)

    def chat(self, messages, config):
        return self.inner.chat(messages, config)


def _server(tmp_path: Path, generator: GeneratorSettings) -> CodehopLanguageServer:
    project = tmp_path / "project"
    project.mkdir()
    (project / "utils.py").write_text(UTILS)
    (project / "main.py").write_text(MAIN)
    (project / "README.md").write_text(README)
    config = LspConfig(workspace=tmp_path / "state", dense_rerank=False, max_new_tokens=4,
                       ask_rewrite="off", ask_filter="off", ask_max_new_tokens=4, warm_start=False,
                       settings=Settings(generator=generator))
    ls = CodehopLanguageServer(config)
    ls.root = project
    ls.repo = RepoIndex.open(project, ls.state_dir)
    ls.collection = Collection.open(ls.state_dir, "workspace")
    ls.collection.add_paths([project], progress=False, defer_dense=True)  # BM25 now, as the server does
    return ls


@pytest.mark.slow
def test_the_drafter_is_loaded_once_not_for_every_ask(tmp_path, tiny_model_dir, tiny_llama, monkeypatch):
    import rag.llm

    drafter = tmp_path / "drafter"  # RAPID's drafter: another model directory than the generator
    model, tokenizer = tiny_llama
    model.save_pretrained(drafter)
    tokenizer.save_pretrained(drafter)
    loads = []
    load = rag.llm.load_generator
    monkeypatch.setattr(rag.llm, "load_generator", lambda name, *a, **k: (loads.append(name), load(name, *a, **k))[1])
    ls = _server(tmp_path, GeneratorSettings(model=str(tiny_model_dir), drafter=str(drafter), rapid="on"))
    try:
        answers = [ask(ls, QUESTION) for _ in range(3)]
    finally:
        ls.collection.close()
    assert all(a["rapid"]["used"] for a in answers)  # the drafter drafted each answer
    assert loads.count(str(drafter)) == 1 and loads.count(str(tiny_model_dir)) == 1, loads


@pytest.mark.slow
def test_an_answer_being_generated_holds_no_lock_and_no_completion_lane(tmp_path, tiny_model_dir):
    from rag.llm import load_generator

    ls = _server(tmp_path, GeneratorSettings(model=str(tiny_model_dir), rapid="off"))
    gated = GatedGenerator(load_generator(str(tiny_model_dir)))
    ls._generator = gated
    loop = asyncio.new_event_loop()  # the server's event loop, as pygls runs it
    threading.Thread(target=loop.run_forever, daemon=True).start()
    loop.call_soon_threadsafe(ls.ready.set)
    try:
        answer = asyncio.run_coroutine_threadsafe(ask_command(ls, QUESTION), loop)
        assert gated.started.wait(60), "the answer never started generating"
        # mid-answer: a saved file's re-index takes the write lock at once (a reader held
        # through generation kept it waiting, and every hover queued behind the writer) ...
        wrote = threading.Event()

        def write() -> None:
            with ls.collection_lock.write():
                wrote.set()

        threading.Thread(target=write, daemon=True).start()
        assert wrote.wait(10), "the write lock waited for the answer's generation"
        hover = ls._hover.submit(hover_markdown, ls.repo, ls.collection, ls.collection_lock, "slugify", 1)
        assert "README.md" in hover.result(timeout=10)
        # ... and a completion's lane is free: its context and decode do not queue behind the ask
        completion = ls._generate.submit(lambda: ls.completer().complete("main.py", prefix=MAIN, suffix=""))  # as _complete
        assert completion.result(timeout=60).text.strip()
        assert not answer.done()
        gated.release.set()
        result = answer.result(timeout=120)
    finally:
        gated.release.set()
        loop.call_soon_threadsafe(loop.stop)
        ls.collection.close()
    assert any(s["path"].endswith("README.md") for s in result["sources"])
