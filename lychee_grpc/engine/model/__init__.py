"""Model side: loading, the one in-place patch step, the plain-transformers reference, the tiny checkpoint."""
