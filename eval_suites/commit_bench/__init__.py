"""Small commits to a large collection: the chunk BM25 updated in place vs counted from scratch."""
