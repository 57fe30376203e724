import pytest

from index.types import SearchResult
from rag.filter import (LABEL_SCHEMA, LABELS, EmbeddingKnowledgeFilter, FilterConfig, LLMKnowledgeFilter,
                        apply_filter, parse_label, prune_sentences)


def result(text, rid="1"):
    return SearchResult(rid, 1.0, "doc.md", 1, 1, text)


@pytest.mark.parametrize("reply, label", [
    ("Entailment.", "entailment"), ("neutral", "neutral"), ("It CONTRADICTS the question", "contradiction"),
    ("The answer is entailed", "entailment"), ("yes", None), ("", None),
    ('{"label": "neutral"}', "neutral"),
])
def test_parse_label(reply, label):
    assert parse_label(reply) == label


def test_prune_keeps_the_best_sentences_in_order():
    filler = " ".join(f"Sentence {i} talks about gardening and tomatoes." for i in range(20))
    text = filler + " The read_csv function reads a csv file into a DataFrame. " + filler
    pruned = prune_sentences("how to read a csv file", text, min_chars=100)
    assert "read_csv" in pruned and len(pruned) < len(text) / 5
    assert prune_sentences("q", "short text") == "short text"


class _Replies:
    """Queued replies; records each request's messages and GenerationConfig."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def chat(self, messages, config):
        from rag.llm import Generation

        self.calls.append((list(messages), config))
        return Generation(self.replies.pop(0), [], None, "stop", 0, 0.0)


def test_llm_filter_keeps_only_entailment_and_rejects_unparsable():
    sources = [result("a", "1"), result("b", "2"), result("c", "3"), result("d", "4")]
    model = _Replies(['{"label": "entailment"}', "neutral", "gibberish", "still gibberish", "Entailment"])
    kept, judgements, _ = apply_filter(LLMKnowledgeFilter(model), "q", sources, FilterConfig())
    assert [s.id for s in kept] == ["1", "4"]
    assert [j.label for j in judgements] == ["entailment", "neutral", "unparsable", "entailment"]
    assert [j.attempts for j in judgements] == [1, 1, 2, 1]


def test_llm_filter_sends_the_label_schema_and_retries_once():
    model = _Replies(["I think so", '{"label": "contradiction"}'])
    [judgement] = LLMKnowledgeFilter(model).judge("q", [result("passage")])
    assert (judgement.label, judgement.kept, judgement.attempts) == ("contradiction", False, 2)
    schema = model.calls[0][1].json_schema
    assert schema == LABEL_SCHEMA and schema["properties"]["label"]["enum"] == list(LABELS)
    retry = model.calls[1][0]
    assert [m["role"] for m in retry] == ["user", "assistant", "user"] and retry[1]["content"] == "I think so"
    assert model.calls[1][1].json_schema == LABEL_SCHEMA
    unstructured = _Replies(["neutral"])
    LLMKnowledgeFilter(unstructured, FilterConfig(structured=False)).judge("q", [result("p")])
    assert unstructured.calls[0][1].json_schema is None


def test_filter_keeps_at_least_one_source():
    kept, _, _ = apply_filter(LLMKnowledgeFilter(_Replies(["neutral", "neutral"])), "q",
                              [result("a", "1"), result("b", "2")], FilterConfig())
    assert [s.id for s in kept] == ["1"]


@pytest.mark.slow
def test_smollm2_filter_under_the_schema_gives_only_valid_labels():
    pytest.importorskip("xgrammar")
    from rag.llm import load_generator
    from tests.rag.conftest import PASSAGES

    sources = [result(text, path) for path, text in PASSAGES.items()]
    judgements = LLMKnowledgeFilter(load_generator()).judge("How do I read a CSV file with pandas?", sources)
    assert [j.label for j in judgements if j.label not in LABELS] == []
    assert all(j.attempts == 1 for j in judgements)


@pytest.mark.slow
def test_embedding_filter_separates_related_from_unrelated(small_collection):
    judge = EmbeddingKnowledgeFilter(small_collection.embedder, FilterConfig(method="embedding", threshold=0.3))
    judgements = judge.judge("How do I read a CSV file with pandas?", [
        result("pandas.read_csv reads a comma-separated values file into a DataFrame.", "csv"),
        result("The tomato plant needs full sun and regular watering.", "garden")])
    assert [j.kept for j in judgements] == [True, False]
    assert judgements[0].score > judgements[1].score
