"""codehop's retrieval layer: `from index import Collection, CollectionConfig, SearchResult`.

Names are resolved lazily (PEP 562) so that `import runtime.errors` from the CLI does not pay for
sqlite-utils and bm25s before a command needs them.
"""

from typing import TYPE_CHECKING

_EXPORTS = {
    "Collection": "index.collection",
    "CollectionConfig": "index.collection_config",
    "IndexReport": "index.collection_config",
    "Chunk": "index.types",
    "Hits": "index.types",
    "SearchFilter": "index.types",
    "SearchResult": "index.types",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from index.collection import Collection
    from index.collection_config import CollectionConfig, IndexReport
    from index.types import Chunk, Hits, SearchFilter, SearchResult


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'index' has no attribute {name!r}")
