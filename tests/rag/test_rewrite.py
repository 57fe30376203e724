import pytest

from rag.rewrite import LLMRewriter, PRFRewriter, Rewrite, parse_rewrite


@pytest.mark.parametrize("text, questions, queries", [
    ('{"rewritten_questions": ["How to read CSV?"], "queries": ["pandas read_csv"]}',
     ["How to read CSV?"], ["pandas read_csv"]),
    ("Sure! Here it is:\n```json\n{'rewritten_questions': ['Q1', 'Q2',], 'queries': ['a', 'b',],}\n```",
     ["Q1", "Q2"], ["a", "b"]),
    ('{"note": 1} and then {"queries": "single string"}', [], ["single string"]),
    ("1. pandas csv\n2) read file\n- delimiter option\nno bullet here", [], ["pandas csv", "read file", "delimiter option"]),
    ("I cannot help with that.", [], []),
    ('{"rewritten_questions": [', [], []),
])
def test_parse_rewrite_handles_messy_output(text, questions, queries):
    assert parse_rewrite(text) == (questions, queries)


def test_all_queries_keeps_original_first_and_dedupes():
    rewrite = Rewrite("read csv", ["Read CSV", "how to read csv?"], ["read csv", "pandas"])
    assert rewrite.all_queries == ["read csv", "how to read csv?", "pandas"]


def test_prf_expands_with_terms_from_feedback_documents(small_collection):
    rewrite = PRFRewriter(small_collection).rewrite("read csv file")
    assert rewrite.method == "prf"
    expanded = rewrite.queries[0]
    assert expanded.startswith("read csv file ")
    assert "dataframe" in expanded or "delimiter" in expanded
    # No feedback documents, no expansion.
    assert PRFRewriter(small_collection).rewrite("zzzqqq").method == "none"


class _Echo:
    """A generator that returns a fixed reply (tests the rewriter's plumbing, not a model)."""

    def __init__(self, reply):
        self.reply = reply
        self.prompts = []

    def chat(self, messages, config):
        from rag.llm import Generation

        self.prompts.append(messages[-1]["content"])
        return Generation(self.reply, [], None, "stop", 0, 0.0)


def test_llm_rewriter_parses_and_caps_counts():
    reply = '{"rewritten_questions": ["a", "b", "c", "d"], "queries": ["1", "2", "3", "4", "5", "6"]}'
    generator = _Echo(reply)
    rewrite = LLMRewriter(generator).rewrite("question?")
    assert rewrite.method == "llm" and len(rewrite.questions) == 3 and len(rewrite.queries) == 5
    assert "question?" in generator.prompts[0]
    assert LLMRewriter(_Echo("no idea")).rewrite("q").method == "none"
