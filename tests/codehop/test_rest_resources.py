"""codehop.rest_resources: what `codehop serve`'s shared Resources build from the settings."""

from __future__ import annotations

from codehop.config import parse_settings
from codehop.rest_resources import Resources


class NoModel:
    """Stands in for a generator: the completer is only built here, never asked."""


def test_the_completer_of_serve_takes_the_completion_table(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "utils.py").write_text("def slugify(title):\n    return '-'.join(title.lower().split())\n")
    settings = parse_settings("[generator]\ndraft_tokens = 1\n[completion]\nmax_new_tokens = 7\n"
                              "context_tokens = 200\nearly_stop = false\ndense_skip_neighbours = 3\n")
    resources = Resources(settings, tmp_path / "ws", [repo], repo)
    try:
        config = resources.completer(NoModel()).config
    finally:
        resources.close()
    assert (config.max_new_tokens, config.context_tokens, config.early_stop) == (7, 200, False)
    assert config.dense_skip_neighbours == 3 and config.draft_tokens == 1 and config.reuse_kv_cache
