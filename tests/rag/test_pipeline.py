import pytest

from index.errors import InvalidInputError
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
    ran = {s.name: s.ran for s in result.stages}
    assert ran == {"rewrite": True, "retrieve": True, "multihop": False, "filter": True, "generate": False}
    assert all(s.seconds >= 0 for s in result.stages)


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
    trigger = RetrieverTrigger(Reservoir(tmp_path / "r.sqlite"), small_collection.embedder)
    config = PipelineConfig(rewrite="prf", filter="off", max_new_tokens=8, k=3)
    pipeline = RagPipeline(small_collection, generator, config, trigger=trigger)
    events = list(pipeline.stream("How do I plot a histogram with bins?"))
    tokens = "".join(e["text"] for e in events if e["type"] == "token")
    result = events[-1]["result"]
    assert result.answer == tokens.strip()
    assert {s.name for s in result.stages} >= {"trigger", "rewrite", "retrieve", "filter", "generate", "reservoir"}
    stored = trigger.reservoir.entries("default")
    assert len(stored) == len(result.sources) == 3
    # Asked again, >= 3 stored entries have cosine >= 0.4: answered from the reservoir.
    again = pipeline.run("How do I plot a histogram with bins?")
    assert again.from_reservoir and again.sources[0].id.startswith("reservoir:")
    assert "retrieve" not in {s.name for s in again.stages}
    # An unrelated question still retrieves.
    assert not pipeline.run("How are Flask URL routes declared?").from_reservoir


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
    # "auto" asks rag.treehop.looks_multihop; a one-entity lookup is not multi-hop.
    pytest.importorskip("rag.treehop")
    from rag.treehop import looks_multihop

    question = "numpy reshape array"
    auto = RagPipeline(small_collection, None, PipelineConfig(rewrite="off", filter="off", reservoir=False,
                                                              multihop="auto", k=1), treehop=hop).run(question)
    assert {s.name: s.ran for s in auto.stages}["multihop"] is looks_multihop(question)


def test_cross_encoder_filter_needs_a_configured_model(small_collection):
    from index.errors import NotFoundError
    from rag.filter import FilterConfig

    config = PipelineConfig(rewrite="off", filter="cross-encoder", reservoir=False)
    with pytest.raises(InvalidInputError, match="cross_encoder"):
        RagPipeline(small_collection, None, config).run("numpy reshape array")
    missing = PipelineConfig(rewrite="off", filter="cross-encoder", reservoir=False,
                             filter_config=FilterConfig(cross_encoder="no-such-cross-encoder-model"))
    with pytest.raises(NotFoundError):
        RagPipeline(small_collection, None, missing).run("numpy reshape array")
