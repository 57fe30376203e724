"""codehop's model runtime: everything that loads or calls a model; imports nothing of ours.

- `resolver`: a model name -> a local path (a path, a package that ships weights, or the hub)
- `model_cache`: the per-machine cache of derived model files (ONNX exports, static models)
- `embed`: the `Embedder` (vector cache, query LRU) and the registry of embedding backends, one
  module each: `embed_torch` (sentence-transformers), `embed_onnx` (ONNX int8), `embed_static`
  (model2vec), `embed_openai` (a server's /v1/embeddings)
- `generation`: the generation contract (settings, result, the `Generator` protocol)
- `cancel`: cancelling a generation from another thread
- `openai_http`: the one client for OpenAI-compatible servers
- `errors`: the one exception hierarchy of codehop (the bottom of the tree, so every layer can
  raise and catch it)

index/ (retrieval) imports this package to embed; rag/, code_tools/, agents/ import it to
generate. Nothing here imports index/ or anything above it (tests/test_import_rule.py).
"""
