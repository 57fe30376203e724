"""LintSeq: replay reproduces the program, every state is lint-clean, seeds repeat, CLI skips bad records."""

from __future__ import annotations

import json
import random
import sys

import pytest

from code_tools.lintseq import (LintSeqConfig, apply_diff, edit_paths, extract_code, get_linter, normalize,
                                process_record, pyflakes_errors, replay, sample_states, state_diff,
                                states_to_edit_path)
from runtime.errors import InvalidInputError

PROGRAM = '''import math
from collections import Counter


def area(r):
    # circle area; negative radii are rejected
    if r < 0:
        raise ValueError("negative radius")
    return math.pi * r ** 2


class Tally:
    """Counts words."""

    def __init__(self, words):
        self.counts = Counter(words)
        for word in words:
            if not word:
                continue
            self.last = word

    def top(self, n=3):
        return [w for w, _ in self.counts.most_common(n)]


print(area(2), Tally(["a", "b", "a"]).top(1))
'''


def _mbpp(shared_data, n):
    rows = [json.loads(line) for line in (shared_data / "coderag" / "mbpp_solutions.jsonl").open()]
    return [r["code"] for r in rows[:n]]


@pytest.mark.parametrize("linter", ["pyflakes", "pylint"])
def test_states_are_lint_clean_and_diffs_replay(linter):
    lint = get_linter(linter)
    states = sample_states(PROGRAM, random.Random(3), lint)
    assert states[0] == normalize(PROGRAM) and states[-1] == ""
    assert len(states) > 3
    for state in states[1:]:
        assert not lint(state), state  # every intermediate state is clean
    # each backward step only deletes lines
    for before, after in zip(states, states[1:]):
        assert all(line.startswith(("-", "@@")) for line in state_diff(before, after).splitlines())
    paths = edit_paths(PROGRAM, LintSeqConfig(linter=linter, samples=2, seed=1), key="p")
    for path in paths:
        assert replay(path) == PROGRAM
        assert all(not d.startswith(("---", "+++")) for d in path)
        assert all(line.startswith(("+", "@@")) for d in path for line in d.splitlines())


def test_real_programs_replay_exactly_and_stay_clean(shared_data):
    config = LintSeqConfig(samples=3, seed=7)
    lint = get_linter("pyflakes")
    for i, code in enumerate(_mbpp(shared_data, 40)):
        for path in edit_paths(code, config, key=str(i)):
            text = ""
            for diff in path:
                text = apply_diff(text, diff)
                if text != normalize(code):
                    assert not lint(text)
            assert text == normalize(code)


def test_seed_determinism_and_variety():
    a = edit_paths(PROGRAM, LintSeqConfig(samples=5, seed=11), key="x")
    b = edit_paths(PROGRAM, LintSeqConfig(samples=5, seed=11), key="x")
    c = edit_paths(PROGRAM, LintSeqConfig(samples=5, seed=12), key="x")
    assert a == b
    assert a != c
    assert len({tuple(p) for p in a}) > 1  # samples differ from each other


def test_cascade_removes_dependent_lines():
    # deleting `x = 1` leaves `y = x + 1` with an undefined name: the linter loop must remove it too
    code = "x = 1\ny = x + 1\n"
    assert pyflakes_errors("y = x + 1\n") == {1}
    for seed in range(10):
        for state in sample_states(code, random.Random(seed), pyflakes_errors):
            assert state in ("", "x = 1\n", code)


def test_pylint_counts_bad_indentation_and_errors():
    lint = get_linter("pylint")
    assert lint("def f():\n   return 1\n") == {2}  # bad-indentation (3 spaces)
    assert lint("print(undefined_name)\n") == {1}
    assert lint("import os\nx = 1\n") == set()  # warnings (unused import) do not count


def test_extract_code_and_bad_records():
    fenced = {"instruction": "add", "response": "Here:\n```python\ndef f(a):\n    return a + 1\n```\nok"}
    assert extract_code(fenced) == "def f(a):\n    return a + 1\n"
    with pytest.raises(InvalidInputError):
        extract_code({"instruction": "no code"})
    with pytest.raises(InvalidInputError):
        LintSeqConfig(linter="flake9")
    out = process_record({"task_id": 1, "instruction": "i", "code": "x = 1\n"}, LintSeqConfig(samples=2), "1")
    assert len(out) == 2 and out[0]["instruction"] == "i" and out[0]["edit_path"] == ["@@ -0,0 +1 @@\n+x = 1"]


def test_cli_skips_malformed_records_and_is_reproducible(tmp_path, capsys):
    from codehop.cli import main

    src = tmp_path / "in.jsonl"
    good = [{"task_id": i, "instruction": f"task {i}", "code": PROGRAM} for i in range(3)]
    lines = [json.dumps(good[0]), "{not json", json.dumps({"instruction": "no code"}), json.dumps(good[1]),
             "[1, 2]", json.dumps(good[2])]
    src.write_text("\n".join(lines) + "\n")
    out1, out2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["lintseq", str(src), "--out", str(out1), "--samples", "2", "--workers", "2",
                 "--seed", "5", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "line 2" in err and "line 3" in err and "line 5" in err
    assert main(["lintseq", str(src), "--out", str(out2), "--samples", "2", "--workers", "1",
                 "--seed", "5", "--no-progress"]) == 0
    rows = [json.loads(line) for line in out1.read_text().splitlines()]
    assert len(rows) == 6 and [r["task_id"] for r in rows] == [0, 0, 1, 1, 2, 2]
    assert out1.read_text() == out2.read_text()  # same seed, different worker counts
    assert all(replay(r["edit_path"]) == PROGRAM for r in rows)
    assert main(["lintseq", str(tmp_path / "missing.jsonl"), "--out", str(out2)]) != 0


def test_cli_ray_without_ray_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from codehop.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed, installed or not
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"code": "x = 1\n"}) + "\n")
    assert main(["lintseq", str(src), "--out", str(tmp_path / "o.jsonl"), "--ray", "--no-progress"]) != 0
    assert "ray" in capsys.readouterr().err.lower()
    assert not (tmp_path / "o.jsonl").exists()


def test_ignore_source_errors_keeps_preexisting_errors_only():
    code = "def f():\n    return undefined_thing\n\n\nx = 1\ny = x + 1\nz = y * 2\n"
    kept = False
    for seed in range(5):
        strict = sample_states(code, random.Random(seed), pyflakes_errors)
        assert all("undefined_thing" not in s for s in strict[1:])
        lenient = sample_states(code, random.Random(seed), pyflakes_errors, ignore_source_errors=True)
        for state in lenient[1:]:
            lines = state.splitlines()
            assert all(lines[n - 1] == "    return undefined_thing" for n in pyflakes_errors(state))
        kept |= any("undefined_thing" in s for s in lenient[1:])
        path = states_to_edit_path(lenient)
        assert replay(path) == code
    assert kept  # the pre-existing error did survive some backward steps
