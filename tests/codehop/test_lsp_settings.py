"""The language server's completion settings: the project's codehop.toml [completion] table
(and [generator]'s drafts) reach the completer it builds and the torch threads its model runs
on; its own command-line options win over the file. In process, with the tiny random Llama."""

from __future__ import annotations

from pathlib import Path

import pytest

from code_tools.repo import RepoIndex
from codehop.lsp import CodehopLanguageServer, LspConfig, project_config
from runtime.errors import InvalidInputError

UTILS = 'def slugify(title):\n    return "-".join(title.lower().split())\n'


def _project(tmp_path: Path, model: Path, completion: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "utils.py").write_text(UTILS)
    (project / "codehop.toml").write_text(
        f'[generator]\nmodel = "{model}"\ndraft_tokens = 2\n\n[completion]\n{completion}')
    return project


def _completer(tmp_path: Path, project: Path, config: LspConfig, monkeypatch):
    """The completer the server builds on its generation lane, and the threads its model got."""
    import torch

    import rag.llm

    threads = []
    load = rag.llm.load_generator

    def recording(name, *args, **kwargs):
        threads.append(kwargs.get("threads"))
        return load(name, *args, **kwargs)

    monkeypatch.setattr(rag.llm, "load_generator", recording)
    ls = CodehopLanguageServer(config)
    ls.config = project_config(ls.config, project)  # as `initialized` does
    ls.root = project
    ls.repo = RepoIndex.open(project, ls.state_dir)
    before = torch.get_num_threads()
    try:
        completer, lane_threads = ls._generate.submit(lambda: (ls.completer(), torch.get_num_threads())).result(120)
    finally:
        ls._generate.shutdown()
        torch.set_num_threads(before)  # load_generator sets torch's threads for the process
    return completer, threads, lane_threads


TABLE = """max_new_tokens = 12
early_stop = false
truncate = "line"
context_tokens = 300
skip_retrieval_when_full = false
dense_skip_neighbours = 2
dense_rerank = false
threads = 2
"""


@pytest.mark.slow
def test_the_completion_table_reaches_the_lsp_completer_and_its_threads(tmp_path, tiny_model_dir, monkeypatch):
    project = _project(tmp_path, tiny_model_dir, TABLE)
    completer, threads, lane = _completer(tmp_path, project, LspConfig(workspace=tmp_path / "state",
                                                                       warm_start=False), monkeypatch)
    config = completer.config
    assert (config.max_new_tokens, config.early_stop, config.truncate, config.context_tokens) == (12, False, "line", 300)
    assert not config.skip_retrieval_when_full and config.dense_skip_neighbours == 2 and not config.dense_rerank
    assert config.draft_tokens == 2  # [completion] names none: [generator] draft_tokens
    assert threads == [2] and lane == 2  # the generation lane computes with 2 torch threads
    # without the table: the built-in defaults (and torch's own thread count)
    (project / "codehop.toml").write_text(f'[generator]\nmodel = "{tiny_model_dir}"\n')
    completer, threads, _ = _completer(tmp_path / "b", project, LspConfig(workspace=tmp_path / "state-b",
                                                                          warm_start=False), monkeypatch)
    assert completer.config.max_new_tokens == 48 and completer.config.context_tokens == 1024
    assert completer.config.skip_retrieval_when_full and completer.config.draft_tokens == 3 and threads == [None]


@pytest.mark.slow
def test_command_line_options_win_over_the_completion_table(tmp_path, tiny_model_dir, monkeypatch):
    project = _project(tmp_path, tiny_model_dir, TABLE + "draft_tokens = 4\nsticky_context = 0.5\n"
                       "warm_on_open = true\ncontext_edit_budget = 200\n")
    options = LspConfig(workspace=tmp_path / "state", warm_start=False, max_new_tokens=5, early_stop=True,
                        truncate="statement", draft_tokens=0, threads=1, sticky_context=0.0,
                        warm_on_open=False, context_edit_budget=0)  # as codehop lsp's flags set them
    completer, threads, lane = _completer(tmp_path, project, options, monkeypatch)
    config = completer.config
    assert (config.max_new_tokens, config.early_stop, config.truncate, config.draft_tokens) == (5, True, "statement", 0)
    assert config.sticky_context == 0.0  # --sticky-context 0 over the table's 0.5
    assert not config.warm_on_open  # --no-warm-on-open over the table's true
    assert config.context_edit_budget == 0  # --context-edit-budget 0 over the table's 200
    assert config.context_tokens == 300 and threads == [1] and lane == 1  # the rest from the table


def test_a_bad_completion_table_names_the_key(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for table, message in [("threads = 0", "completion: threads must be >= 1"),
                           ("max_new_tokens = 0", "completion: max_new_tokens must be >= 1"),
                           ("context_tokens = -1", "completion: context_tokens must be >= 0"),
                           ("truncate = 'word'", "completion: truncate must be 'statement' or 'line'"),
                           ("draft_tokens = '3'", "completion.draft_tokens: expected int"),
                           ("context_budget = 512", "completion: unknown key 'context_budget'")]:
        (project / "codehop.toml").write_text(f"[completion]\n{table}\n")
        with pytest.raises(InvalidInputError, match=message):
            project_config(LspConfig(), project)


def test_codehop_complete_reads_the_completion_table(tmp_path, capsys):
    """`codehop complete` builds its context as the editor's completer does: a small
    [completion] context budget gives a shorter prompt (the context alone: no model)."""
    import json

    from codehop.cli import main

    repo = tmp_path / "repo"
    repo.mkdir()
    for i in range(6):
        (repo / f"mod{i}.py").write_text(
            f'def helper_{i}(values):\n    """Sum the values times {i}."""\n    total = 0\n'
            f"    for v in values:\n        total += v * {i}\n    return total\n")
    (repo / "app.py").write_text("from mod1 import helper_1\n\ndef main():\n    x = helper_\n")
    prompts = {}
    for name, table in (("default", ""), ("small", "[completion]\ncontext_tokens = 40\n")):
        (tmp_path / f"{name}.toml").write_text(table)
        code = main(["--config", str(tmp_path / f"{name}.toml"), "complete", str(repo / "app.py"), "--line", "4",
                     "--col", "16", "--repo", str(repo), "--workspace", str(tmp_path / f"ws-{name}"),
                     "--context-only", "--json"])
        assert code == 0
        prompts[name] = json.loads(capsys.readouterr().out)["prompt"]
    assert "helper_" in prompts["small"] and len(prompts["small"]) < len(prompts["default"])
