import json

import pytest

from runtime.generation import Generation, GenerationConfig, Generator
from rag.rewrite import (LLMRewriter, PRFRewriter, Rewrite, RewriteConfig, parse_rewrite, rewrite_schema,
                         usable_rewrites)


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


def test_usable_rewrites_drop_template_echoes_and_markup():
    # SmolLM2-135M's rewrites of CodeRAG questions, as it wrote them
    echoes = ["<clearer version of the question>", "<short keyword query>", "</longer version of the question>",
              "<clearer version of the question>',", "<remark 1>", ",", "Q:<clearer version of the question>"]
    assert usable_rewrites(echoes) == []
    assert usable_rewrites(["<remark 1>Remove elements from A that are in B", " pandas  read_csv "]) == \
        ["Remove elements from A that are in B", "pandas read_csv"]
    # type arguments are code, not markup: kept whole
    code = ["iterate a List<int> in Java", "HashMap<String, Integer> to Optional<QueryResult>", "Vec<u8> from &str",
            "iter().collect::<Vec<_>>()"]
    assert usable_rewrites(code) == code


def test_a_reply_of_template_echoes_is_asked_again_and_then_unusable():
    echo = '{"rewritten_questions": ["<clearer version of the question>"], "queries": ["<short keyword query>"]}'
    model = Scripted([echo, echo])
    rewrite = LLMRewriter(model).rewrite("read csv")
    assert (rewrite.method, rewrite.attempts, rewrite.all_queries) == ("none", 2, ["read csv"])
    mixed = '{"rewritten_questions": ["<clearer version of the question>"], "queries": ["pandas read_csv"]}'
    assert LLMRewriter(Scripted([mixed])).rewrite("read csv").all_queries == ["read csv", "pandas read_csv"]


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


class Scripted:
    """The Generator protocol over queued replies; records every request's messages and config."""

    name, supports_fim, parameters = "scripted", False, None

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []  # (messages, GenerationConfig)

    def chat(self, messages, config=GenerationConfig()):
        self.calls.append(([dict(m) for m in messages], config))
        return Generation(self.replies.pop(0), [], None, "stop", 0, 0.0)

    def complete(self, prompt, config=GenerationConfig()):
        return self.chat([{"role": "user", "content": prompt}], config)

    def stream(self, prompt, config=GenerationConfig()):
        yield self.complete(prompt, config).text

    def chat_stream(self, messages, config=GenerationConfig()):
        yield self.chat(messages, config).text

    def count_tokens(self, text):
        return len(text.split())

    def fim_prompt(self, prefix, suffix):
        return None

    def complete_fim(self, prefix, suffix, config=GenerationConfig()):
        return self.complete(prefix, config)


GOOD = '{"rewritten_questions": ["How do I read a CSV file?"], "queries": ["pandas read_csv"]}'


def test_llm_rewriter_parses_and_caps_counts():
    reply = '{"rewritten_questions": ["a", "b", "c", "d"], "queries": ["1", "2", "3", "4", "5", "6"]}'
    generator = _Echo(reply)
    rewrite = LLMRewriter(generator).rewrite("question?")
    assert rewrite.method == "llm" and len(rewrite.questions) == 3 and len(rewrite.queries) == 5
    assert "question?" in generator.prompts[0]
    assert LLMRewriter(_Echo("no idea")).rewrite("q").method == "none"


def test_rewriter_sends_the_schema_and_needs_one_call_on_good_output():
    model = Scripted([GOOD])
    assert isinstance(model, Generator)
    rewrite = LLMRewriter(model, RewriteConfig(n_questions=2, n_queries=4)).rewrite("read csv")
    assert (rewrite.method, rewrite.attempts, rewrite.structured) == ("llm", 1, True)
    assert rewrite.queries == ["pandas read_csv"]
    schema = model.calls[0][1].json_schema
    assert schema == rewrite_schema(2, 4)
    assert schema["required"] == ["rewritten_questions", "queries"] and schema["additionalProperties"] is False
    assert schema["properties"]["rewritten_questions"]["maxItems"] == 2
    assert schema["properties"]["queries"] == {"type": "array", "items": {"type": "string"}, "maxItems": 4}


def test_rewriter_retries_once_with_the_bad_reply_and_a_correction():
    model = Scripted(["I cannot do JSON today.", GOOD])
    rewrite = LLMRewriter(model).rewrite("read csv")
    assert (rewrite.method, rewrite.attempts) == ("llm", 2)
    retry_messages, retry_config = model.calls[1]
    assert [m["role"] for m in retry_messages] == ["user", "assistant", "user"]
    assert retry_messages[1]["content"] == "I cannot do JSON today."
    assert "JSON" in retry_messages[2]["content"] and "\n" not in retry_messages[2]["content"]
    assert retry_config.json_schema == model.calls[0][1].json_schema


def test_rewriter_gives_up_after_the_second_bad_reply():
    model = Scripted(["nope", '{"rewritten_questions": [], "queries": []}', GOOD])
    rewrite = LLMRewriter(model).rewrite("read csv")
    assert (rewrite.method, rewrite.attempts, rewrite.queries) == ("none", 2, [])
    assert len(model.calls) == 2 and model.replies == [GOOD]


def test_rewriter_without_schema_relies_on_the_prompt():
    model = Scripted([GOOD])
    rewrite = LLMRewriter(model, RewriteConfig(structured=False)).rewrite("read csv")
    assert model.calls[0][1].json_schema is None and rewrite.structured is False
    assert '"rewritten_questions"' in model.calls[0][0][0]["content"]


@pytest.mark.slow
def test_smollm2_rewrites_under_the_schema():
    pytest.importorskip("xgrammar")
    from rag.llm import load_generator

    rewrite = LLMRewriter(load_generator()).rewrite("How do I read a CSV file with pandas?")
    assert rewrite.structured and rewrite.method == "llm", rewrite.raw
    assert json.loads(rewrite.raw)  # decoded under the grammar: strict JSON
