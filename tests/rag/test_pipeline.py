import pytest

from runtime.errors import InvalidInputError
from rag.llm import TransformersGenerator
from rag.pipeline import PipelineConfig, RagPipeline, cited_numbers
from rag.reservoir import Reservoir, RetrieverTrigger

pytestmark = pytest.mark.slow


def test_cited_numbers():
    assert cited_numbers("see [2] and [5], also [1, 2]", 3) == [2, 1]
    assert cited_numbers("no citations", 3) == []


def test_retrieval_only_pipeline_finds_the_right_source(small_collection):
    config = PipelineConfig(rewrite="prf", filter="embedding", reservoir=False)
    result = RagPipeline(small_collection, None, config).run("How do I read a csv file into a DataFrame?")
    assert result.sources[0].path.endswith("pandas/read_csv.md")
    assert result.answer == ""
    assert [(s.name, s.ran) for s in result.stages] == [
        ("rewrite", True), ("retrieve", True), ("multihop", False), ("filter", True), ("generate", False)]
    stages = {s.name: s for s in result.stages}
    # The stages that did work timed it; the ones that did not run record no time.
    assert all(stages[name].seconds > 0 for name in ("rewrite", "retrieve", "filter"))
    assert stages["multihop"].seconds == stages["generate"].seconds == 0
    assert stages["rewrite"].detail["method"] == "prf" and stages["filter"].detail["method"] == "embedding-threshold"
    # retrieve searched the question and every RM3 expansion, and kept k=5
    assert stages["retrieve"].detail["queries"] == 1 + len(stages["rewrite"].detail["queries"])
    assert stages["retrieve"].detail["kept"] == 5
    assert stages["generate"].detail["reason"] == "no generator configured"


def test_auto_rewrite_without_a_capable_model_retrieves_as_plain_search(small_collection):
    # no RM3 fallback: the answer pipeline's sources are plain search's top k, in order
    question = "How do I read a csv file into a DataFrame?"
    config = PipelineConfig(filter="off", reservoir=False, k=4)
    result = RagPipeline(small_collection, None, config).run(question)
    rewrite = {s.name: s for s in result.stages}["rewrite"]
    assert rewrite.ran is False and "RM3" in rewrite.detail["reason"]
    plain = small_collection.search(question, k=config.candidates)[: config.k]
    assert [s.id for s in result.sources] == [p.id for p in plain]


def test_an_llm_rewrite_of_template_echoes_leaves_the_question_as_asked(small_collection):
    """rewrite = "llm" forced on a model that copies the prompt's placeholders (SmolLM2-135M
    does): the rewrite is unusable, and the sources are plain search's, not RM3's."""
    from runtime.generation import Generation

    class TemplateCopier:
        name = "template-copier"

        def chat(self, messages, config):
            return Generation('{"rewritten_questions": ["<clearer version of the question>"], '
                              '"queries": ["<short keyword query>"]}', [], None, "stop", 0, 0.0)

    question = "How do I read a csv file into a DataFrame?"
    config = PipelineConfig(rewrite="llm", filter="off", reservoir=False, generate=False, k=4)
    result = RagPipeline(small_collection, TemplateCopier(), config).run(question)
    rewrite = {s.name: s for s in result.stages}["rewrite"]
    assert rewrite.detail["method"] == "none" and rewrite.detail["queries"] == []
    assert "searched as asked" in rewrite.detail["why"]
    plain = small_collection.search(question, k=config.candidates)[: config.k]
    assert [s.id for s in result.sources] == [p.id for p in plain]


def test_stages_switch_off(small_collection):
    config = PipelineConfig(rewrite="off", filter="off", reservoir=False)
    result = RagPipeline(small_collection, None, config).run("numpy reshape array")
    assert {s.name: s.ran for s in result.stages}["rewrite"] is False
    assert {s.name: s.ran for s in result.stages}["filter"] is False
    assert result.sources[0].path.endswith("numpy/reshape.md")
    with pytest.raises(InvalidInputError):
        PipelineConfig(rewrite="magic")
    with pytest.raises(InvalidInputError):
        RagPipeline(small_collection).run("   ")


def test_generation_streams_and_records_with_a_real_model(small_collection, tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    generator = TransformersGenerator.from_model(model, tokenizer)
    trigger = RetrieverTrigger(Reservoir(tmp_path / "r.sqlite", small_collection.name), small_collection)
    config = PipelineConfig(rewrite="prf", filter="off", max_new_tokens=8, k=3)
    pipeline = RagPipeline(small_collection, generator, config, trigger=trigger)
    events = list(pipeline.stream("How do I plot a histogram with bins?"))
    tokens = "".join(e["text"] for e in events if e["type"] == "token")
    result = events[-1]["result"]
    assert result.answer == tokens.strip()
    assert {s.name for s in result.stages} >= {"trigger", "rewrite", "retrieve", "filter", "generate", "reservoir"}
    # With the filter off nothing passed it, so nothing is knowledge (reuse: tests below).
    record = {s.name: s for s in result.stages}["reservoir"]
    assert not record.ran and "did not run" in record.detail["reason"]
    assert trigger.reservoir.entries("default") == [] and len(result.sources) == 3


class _SecondHop:
    """A stand-in multi-hop retriever (TreeHop is tested in its own module): it searches the
    collection for a fixed follow-up query, so the merge into the pipeline's sources is visible."""

    def __init__(self, collection, query):
        self.collection, self.query, self.calls = collection, query, 0

    def search(self, question, k=10):
        self.calls += 1
        return self.collection.search(self.query, k=1)


def test_multihop_stage_merges_hop_results_and_auto_mode_can_skip(small_collection):
    hop = _SecondHop(small_collection, "Flask route decorator URL rules")
    config = PipelineConfig(rewrite="off", filter="off", reservoir=False, multihop="on", k=1)
    result = RagPipeline(small_collection, None, config, treehop=hop).run("numpy reshape array")
    record = {s.name: s for s in result.stages}["multihop"]
    assert record.ran and record.detail["treehop_passages"] == 1
    assert {s.path.rsplit("/", 1)[-1] for s in result.sources} == {"routing.md", "reshape.md"}
    # "auto" hops only for a question that looks multi-hop (hand-labelled here): a one-entity
    # lookup skips the hop (the retriever is not called), a comparison or nested relation runs it.
    auto = RagPipeline(small_collection, None, PipelineConfig(rewrite="off", filter="off", reservoir=False,
                                                              multihop="auto", k=1), treehop=hop)
    for question, multihop in [("numpy reshape array", False), ("How do I read a csv file?", False),
                               ("Which was released first, numpy or pandas?", True),
                               ("Where was the author of Flask born?", True)]:
        calls = hop.calls
        record = {s.name: s for s in auto.run(question).stages}["multihop"]
        assert record.ran is multihop, question
        assert hop.calls == calls + multihop, question
        if not multihop:
            assert record.detail == {"reason": "not multi-hop"} and record.seconds == 0


def test_cross_encoder_filter_needs_a_configured_model(small_collection):
    from runtime.errors import NotFoundError
    from rag.filter import FilterConfig

    config = PipelineConfig(rewrite="off", filter="cross-encoder", reservoir=False)
    with pytest.raises(InvalidInputError, match="cross_encoder"):
        RagPipeline(small_collection, None, config).run("numpy reshape array")
    missing = PipelineConfig(rewrite="off", filter="cross-encoder", reservoir=False,
                             filter_config=FilterConfig(cross_encoder="no-such-cross-encoder-model"))
    with pytest.raises(NotFoundError):
        RagPipeline(small_collection, None, missing).run("numpy reshape array")


# -- the knowledge reservoir over a fresh collection (real MiniLM embeddings) ----------------

PARQUET = {
    "pandas/to_parquet.md": "DataFrame.to_parquet writes a DataFrame to the binary parquet format.",
    "pandas/parquet_engine.md": "The engine argument of DataFrame.to_parquet chooses pyarrow or fastparquet "
                                "to write parquet files.",
    "pandas/parquet_compression.md": "DataFrame.to_parquet compresses parquet files with snappy by default; "
                                     "compression=None writes them uncompressed.",
    "pandas/merge.md": "pandas.merge joins two DataFrames on key columns given by on=, like a database join.",
    "pandas/read_csv.md": "pandas.read_csv reads a comma-separated values (csv) file into a DataFrame.",
    "numpy/reshape.md": "numpy.reshape gives a new shape to an array without changing its data.",
    "flask/routing.md": "Flask routes URLs to view functions with the route() decorator.",
}
# MiniLM cosines (question vs passage): the parquet questions score 0.69-0.83 on the three
# parquet passages and <= 0.43 on the others; the merge question 0.78 on merge.md.
PARQUET_QUESTIONS = ["How do I write a DataFrame to parquet?", "How do I save a DataFrame as a parquet file?",
                     "Export a DataFrame to parquet format"]


def _collection(workspace, name="docs", config=None):
    from index import Collection

    collection = Collection.open(workspace, name, config=config)
    ids = collection.add_texts(list(PARQUET.values()), paths=list(PARQUET))
    return collection, dict(zip(PARQUET, ids))


def _reservoir_pipeline(collection, workspace, threshold=0.6, keep_at_least=1):
    from rag.filter import FilterConfig

    trigger = RetrieverTrigger(Reservoir(workspace / "reservoir.sqlite", collection.name), collection)
    config = PipelineConfig(k=5, rewrite="off", filter="embedding", reservoir=True,
                            filter_config=FilterConfig(threshold=threshold, keep_at_least=keep_at_least))
    return RagPipeline(collection, None, config, trigger=trigger), trigger


def _stage(result, name):
    return {s.name: s for s in result.stages}[name]


def test_reservoir_stores_only_passages_that_passed_the_filter(tmp_path):
    collection, ids = _collection(tmp_path / "ws")
    # 0.75: to_parquet (0.83) and the engine passage (0.78) pass; keep_at_least=3 adds a third
    # passage for the generator, which did not pass and is not knowledge.
    pipeline, trigger = _reservoir_pipeline(collection, tmp_path / "ws", threshold=0.75, keep_at_least=3)
    result = pipeline.run(PARQUET_QUESTIONS[0])
    passed = _stage(result, "filter").detail["passed_ids"]
    assert sorted(passed) == sorted([ids["pandas/to_parquet.md"], ids["pandas/parquet_engine.md"]])
    assert len(result.sources) == 3
    assert _stage(result, "reservoir").detail == {"stored": 2, "passed": 2, "not_passed": 1}
    assert sorted(e.chunk_id for e in trigger.reservoir.entries("default")) == sorted(passed)
    collection.close()


def test_many_passages_of_one_question_do_not_answer_another(tmp_path):
    """The issue's case: after "write a DataFrame to parquet", "merge two DataFrames on a key"
    (title cosine 0.41) reused the three parquet passages; now it needs three past questions.
    Measured with MiniLM in torch: under the onnx-int8 default the pair's cosine is 0.396, just
    under the 0.4 threshold, where there is nothing to count."""
    from index import CollectionConfig

    collection, ids = _collection(tmp_path / "ws", config=CollectionConfig(embedding_backend="sentence-transformers"))
    pipeline, trigger = _reservoir_pipeline(collection, tmp_path / "ws")
    first = pipeline.run(PARQUET_QUESTIONS[0])
    assert _stage(first, "reservoir").detail["stored"] == 3
    merge = pipeline.run("How do I merge two DataFrames on a key?")
    trigger_record = _stage(merge, "trigger").detail
    assert trigger_record["matches"] == 3 and trigger_record["past_questions"] == 1
    assert not merge.from_reservoir and merge.sources[0].id == ids["pandas/merge.md"]
    for question in PARQUET_QUESTIONS[1:]:
        assert not pipeline.run(question).from_reservoir  # one, then two past parquet questions
    reused = pipeline.run("Write pandas data to a parquet file")
    assert reused.from_reservoir and _stage(reused, "trigger").detail["past_questions"] == 3
    assert "retrieve" not in {s.name for s in reused.stages}
    parquet = {ids[p] for p in ("pandas/to_parquet.md", "pandas/parquet_engine.md", "pandas/parquet_compression.md")}
    assert {s.metadata["chunk_id"] for s in reused.sources} == parquet
    assert all(s.id.startswith("reservoir:") for s in reused.sources)
    assert not pipeline.run("How are Flask URL routes declared?").from_reservoir
    collection.close()


def test_entries_of_reindexed_or_deleted_documents_are_dropped(tmp_path):
    collection, ids = _collection(tmp_path / "ws")
    pipeline, trigger = _reservoir_pipeline(collection, tmp_path / "ws")
    for question in PARQUET_QUESTIONS:
        pipeline.run(question)
    assert len(trigger.reservoir.entries("default")) == 9  # 3 questions x 3 parquet passages
    collection.add_texts(["DataFrame.to_parquet takes engine='pyarrow' (default) or 'fastparquet'."],
                         paths=["pandas/parquet_engine.md"])  # re-indexed with other text
    collection.delete("pandas/parquet_compression.md")
    result = pipeline.run("Write pandas data to a parquet file")
    assert _stage(result, "trigger").detail["stale_dropped"] == 6
    assert {e.chunk_id for e in trigger.reservoir.entries("default")} == {ids["pandas/to_parquet.md"]}
    # to_parquet.md is still knowledge from three past questions: reused, and only it.
    assert result.from_reservoir and [s.metadata["chunk_id"] for s in result.sources] == [ids["pandas/to_parquet.md"]]
    collection.delete("pandas/to_parquet.md")
    assert not pipeline.run("Write pandas data to a parquet file").from_reservoir
    collection.close()


def test_collections_keep_separate_reservoirs(tmp_path):
    docs, _ = _collection(tmp_path / "ws", "docs")
    other, _ = _collection(tmp_path / "ws", "other")
    docs_pipeline, _ = _reservoir_pipeline(docs, tmp_path / "ws")
    other_pipeline, other_trigger = _reservoir_pipeline(other, tmp_path / "ws")  # the same file
    for question in PARQUET_QUESTIONS:
        docs_pipeline.run(question)
    assert docs_pipeline.run("Write pandas data to a parquet file").from_reservoir
    result = other_pipeline.run("Write pandas data to a parquet file")
    assert not result.from_reservoir and _stage(result, "trigger").detail["matches"] == 0
    # what `other` stored now is its own, from its own chunks
    assert {e.collection for e in other_trigger.reservoir.entries("default")} == {"other"}
    docs.close()
    other.close()


class _RecordingGenerator:
    """A remote-like generator (no size: it follows instructions) that records each decoding."""

    name, supports_fim, parameters = "recording", False, None

    def __init__(self) -> None:
        self.configs = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def chat_stream(self, messages, config):
        self.configs.append(config)
        yield "Answer [1]."


def test_answer_decoding_uses_the_configured_temperature(small_collection):
    generator = _RecordingGenerator()
    config = PipelineConfig(rewrite="off", filter="off", reservoir=False, temperature=0.7)
    result = RagPipeline(small_collection, generator, config).run("How do I read a csv file?")
    assert result.answer == "Answer [1]." and result.cited == [1]
    assert [c.temperature for c in generator.configs] == [0.7]
    assert generator.configs[0].repetition_penalty == 1.0  # a capable model decodes unchanged


class _ScriptedAnswer(_RecordingGenerator):
    """Answers with a fixed text (what a model wrote), to check what the pipeline makes of it."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def chat_stream(self, messages, config):
        self.configs.append(config)
        self.messages = messages
        yield self.text


def test_citation_record():
    from rag.pipeline import citation_record

    record = citation_record("Writes are atomic [2] [7].", 3)
    assert record.name == "citations" and record.ran
    assert record.detail == {"cited": [2], "unknown": [7]}
    assert "cites no source" in citation_record("Writes are atomic.", 3).detail["warning"]
    assert citation_record("No sources.", 0).detail["warning"] == "there were no sources to cite"


def test_the_prompt_asks_for_inline_citations_and_an_uncited_answer_says_so(small_collection):
    config = PipelineConfig(rewrite="off", filter="off", reservoir=False, k=3)
    generator = _ScriptedAnswer("Use pandas.read_csv to read it.")
    result = RagPipeline(small_collection, generator, config).run("How do I read a csv file?")
    stages = {s.name: s for s in result.stages}
    assert result.cited == [] and "cites no source" in stages["citations"].detail["warning"]
    assert "inline as [1]" in generator.messages[0]["content"]  # the system prompt asks for [n]
    cited = RagPipeline(small_collection, _ScriptedAnswer("Use read_csv [1]."), config).run("How do I read a csv file?")
    assert {s.name: s for s in cited.stages}["citations"].detail == {"cited": [1], "unknown": []}
