"""Code-agent benchmark: where-is questions and write-a-function tasks on real repositories."""
