"""codehop.warm_up: after the warm-up a completion finds the generator, the repository index
and the completer loaded (the tiny random Llama; real Resources)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from codehop.config import GeneratorSettings, Settings
from codehop.rest_resources import Resources
from codehop.warm_up import start_warm_up, warm_up_completions


def _resources(tmp_path: Path, model: str) -> Resources:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "utils.py").write_text("def slugify(title):\n    return '-'.join(title.lower().split())\n")
    settings = dataclasses.replace(Settings(), generator=GeneratorSettings(model=model))
    return Resources(settings, tmp_path / "ws", [repo], repo)


def test_warm_up_loads_what_the_first_completion_needs(tmp_path, tiny_model_dir):
    resources = _resources(tmp_path, str(tiny_model_dir))
    try:
        assert resources._generator is None and resources._repo is None
        assert warm_up_completions(resources) > 0
        generator = resources._generator
        assert generator is not None and resources._repo is not None
        # the request path gets the same objects: nothing is loaded again
        assert resources.generator() is generator
        completer = resources.completer(generator)
        assert resources.completer(resources.generator()) is completer
        assert completer.complete("main.py", prefix="from utils import slugify\nx = ", suffix="").text is not None
    finally:
        resources.close()


def test_a_failed_warm_up_is_reported_not_raised(tmp_path, capsys):
    resources = _resources(tmp_path, str(tmp_path / "no-such-model"))
    try:
        start_warm_up(resources).join(60)
    finally:
        resources.close()
    err = capsys.readouterr().err
    assert "codehop: warm-up failed" in err and "the first completion will try again" in err


def test_health_reports_the_warm_up_step_by_step_then_ready(tmp_path, tiny_model_dir, capsys):
    from fastapi.testclient import TestClient

    from codehop.rest import create_app

    resources = _resources(tmp_path, str(tiny_model_dir))  # only for its settings and repository
    resources.close()
    app = create_app(resources.settings, workspace=tmp_path / "ws", roots=[resources.repo_root],
                     warm_up=True)
    with TestClient(app) as client:
        status = app.state.resources.warm_up
        assert status.done.wait(120), "the warm-up never ended"
        health = client.get("/health").json()
    assert health["warm_up"]["state"] == "ready" and health["warm_up"]["percentage"] == 100
    assert health["warm_up"]["seconds"] > 0 and health["warm_up"]["error"] is None
    err = capsys.readouterr().err  # the steps, as a log or a terminal shows them
    assert f"codehop: loading model 0%: loading {tiny_model_dir}" in err
    assert "codehop: loading model 70%: warming up" in err


def test_a_failed_warm_up_shows_in_health(tmp_path):
    from fastapi.testclient import TestClient

    from codehop.rest import create_app

    resources = _resources(tmp_path, str(tmp_path / "no-such-model"))
    resources.close()
    app = create_app(resources.settings, workspace=tmp_path / "ws", roots=[resources.repo_root], warm_up=True)
    with TestClient(app) as client:
        assert app.state.resources.warm_up.done.wait(60)
        warm_up = client.get("/health").json()["warm_up"]
    assert warm_up["state"] == "failed" and "no-such-model" in warm_up["error"]
