"""What every benchmark and probe shares: the 7B-shaped random model (built and patched exactly
as the loader does), the workloads, timing on the GPU, and the FLOP floor."""
