"""TreeHop: multi-hop retrieval by updating the query embedding, no LLM in the loop
(Li et al., "TreeHop: Generate and Filter Next Query Embeddings Efficiently for Multi-hop
Question Answering", 2025, section 3).

The next query is computed from the current query q and a retrieved chunk c (unit vectors):

    Q = W_Q q,  K = W_K c,  V = W_V c                (d -> hidden)
    a = softmax(Q * K / sqrt(hidden))                 element-wise product, softmax over features
    u = a * V
    g = W_s MLP(u) + u                                MLP: pre-LN residual ReLU blocks
    q_next = normalize(q - c + W_o g)

"q - c" removes what the chunk already answered; W_o g adds what it points to next. W_o starts
at zero, so an untrained model is exactly the "q - c" shortcut and training only adds to it.

Search keeps growth linear: passages seen before are neither expanded nor returned again, each
layer keeps (returns and expands) only its top-K new passages, and the number of hops is capped.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.errors import CorruptIndexError, InvalidInputError, NotFoundError
from index.types import SearchResult

SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "treehop-minilm.safetensors"


@dataclass(frozen=True)
class TreeHopModelConfig:
    """Sized for MiniLM (384-d); the reference uses bge-m3 (1024-d) with hidden 2048."""

    dim: int = 384
    hidden: int = 512
    mlp_blocks: int = 3


@dataclass(frozen=True)
class TreeHopConfig:
    """Search settings: passages retrieved per query (top_n), new passages kept per layer
    (returned and expanded; the reference keeps top_n), and the hop cap."""

    top_n: int = 5
    top_k_per_layer: int = 5
    max_hops: int = 2


def _torch_model(config: TreeHopModelConfig):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, hidden: int) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(hidden)
            self.up = nn.Linear(hidden, hidden)
            self.down = nn.Linear(hidden, hidden)

        def forward(self, x):
            return x + self.down(torch.relu(self.up(self.norm(x))))

    class TreeHopNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d, h = config.dim, config.hidden
            self.w_q, self.w_k, self.w_v = (nn.Linear(d, h, bias=False) for _ in range(3))
            self.mlp = nn.Sequential(*(Block(h) for _ in range(config.mlp_blocks)))
            self.w_s = nn.Linear(h, h)
            self.w_o = nn.Linear(h, d, bias=False)
            nn.init.zeros_(self.w_o.weight)  # start as the q - c update

        def forward(self, q, c):
            attention = torch.softmax(self.w_q(q) * self.w_k(c) / math.sqrt(config.hidden), dim=-1)
            u = attention * self.w_v(c)
            g = self.w_s(self.mlp(u)) + u
            return nn.functional.normalize(q - c + self.w_o(g), dim=-1)

    return TreeHopNet()


class TreeHopModel:
    """The query-update network (torch) with numpy in/out for search."""

    def __init__(self, config: TreeHopModelConfig = TreeHopModelConfig(), net=None) -> None:
        self.config = config
        self.net = net if net is not None else _torch_model(config)
        self.net.eval()

    def next_queries(self, queries: np.ndarray, chunks: np.ndarray) -> np.ndarray:
        """q_next for each (q, c) row pair; float32 (n, dim), unit norm."""
        import torch

        with torch.no_grad():
            out = self.net(torch.from_numpy(np.ascontiguousarray(queries, np.float32)),
                           torch.from_numpy(np.ascontiguousarray(chunks, np.float32)))
        return out.numpy()

    def parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def save(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        """fp16 safetensors (atomic), with the model config in the metadata."""
        import json

        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().half().contiguous() for k, v in self.net.state_dict().items()}
        meta = {"format": "codehop-treehop-v1", "config": json.dumps(asdict(self.config)), **(metadata or {})}
        temporary = path.with_suffix(".tmp")
        save_file(tensors, str(temporary), metadata=meta)
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> "TreeHopModel":
        import json

        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.exists():
            raise NotFoundError(f"no TreeHop checkpoint at {path}: run `codehop train treehop`")
        try:
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
            if meta.get("format") != "codehop-treehop-v1":
                raise CorruptIndexError(f"{path} is not a codehop TreeHop checkpoint")
            config = TreeHopModelConfig(**json.loads(meta["config"]))
            model = cls(config)
            model.net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
        except CorruptIndexError:
            raise
        except Exception as error:  # safetensors raises its own error types
            raise CorruptIndexError(f"TreeHop checkpoint {path} is unreadable ({error})") from error
        model.net.eval()
        return model


def load_treehop(path: Path | None = None) -> TreeHopModel:
    """The shipped checkpoint (trained by `codehop train treehop`), or one at `path`."""
    return TreeHopModel.load(Path(path) if path else SHIPPED_CHECKPOINT)


_MULTIHOP_CUES = re.compile(
    r"\b(both|which (?:one|of)|who (?:was|is) the .* (?:of|that)|the .* (?:that|which|who) .*\b(?:was|is|did)"
    r"|older|younger|earlier|later|first|same|also|born|founded|director of|author of|member of)\b",
    re.IGNORECASE)


def looks_multihop(question: str) -> bool:
    """Cheap cue for the pipeline's automatic mode: comparisons and nested relations.

    "Which film came out first, X or Y?" -> True; "What is numpy.reshape?" -> False.
    """
    return bool(_MULTIHOP_CUES.search(question)) or question.count(",") >= 2


class TreeHopRetriever:
    """Multi-hop search over a Collection's dense index with a TreeHopModel."""

    def __init__(self, collection, model: TreeHopModel, config: TreeHopConfig = TreeHopConfig()) -> None:
        if config.max_hops < 1 or config.top_n < 1 or config.top_k_per_layer < 1:
            raise InvalidInputError("TreeHop needs max_hops, top_n and top_k_per_layer >= 1")
        self.collection = collection
        self.model = model
        self.config = config
        self.last_stats: dict[str, float] = {}

    def search(self, question: str, k: int = 10) -> list[SearchResult]:
        """Passages from all hops, ranked by their retrieval score, at most k.

        Each layer (hop 1: the question's top_n; later hops: top_n per expanded passage) keeps
        its top_k_per_layer new passages by score; only those are returned and expanded, as in
        the reference's layer-wise pruning, so a search retrieves at most
        top_k_per_layer * max_hops passages.
        """
        start = time.perf_counter()
        query = self.collection.embedder.encode_query(question)
        found: dict[str, SearchResult] = {}
        layer = self._keep(found, [(query, r) for r in self.collection.search_vector(query, self.config.top_n)])
        expansions = 0
        for _ in range(self.config.max_hops - 1):
            if not layer:
                break
            chunks = self.collection.get_vectors([r.id for _, r in layer])
            next_queries = self.model.next_queries(np.stack([q for q, _ in layer]), chunks)
            expansions += len(layer)
            found_per_query = self.collection.search_vectors(next_queries, self.config.top_n)
            candidates = [(vector, result) for vector, results in zip(next_queries, found_per_query)
                          for result in results]
            layer = self._keep(found, candidates)
        ranked = sorted(found.values(), key=lambda r: -r.score)
        self.last_stats = {"passages": len(found), "expansions": expansions,
                           "seconds": time.perf_counter() - start}
        return ranked[:k]

    def _keep(self, found: dict[str, SearchResult], candidates) -> list:
        """The layer's top_k_per_layer passages not seen before (a passage found by several
        queries counts once, with its best score); they are added to `found`."""
        best: dict[str, tuple] = {}
        for vector, result in candidates:
            if result.id in found:  # seen before: neither expanded nor returned again
                continue
            if result.id not in best or best[result.id][1].score < result.score:
                best[result.id] = (vector, result)
        layer = sorted(best.values(), key=lambda pair: -pair[1].score)[: self.config.top_k_per_layer]
        for _, result in layer:
            found[result.id] = result
        return layer
