"""`codehop ask` end to end through the CLI dispatcher (retrieval-only: no LLM load)."""

from __future__ import annotations

import json

import pytest

from codehop.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    docs = tmp_path_factory.mktemp("ask-docs")
    (docs / "csv.md").write_text("pandas.read_csv reads a comma-separated values file into a DataFrame.\n")
    (docs / "hist.md").write_text("matplotlib.pyplot.hist plots a histogram; bins sets the number of bins.\n")
    workspace = tmp_path_factory.mktemp("ask-ws")
    assert main(["index", str(docs), "--workspace", str(workspace), "--no-progress"]) == 0
    return workspace


def test_ask_json_reports_sources_and_stage_timings(workspace, capsys):
    capsys.readouterr()
    code = main(["ask", "how do I plot a histogram?", "--workspace", str(workspace), "--retrieval-only",
                 "--json", "--no-rewrite", "--filter", "embedding", "--no-reservoir"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sources"][0]["path"].endswith("hist.md")
    assert [(s["name"], s["ran"]) for s in result["stages"]] == [
        ("rewrite", False), ("retrieve", True), ("multihop", False), ("filter", True), ("generate", False)]
    stages = {s["name"]: s for s in result["stages"]}
    # the flags reached the pipeline: one query (no rewrite), the embedding filter, no answer
    assert stages["retrieve"]["detail"]["queries"] == 1 and stages["retrieve"]["detail"]["candidates"] == 2
    assert stages["filter"]["detail"]["method"] == "embedding-threshold"
    # timings: measured for the stages that ran, none for the ones that did not
    assert stages["retrieve"]["seconds"] > 0 and stages["filter"]["seconds"] > 0
    assert stages["rewrite"]["seconds"] == stages["generate"]["seconds"] == 0


def test_ask_rejects_an_empty_question(workspace, capsys):
    assert main(["ask", "   ", "--workspace", str(workspace), "--retrieval-only"]) != 0
    assert "empty question" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_llama):
    model, tokenizer = tiny_llama
    target = tmp_path_factory.mktemp("ask-tiny-model")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def test_ask_rapid_flags_reach_the_pipeline_and_the_stage_says_why(workspace, tiny_model_dir, capsys, tmp_path):
    # float32 weights: greedy RAPID equals plain decoding exactly there; with the compact
    # weights of precision "auto" (rag.cpu_weights) only up to bfloat16 rounding, since a verify
    # pass and a one-token step run different kernels (the random tiny model is all near-ties)
    config = tmp_path / "codehop.toml"
    config.write_text('[generator]\nprecision = "float32"\n')
    base = ["--config", str(config), "ask", "how do I plot a histogram?", "--workspace", str(workspace),
            "--model", str(tiny_model_dir), "--json", "--no-rewrite", "--no-filter", "--no-reservoir"]
    answers, stages = {}, {}
    for flag in ("--rapid", "--no-rapid", None):
        capsys.readouterr()
        assert main(base + ([flag] if flag else [])) == 0
        result = json.loads(capsys.readouterr().out)
        answers[flag] = result["answer"]
        stages[flag] = {s["name"]: s for s in result["stages"]}["rapid"]
    drafted = stages["--rapid"]
    assert drafted["ran"] and drafted["detail"]["acceptance_rate"] == 1.0  # the model drafts for itself
    assert drafted["detail"]["why"] == "rapid = 'on' was requested" and drafted["detail"]["drafted"] > 0
    assert not stages["--no-rapid"]["ran"] and stages["--no-rapid"]["detail"]["why"] == "rapid = 'off'"
    # [generator] rapid = "auto" by default: a short prompt is not even considered
    assert not stages[None]["ran"] and stages[None]["detail"]["why"].startswith("auto: the prompt has")
    assert answers["--rapid"] == answers["--no-rapid"] == answers[None]  # greedy RAPID is exact
