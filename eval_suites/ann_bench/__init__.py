"""ANN benchmark: SPANN and PQ variants vs faiss IVF-Flat, IVF-PQ fastscan+refine, HNSW32."""
