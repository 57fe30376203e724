"""BM25 engines side by side: rank-bm25 (reference), bm25s, and codehop's index.bm25."""
